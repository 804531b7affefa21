"""A sluice worker in Python, on stubs generated from proto/ by grpcio-tools.

It follows the Consume protocol (docs/protocol.md) the way the Rust worker
does: subscribe with one credit per free slot, grant one more credit with
each ack, extend the leases of long tasks, nack on failure, and on SIGTERM
stop taking work (stop -> stopped), finish and ack what it holds, and exit 0.
When the stream breaks (the broker went away, or a cluster's leader
changed), it subscribes again, to the leader if --broker lists a cluster's
members (see leader.py).

The "work" is a stand-in a user replaces: upper-case the payload (after
--sleep seconds), fail tasks whose payload is --fail-on.

    python worker.py --broker 127.0.0.1:50051 --queue jobs --concurrency 4
"""

import argparse
import os
import queue
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("SLUICE_PY_GEN", os.path.join(HERE, "gen")))

import grpc  # noqa: E402
from leader import Members  # noqa: E402
from sluice.v1 import sluice_pb2 as pb  # noqa: E402
from sluice.v1 import sluice_pb2_grpc as rpc  # noqa: E402


class Stream:
    """One Consume stream: the frames to send on it, and the leases it
    holds (they end with it: the broker hands those tasks out again)."""

    def __init__(self):
        self.requests = queue.Queue()  # frames to send; None ends the stream
        self.held = {}  # task id -> attempt

    def frames(self):
        while True:
            frame = self.requests.get()
            if frame is None:
                return
            yield frame


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="127.0.0.1:50051", help="HOST:PORT, or a cluster's members, comma-separated")
    ap.add_argument("--queue", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--name", default=f"python-{os.getpid()}")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds of work per task")
    ap.add_argument("--fail-on", default=None, help="nack tasks with this payload")
    ap.add_argument("--log", default=None, help="append each finished payload to this file")
    args = ap.parse_args()

    lock = threading.Lock()
    # busy: tasks running, from any stream; credit: granted on the current
    # stream and unspent. Together never more than --concurrency.
    state = {"stream": Stream(), "busy": 0, "max_held": 0, "credit": 0,
             "stopping": False, "stopped": False, "ack_deadline": 30.0}
    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    done = threading.Event()

    def lease(task_id, attempt):
        return pb.LeaseRef(task_id=task_id, attempt=attempt)

    def handle(stream, delivery):
        task = delivery.task
        payload = task.payload.decode("utf-8", "replace")
        try:
            if args.sleep:
                time.sleep(args.sleep)
            if args.fail_on is not None and payload == args.fail_on:
                raise RuntimeError(f"refusing {payload!r}")
            result = payload.upper().encode()
            if args.log:
                with open(args.log, "a") as f:
                    f.write(payload + "\n")
            settle = pb.ConsumeRequest(acks=[pb.AckItem(lease=lease(task.id, delivery.attempt), result=result)])
        except Exception as e:  # the task failed: retry it later
            settle = pb.ConsumeRequest(nacks=[pb.NackItem(lease=lease(task.id, delivery.attempt), error=str(e))])
        with lock:
            state["busy"] -= 1
            stream.held.pop(task.id, None)
            current = state["stream"]
            if stream is not current:
                # Its stream broke: the lease is gone, and the broker gives
                # the task out again. Only the slot is free.
                settle = pb.ConsumeRequest()
            # One credit back per finished task, in the same frame as its
            # ack, unless shutting down.
            if not state["stopping"]:
                settle.credit = 1
                state["credit"] += 1
        if settle.ListFields():
            current.requests.put(settle)
        maybe_done()

    def maybe_done():
        # Finished once the broker confirmed the stop (nothing more is on
        # the wire) and every task is settled.
        with lock:
            if state["stopping"] and state["stopped"] and state["busy"] == 0:
                done.set()

    def on_signal(signum, frame):
        with lock:
            if state["stopping"]:
                return
            state["stopping"] = True
            stream = state["stream"]
        # Ask the broker to stop sending; what is on the wire still arrives.
        stream.requests.put(pb.ConsumeRequest(stop=True))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def extender():
        # Extend every lease held, a third of the deadline at a time.
        while not done.wait(state["ack_deadline"] / 3):
            with lock:
                stream = state["stream"]
                leases = [lease(t, a) for t, a in stream.held.items()]
            if leases:
                stream.requests.put(pb.ConsumeRequest(extends=[pb.ExtendItem(lease=l) for l in leases]))

    def subscribe():
        """A new stream, subscribed with one credit per free slot: slots
        still busy with tasks of a broken stream stay taken until those
        finish (each then grants its credit on this stream)."""
        stream = Stream()
        with lock:
            state["stream"] = stream
            state["credit"] = 0 if state["stopping"] else args.concurrency - state["busy"]
            stream.requests.put(pb.ConsumeRequest(
                subscribe=pb.Subscribe(queue=args.queue, consumer_name=args.name),
                credit=state["credit"],
            ))
            if state["stopping"]:  # SIGTERM came while reconnecting
                stream.requests.put(pb.ConsumeRequest(stop=True))
        return stream

    def consume(stub, stream):
        """Runs one stream until it ends (returns) or breaks (raises)."""
        for resp in stub.Consume(stream.frames()):
            if resp.HasField("subscribed"):
                members.ok()
                state["ack_deadline"] = max(resp.subscribed.ack_deadline_ms / 1000.0, 0.3)
                if not extending.is_set():  # one, for whichever stream is current
                    extending.set()
                    threading.Thread(target=extender, daemon=True).start()
            for d in resp.deliveries:
                with lock:
                    stream.held[d.task.id] = d.attempt
                    state["busy"] += 1
                    state["credit"] -= 1
                    state["max_held"] = max(state["max_held"], state["busy"])
                    if state["busy"] > args.concurrency or state["credit"] < 0:
                        print(f"BUG: holding {state['busy']} tasks with credit for {args.concurrency}",
                              file=sys.stderr, flush=True)
                        os._exit(3)
                pool.submit(handle, stream, d)
            for e in resp.errors:
                print(f"broker refused a settlement of {e.lease.task_id}: {e.message}", file=sys.stderr)
            if resp.HasField("stopped"):
                state["stopped"] = True
                maybe_done()
            if resp.HasField("drain"):
                on_signal(None, None)

    members = Members(args.broker)
    extending = threading.Event()
    stream_over = threading.Event()
    failure = []

    def read():
        try:
            while True:
                stream = subscribe()
                try:
                    consume(rpc.SluiceServiceStub(members.channel), stream)
                    return  # the broker ended the stream after our stop
                except grpc.RpcError as e:
                    stream.requests.put(None)  # ends frames()
                    if state["stopping"]:
                        return
                    # Refused by a follower, or the stream broke: to the
                    # leader, or the next member (see leader.py).
                    if not members.retry(e):
                        failure.append(f"{e.code().name}: {e.details()}")
                        return
        finally:
            stream_over.set()
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # Wait until stopped and settled (or the stream ended on its own).
    while not done.wait(0.2):
        pass
    if failure:
        print(f"stream failed: {failure[0]}", file=sys.stderr)
        sys.exit(1)
    # Everything settled: close our side; the broker then ends the stream.
    pool.shutdown(wait=True)
    state["stream"].requests.put(None)
    stream_over.wait(10)
    print(f"stopped; max held {state['max_held']}", file=sys.stderr)


if __name__ == "__main__":
    main()
