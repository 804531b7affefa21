"""A sluice producer in Python, on stubs generated from proto/ by grpcio-tools.

Enqueues --count tasks ("<prefix>-<n>") in batches, waiting for space when
the queue is full (EnqueueMode WAIT: the broker holds the call), and prints
how many it stored.

    python producer.py --broker 127.0.0.1:50051 --queue jobs --count 100
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("SLUICE_PY_GEN", os.path.join(HERE, "gen")))

import grpc  # noqa: E402
from sluice.v1 import sluice_pb2 as pb  # noqa: E402
from sluice.v1 import sluice_pb2_grpc as rpc  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", default="127.0.0.1:50051")
    ap.add_argument("--queue", required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--prefix", default="task")
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args()

    stub = rpc.SluiceServiceStub(grpc.insecure_channel(args.broker))
    stored = 0
    for start in range(0, args.count, args.batch):
        tasks = [
            pb.NewTask(payload=f"{args.prefix}-{n}".encode())
            for n in range(start, min(start + args.batch, args.count))
        ]
        try:
            answer = stub.Enqueue(pb.EnqueueRequest(queue=args.queue, tasks=tasks, mode=pb.ENQUEUE_MODE_WAIT))
        except grpc.RpcError as e:
            print(f"enqueue failed: {e.code().name}: {e.details()}", file=sys.stderr)
            sys.exit(1)
        stored += len(answer.ids)
    print(f"stored {stored} tasks")


if __name__ == "__main__":
    main()
