"""Reaching a sluice cluster's leader, for producer.py and worker.py.

In a cluster only the leader serves the calls of SluiceService (every
member answers GetBrokerInfo). Any other member answers UNAVAILABLE, and
names the leader in the trailing metadata `sluice-leader`: its URL,
`http://HOST:PORT`, or "" while it knows of none (during an election).
The refused call ran nowhere, so it is safe to make again. A client given
the members' addresses therefore:

- calls the first member;
- on UNAVAILABLE naming a leader, calls the leader at once;
- on UNAVAILABLE naming none, or from a member it cannot reach, calls the
  next member after a short pause (the pause doubles, up to 2 s);
- gives up after 30 s of nothing but that.

A lone broker never names a leader: the same code works against it.
"""

import sys
import time

import grpc

LEADER_METADATA = "sluice-leader"


def target(url):
    """A grpc channel target from a broker URL: `http://h:p` -> `h:p`."""
    return url.strip().removeprefix("http://")


class Members:
    """The members given on the command line, and the channel to the one
    calls go to now (`self.channel`)."""

    def __init__(self, broker, give_up=30.0):
        # "127.0.0.1:50051", or a cluster's "http://a:1,http://b:2,..."
        self.addrs = [target(a) for a in broker.split(",") if a.strip()]
        self.next = 0  # the member to try when no leader is named
        self.give_up = give_up
        self.failing_since = None
        self.pause = 0.1
        self.addr, self.channel = None, None
        self._go(self._next_member())

    def _next_member(self):
        """The next member in the list, other than this one if it can."""
        for _ in self.addrs:
            addr = self.addrs[self.next]
            self.next = (self.next + 1) % len(self.addrs)
            if addr != self.addr:
                break
        return addr

    def _go(self, addr):
        if self.channel is not None:
            self.channel.close()
        self.addr = addr
        self.channel = grpc.insecure_channel(addr)

    def ok(self):
        """A call succeeded: the next failure starts a new count."""
        self.failing_since = None
        self.pause = 0.1

    def retry(self, err):
        """After a call failed with `err`, moves `self.channel` to where it
        should be made again; False if it should not be."""
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            return False  # a real answer: calling again would not change it
        now = time.monotonic()
        self.failing_since = self.failing_since or now
        if now - self.failing_since > self.give_up:
            return False
        leader = target(dict(err.trailing_metadata() or ()).get(LEADER_METADATA, ""))
        if leader and leader != self.addr:
            print(f"{self.addr} is not the leader; going to {leader}", file=sys.stderr, flush=True)
            self._go(leader)
            return True
        # No leader known yet, or this member is down: try the next one.
        addr = self._next_member()
        print(f"{self.addr}: {err.details()}; trying {addr} in {self.pause:.1f}s",
              file=sys.stderr, flush=True)
        time.sleep(self.pause)
        self.pause = min(self.pause * 2, 2.0)
        self._go(addr)
        return True
