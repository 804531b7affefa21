"""A sluice producer in Python, on stubs generated from proto/ by grpcio-tools.

Sends --count tasks ("<prefix>-<n>") over one Publish stream, the fast way:
the broker grants credit (room it reserved in the queue), the producer
sends as much as its credit allows without waiting for each frame to be
confirmed, and confirmations come back in order as tasks are stored
(durable: once on disk). A full queue simply grants no credit, so the
producer waits: that is the backpressure. Prints how many tasks were
confirmed.

Against a cluster, --broker lists its members; the stream goes to the
leader they name (see leader.py).

    python producer.py --broker 127.0.0.1:50051 --queue jobs --count 100
"""

import argparse
import os
import queue
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("SLUICE_PY_GEN", os.path.join(HERE, "gen")))

import grpc  # noqa: E402
from leader import Members  # noqa: E402
from sluice.v1 import sluice_pb2 as pb  # noqa: E402
from sluice.v1 import sluice_pb2_grpc as rpc  # noqa: E402


def publish(stub, args, start):
    """Sends tasks start..--count on one Publish stream; yields how many
    each answer confirms."""
    # grpcio sends what this generator yields; the loop below feeds it.
    outbox = queue.Queue()

    def frames():
        yield pb.PublishRequest(queue=args.queue, window=args.window)
        while True:
            frame = outbox.get()
            if frame is None:
                return  # half-close: the broker confirms the rest, then ends
            yield frame

    credit, sent, closed = 0, start, False
    if sent == args.count:
        outbox.put(None)
        closed = True
    try:
        for answer in stub.Publish(frames()):
            credit += answer.credit
            yield len(answer.confirmed_ids)
            # Spend all the credit at once, in frames of up to --batch.
            while credit > 0 and sent < args.count:
                n = min(credit, args.batch, args.count - sent)
                tasks = [pb.NewTask(payload=f"{args.prefix}-{i}".encode()) for i in range(sent, sent + n)]
                outbox.put(pb.PublishRequest(tasks=tasks))
                credit -= n
                sent += n
            if sent == args.count and not closed:
                outbox.put(None)
                closed = True
    finally:
        outbox.put(None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="127.0.0.1:50051", help="HOST:PORT, or a cluster's members, comma-separated")
    ap.add_argument("--queue", required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--prefix", default="task")
    ap.add_argument("--batch", type=int, default=100, help="most tasks per frame")
    ap.add_argument("--window", type=int, default=1000, help="most tasks unconfirmed")
    args = ap.parse_args()

    members = Members(args.broker)
    # Confirmations come in order: tasks 0..confirmed-1 are stored.
    confirmed = 0
    while True:
        try:
            for n in publish(rpc.SluiceServiceStub(members.channel), args, confirmed):
                confirmed += n
                members.ok()
            break
        except grpc.RpcError as e:
            if not members.retry(e):
                print(f"publish failed: {e.code().name}: {e.details()}", file=sys.stderr)
                sys.exit(1)
            # Send what was not confirmed again. A stream refused by a
            # follower stored nothing; one that broke midway (the leader
            # died) may have stored some of it: at least once. Give tasks a `key`
            # (idempotency key) to make such a resend harmless.
    if confirmed != args.count:
        print(f"only {confirmed} of {args.count} tasks confirmed", file=sys.stderr)
        sys.exit(1)
    print(f"stored {confirmed} tasks")


if __name__ == "__main__":
    main()
