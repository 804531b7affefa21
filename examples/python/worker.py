"""A sluice worker in Python, on stubs generated from proto/ by grpcio-tools.

It follows the Consume protocol (docs/protocol.md) the way the Rust worker
does: subscribe with one credit per free slot, grant one more credit with
each ack, extend the leases of long tasks, nack on failure, and on SIGTERM
stop taking work (stop -> stopped), finish and ack what it holds, and exit 0.

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
from sluice.v1 import sluice_pb2 as pb  # noqa: E402
from sluice.v1 import sluice_pb2_grpc as rpc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="127.0.0.1:50051")
    ap.add_argument("--queue", required=True)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--name", default=f"python-{os.getpid()}")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds of work per task")
    ap.add_argument("--fail-on", default=None, help="nack tasks with this payload")
    ap.add_argument("--log", default=None, help="append each finished payload to this file")
    args = ap.parse_args()

    requests = queue.Queue()  # frames to send; None ends the stream
    lock = threading.Lock()
    held = {}  # task id -> attempt: the leases this worker holds
    state = {"max_held": 0, "credit": args.concurrency, "stopping": False, "stopped": False}
    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    done = threading.Event()

    def frames():
        while True:
            frame = requests.get()
            if frame is None:
                return
            yield frame

    def lease(task_id, attempt):
        return pb.LeaseRef(task_id=task_id, attempt=attempt)

    def handle(delivery):
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
            held.pop(task.id, None)
            # One credit back per finished task, in the same frame as its ack,
            # unless shutting down.
            if not state["stopping"]:
                settle.credit = 1
                state["credit"] += 1
        requests.put(settle)
        maybe_done()

    def maybe_done():
        # Finished once the broker confirmed the stop (nothing more is on
        # the wire) and every held task is settled.
        with lock:
            if state["stopping"] and state["stopped"] and not held:
                done.set()

    def on_signal(signum, frame):
        with lock:
            if state["stopping"]:
                return
            state["stopping"] = True
        # Ask the broker to stop sending; what is on the wire still arrives.
        requests.put(pb.ConsumeRequest(stop=True))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    channel = grpc.insecure_channel(args.broker)
    stub = rpc.SluiceServiceStub(channel)
    requests.put(pb.ConsumeRequest(
        subscribe=pb.Subscribe(queue=args.queue, consumer_name=args.name),
        credit=args.concurrency,
    ))
    responses = stub.Consume(frames())
    state["ack_deadline"] = 30.0

    def extender():
        # Extend every lease held, a third of the deadline at a time.
        while not done.wait(state["ack_deadline"] / 3):
            with lock:
                leases = [lease(t, a) for t, a in held.items()]
            if leases:
                requests.put(pb.ConsumeRequest(extends=[pb.ExtendItem(lease=l) for l in leases]))

    stream_over = threading.Event()
    failure = []

    def read():
        try:
            for resp in responses:
                if resp.HasField("subscribed"):
                    state["ack_deadline"] = max(resp.subscribed.ack_deadline_ms / 1000.0, 0.3)
                    threading.Thread(target=extender, daemon=True).start()
                for d in resp.deliveries:
                    with lock:
                        held[d.task.id] = d.attempt
                        state["credit"] -= 1
                        state["max_held"] = max(state["max_held"], len(held))
                        if len(held) > args.concurrency or state["credit"] < 0:
                            print(f"BUG: holding {len(held)} tasks with credit for {args.concurrency}",
                                  file=sys.stderr, flush=True)
                            os._exit(3)
                    pool.submit(handle, d)
                for e in resp.errors:
                    print(f"broker refused a settlement of {e.lease.task_id}: {e.message}", file=sys.stderr)
                if resp.HasField("stopped"):
                    state["stopped"] = True
                    maybe_done()
                if resp.HasField("drain"):
                    on_signal(None, None)
        except grpc.RpcError as e:
            if not state["stopping"]:
                failure.append(f"{e.code().name}: {e.details()}")
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
    requests.put(None)
    stream_over.wait(10)
    print(f"stopped; max held {state['max_held']}", file=sys.stderr)


if __name__ == "__main__":
    main()
