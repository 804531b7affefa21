#!/usr/bin/env python3
"""Cluster measurements for sluice: throughput, failover time, chaos (loss,
duplicates, split brain). Measurement tooling: not part of the test suite,
not run by CI. Python 3, standard library only.

Usage:
    scripts/cluster_bench.py throughput [--tasks N] [--tasks-single N]
                             [--rate R] [--rate-duration D] [--skip-single]
    scripts/cluster_bench.py failover [N]          (default: 20 leader kills)
    scripts/cluster_bench.py chaos [SECONDS]       (default: 60 s)
    scripts/cluster_bench.py MODE --help           (every option)
    e.g. BIN_DIR=target/debug scripts/cluster_bench.py failover 2

  throughput  starts a 3-member cluster on 127.0.0.1 (free ports, a temp
              dir), runs `sluice bench --broker URL1,URL2,URL3 --durable`:
              batched (--tasks, batches of 100), one by one (--batch 1,
              --tasks-single) and paced (--rate 5000 --duration 20s); stops
              it, runs the same with `sluice bench --spawn --durable` (one
              broker). Prints a table: tasks/s and enqueue->delivery p50/
              p99/p99.9 for cluster and single broker, and their ratio, plus
              the broker CPU of each run (the cluster's: the leader's).
  failover N  a 3-member cluster, a durable queue, a background producer
              (one `sluice enqueue` at a time). N times: wait until every
              member is caught up (lag 0), kill -9 the leader, then run
              fresh `sluice enqueue` probes (all members listed) until one
              is confirmed: that time from the kill is the failover time;
              restart the killed member (same args, same data dir) and wait
              until it caught up. Prints a line per kill, then p50 and max
              (and min, mean) in ms, the probe's own cost when nothing
              fails, and a count check (confirmed <= stored <= confirmed +
              unconfirmed; nothing consumes) and whether the members hold
              the same queue.
  chaos S     a 3-member cluster; producers enqueue unique payloads to a
              durable queue (each recorded with its id once confirmed, in
              WORK/confirmed.txt; failed calls in unconfirmed.jsonl); a
              sluice-worker appends "$SLUICE_TASK_ID $SLUICE_ATTEMPT
              payload" per task to WORK/processed.txt; every few seconds a
              random member (often the leader) is killed -9 and restarted
              after a random delay, never two down. Then: producers stop,
              the worker stops (SIGTERM), the members must agree on the
              queue, all three are killed -9 together and restarted (the
              queue must be the same after; --no-final-crash skips this),
              the worker starts again and the queue must drain (stats
              unfinished 0, --drain-timeout). Prints the kills, then LOST
              (confirmed, never processed), DUPLICATED (processed twice:
              same id again = redelivery; under two ids = STORED TWICE),
              PHANTOM (processed, never confirmed: from a failed call, or
              never sent), id collisions, SPLIT BRAIN (two members serving
              in one term, from their metrics every 100 ms), and MEMBERS
              DIVERGE (members holding different queues at a quiet moment).

Environment:
    BIN_DIR   where sluice, sluice-broker and sluice-worker are. Default:
              target/release, built first with `cargo build --release -p
              sluice-broker -p sluice-client -p sluice-worker`; with BIN_DIR
              set nothing is built (BIN_DIR=target/debug to try it out).
    KEEP=1    keep the work directory (data dirs, broker logs m*.log,
              records, events.log with UTC times to match the logs); it is
              kept anyway when a check failed or the run was interrupted.
    WORK_DIR  where the work directory is made (default: the temp dir).

Exit status 0, or 1 when a check failed or something went wrong. Every
process this starts is killed on exit (normal end, error, Ctrl-C, SIGTERM,
SIGHUP); everything listens on 127.0.0.1; every command line is printed
(commands run in a loop: the first time) and all are in WORK/commands.log.
"""

import argparse
import atexit
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
T0 = time.monotonic()
PRINT_LOCK = threading.Lock()


# ---------------------------------------------------------------- output


def say(msg):
    with PRINT_LOCK:
        print(f"[{time.monotonic() - T0:8.2f}s] {msg}", flush=True)


def wall():
    """UTC wall time, as the brokers' logs print it (to line them up)."""
    t = time.time()
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class Run:
    """The work directory, the processes started, the commands printed."""

    def __init__(self, mode):
        self.bins = find_bins()
        parent = os.environ.get("WORK_DIR") or None
        self.dir = Path(tempfile.mkdtemp(prefix=f"sluice-{mode}-", dir=parent))
        self.keep = os.environ.get("KEEP") == "1"
        self.failed = False
        self.procs = []  # (Popen, name)
        self.lock = threading.Lock()
        self.shown = set()
        self.cmdlog = open(self.dir / "commands.log", "a")
        self.events = open(self.dir / "events.log", "a")
        self.cleaned = False

    def show(self, argv, env=None, key=None, note=""):
        """Prints a command line (once per key, for commands run in loops)."""
        envs = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
        line = envs + shlex.join(str(a) for a in argv)
        with self.lock:
            self.cmdlog.write(line + "\n")
            self.cmdlog.flush()
            if key is not None:
                if key in self.shown:
                    return
                self.shown.add(key)
        say(f"+ {line}{note}")

    def event(self, msg):
        with self.lock:
            self.events.write(f"{wall()} {msg}\n")
            self.events.flush()

    def spawn(self, argv, name, stdout, stderr, env=None, show=True, key=None, note=""):
        if show:
            self.show(argv, env, key=key, note=note)
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=full_env,
            # Not in our process group: a Ctrl-C reaches only this script,
            # which then kills them (and says so).
            start_new_session=True,
        )
        with self.lock:
            self.procs.append((p, name))
        return p

    def forget(self, p):
        with self.lock:
            self.procs = [(q, n) for (q, n) in self.procs if q is not p]

    def cleanup(self):
        if self.cleaned:
            return
        with self.lock:
            self.cleaned = True
            procs = list(self.procs)
        alive = [(p, n) for (p, n) in procs if p.poll() is None]
        if alive:
            say("cleanup: killing " + ", ".join(f"{n} (pid {p.pid})" for p, n in alive))
        for p, n in alive:
            try:
                if n.endswith("(process group)"):
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    p.kill()
            except ProcessLookupError:
                pass
        for p, n in alive:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                say(f"cleanup: {n} (pid {p.pid}) did not die within 10 s")
        self.cmdlog.close()
        self.events.close()
        if self.keep or self.failed:
            say(f"work directory kept: {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


RUN = None


def on_signal(signum, _frame):
    raise SystemExit(f"interrupted by signal {signum}")


def find_bins():
    d = os.environ.get("BIN_DIR")
    if d:
        bin_dir = Path(d)
        if not bin_dir.is_absolute():
            bin_dir = Path.cwd() / bin_dir
    else:
        build = ["cargo", "build", "--release", "-p", "sluice-broker", "-p", "sluice-client",
                 "-p", "sluice-worker"]
        say("+ (cd " + shlex.quote(str(REPO)) + " && " + shlex.join(build) + ")")
        if subprocess.run(build, cwd=REPO).returncode != 0:
            raise SystemExit("the build failed")
        bin_dir = REPO / "target" / "release"
    bins = {n: bin_dir / n for n in ("sluice", "sluice-broker", "sluice-worker")}
    for n, b in bins.items():
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} not found or not executable (set BIN_DIR, or build it)")
    return bins


class Timeout(Exception):
    pass


def wait_until(what, pred, timeout, interval=0.05):
    """Polls pred() until it returns something truthy; Timeout after
    `timeout` seconds, naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise Timeout(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100 * len(v) + 0.5)) - 1))
    return v[k]


# ------------------------------------------------------------ the cluster


class Member:
    def __init__(self, run, node_id, port, metrics_port, peers, data_dir):
        self.run = run
        self.id = node_id
        self.port = port
        self.metrics_port = metrics_port
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.argv = [
            run.bins["sluice-broker"], "--node-id", str(node_id),
            "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir, "--peers", peers,
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
        ]
        self.out = run.dir / f"m{node_id}.stdout"
        self.err = run.dir / f"m{node_id}.log"
        self.proc = None
        self.starts = 0
        self.killed_on_purpose = False

    def start(self):
        self.starts += 1
        with open(self.err, "a") as f:
            f.write(f"==== {wall()} start #{self.starts} (pid follows) ====\n")
        with open(self.out, "a") as out, open(self.err, "a") as err:
            self.proc = self.run.spawn(
                self.argv, f"member {self.id}", out, err,
                note="" if self.starts == 1 else f"   (restart #{self.starts - 1}, same data dir)")
        self.killed_on_purpose = False
        self.run.event(f"start member {self.id} pid {self.proc.pid} (start #{self.starts})")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_listening(self, timeout=60):
        def listening():
            if not self.alive():
                raise RuntimeError(
                    f"member {self.id} exited (status {self.proc.returncode}) before serving; "
                    f"last lines of {self.err}:\n" + tail(self.err, 30))
            try:
                return self.out.read_text().count("listening on ") >= self.starts
            except FileNotFoundError:
                return False
        wait_until(f"member {self.id} to listen", listening, timeout, 0.02)

    def kill9(self):
        self.killed_on_purpose = True
        self.proc.kill()
        self.proc.wait()
        self.run.forget(self.proc)
        self.run.event(f"kill -9 member {self.id} pid {self.proc.pid}")

    def terminate(self, grace=15):
        if not self.alive():
            return
        self.killed_on_purpose = True
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.run.forget(self.proc)

    def metrics(self, timeout=1.0):
        """This member's own view (no leader following): name{labels} -> value."""
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout) as r:
                text = r.read().decode()
        except Exception:
            return None
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out


def tail(path, n):
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(True)[-n:])
    except FileNotFoundError:
        return "(no file)\n"


class Cluster:
    def __init__(self, run, size=3):
        self.run = run
        ports = free_ports(2 * size)
        peers = ",".join(f"{i + 1}=127.0.0.1:{ports[i]}" for i in range(size))
        self.members = {}
        for i in range(size):
            d = run.dir / f"m{i + 1}"
            self.members[i + 1] = Member(run, i + 1, ports[i], ports[size + i], peers, d)
        self.urls = ",".join(m.url for m in self.members.values())

    def start(self):
        say(f"starting a {len(self.members)}-member cluster in {self.run.dir}")
        for m in self.members.values():
            m.start()
        for m in self.members.values():
            m.wait_listening()

    def sluice(self, args, timeout=30, key=None):
        """Runs the CLI against every member; (rc, stdout, stderr, seconds).
        Commands with a key are run repeatedly: printed the first time."""
        return sluice(self.run, ["--broker", self.urls] + args, timeout, key=key)

    def status(self):
        """`sluice --json cluster status` as the leader sees it, or None."""
        rc, out, _, _ = self.sluice(["--json", "cluster", "status"], timeout=10,
                                    key="cluster-status")
        if rc != 0:
            return None
        try:
            st = json.loads(out)
        except ValueError:
            return None
        return st if st.get("leader") else None

    def stable(self, min_leader_index=0):
        """The leader's status once it leads, every member is up, matched
        with lag 0, in its term, and holds the leader's log up to
        min_leader_index; else None."""
        st = self.status()
        if not st or st["last_log_index"] < min_leader_index:
            return None
        lags = {m["node_id"]: m.get("lag") for m in st["members"]}
        for m in self.members.values():
            if not m.alive() or lags.get(m.id) != 0:
                return None
            mm = m.metrics()
            if not mm or mm.get("sluice_cluster_term") != st["term"]:
                return None
            if mm.get("sluice_cluster_last_log_index", 0) < min_leader_index:
                return None
        return st

    def wait_stable(self, timeout=90):
        # What the leader holds now must reach every member: a member that
        # was just restarted has not merely kept an old lag of 0.
        st = wait_until("a leader", self.status, timeout, 0.1)
        return wait_until("every member caught up (lag 0)",
                          lambda: self.stable(st["last_log_index"]), timeout, 0.1)

    def stop(self):
        for m in self.members.values():
            m.terminate()


def sluice(run, args, timeout=30, key=None):
    argv = [run.bins["sluice"]] + args
    run.show(argv, key=key, note="   (run repeatedly; payloads vary)" if key else "")
    t = time.monotonic()
    with run.lock:
        if run.cleaned:
            return "closing", "", "", 0.0
        p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run.procs.append((p, "sluice"))
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = "timeout"
    finally:
        run.forget(p)
    return rc, out, err, time.monotonic() - t


QUEUE_GAUGES = ("ready", "delayed", "retrying", "leased")
QUEUE_COUNTERS = ("enqueued", "acked", "dead")


def member_view(m, q):
    """Queue q as member m holds it (its own metrics): None if unreachable."""
    mm = m.metrics()
    if mm is None:
        return None
    lab = f'{{queue="{q}"}}'
    v = {g: mm.get(f"sluice_queue_{g}_tasks{lab}") for g in QUEUE_GAUGES}
    v.update({f"{c}_total": mm.get(f"sluice_queue_{c}_tasks_total{lab}") for c in QUEUE_COUNTERS})
    v["applied_index"] = mm.get("sluice_cluster_applied_index")
    return v


def check_converged(run, cl, q, when, timeout=20):
    """At a quiet moment (nothing enqueued or settled meanwhile): every
    member applied the whole log and holds the same queue. Returns the
    views if they differ (a divergence), else None."""
    st = cl.wait_stable()
    target = st["last_log_index"]

    def same():
        views = {m.id: member_view(m, q) for m in cl.members.values()}
        if any(v is None or (v["applied_index"] or 0) < target for v in views.values()):
            return None
        strip = [{k: x for k, x in v.items() if k != "applied_index"} for v in views.values()]
        return views if all(x == strip[0] for x in strip) else None

    try:
        wait_until(f"every member to hold the same queue {q!r} ({when})", same, timeout, 0.1)
        say(f"members agree on queue {q!r} ({when})")
        return None
    except Timeout:
        views = {m.id: member_view(m, q) for m in cl.members.values()}
        run.failed = True
        say(f"!! MEMBERS DIVERGE on queue {q!r} ({when}); leader is member {st['node_id']}:")
        for i, v in views.items():
            say(f"   member {i}: {v}")
        run.event(f"!! members diverge ({when}): {views}")
        return views


def must(result, what):
    rc, out, err, _ = result
    if rc != 0:
        raise RuntimeError(f"{what} failed (exit {rc}): {err.strip()}")
    return out


# ------------------------------------------------------------- throughput


def bench(run, args, env=None, label=""):
    argv = [run.bins["sluice"], "bench"] + args + ["--json"]
    run.show(argv, env)
    full_env = dict(os.environ)
    full_env.update(env or {})
    # Its own process group: `bench --spawn` starts a broker, and a kill
    # on cleanup must take that broker too (killpg of this group).
    p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                         start_new_session=True)
    with run.lock:
        run.procs.append((p, "sluice bench (process group)"))
    out, err = p.communicate()
    run.forget(p)
    (run.dir / f"bench-{label}.json").write_text(out)
    (run.dir / f"bench-{label}.stderr").write_text(err)
    if p.returncode != 0:
        run.failed = True
        say(f"bench {label} FAILED (exit {p.returncode}): {err.strip()[-2000:]}")
        return None
    try:
        r = json.loads(out)["sluice"]
    except (ValueError, KeyError):
        run.failed = True
        say(f"bench {label}: unreadable output: {out[:500]!r}")
        return None
    say(f"bench {label}: {r['tasks_per_s']:,.0f} tasks/s, delivery p50 "
        f"{r['enqueue_to_delivery']['p50_us'] / 1000:.2f} ms p99 "
        f"{r['enqueue_to_delivery']['p99_us'] / 1000:.2f} ms, lost {r['lost']}, "
        f"duplicates {r['duplicates']}, redeliveries {r['redeliveries']}")
    return r


def cpu_seconds(pid):
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def throughput(run, a):
    sets = [
        ("batched", ["--durable", "--tasks", str(a.tasks)]),
        ("one-by-one", ["--durable", "--tasks", str(a.tasks_single), "--batch", "1"]),
        (f"rate-{a.rate}", ["--durable", "--rate", str(a.rate), "--duration", a.rate_duration]),
    ]
    results = {"cluster": {}, "single": {}}

    cl = Cluster(run)
    cl.start()
    st = cl.wait_stable()
    for name, args in sets:
        st = cl.wait_stable()
        leader = cl.members[st["node_id"]]
        say(f"cluster leader: member {leader.id} (pid {leader.proc.pid}, term {st['term']})")
        cpu0 = cpu_seconds(leader.proc.pid)
        r = bench(run, ["--broker", cl.urls, "--broker-pid", str(leader.proc.pid)] + args,
                  label=f"cluster-{name}")
        cpu1 = cpu_seconds(leader.proc.pid)
        if r is not None and cpu0 is not None and cpu1 is not None:
            # bench reports the leader's CPU since it started: this run's part.
            r["broker_cpu_s"] = cpu1 - cpu0
        results["cluster"][name] = r
        after = cl.status()
        if after and after["node_id"] != leader.id:
            say(f"NOTE: the leader changed during that run (now member {after['node_id']}): "
                "the broker CPU/RSS figures are the old leader's")
    say("stopping the cluster before the single-broker runs")
    cl.stop()

    if not a.skip_single:
        for name, args in sets:
            # bench --spawn makes its data directory under TMPDIR.
            results["single"][name] = bench(run, ["--spawn"] + args,
                                            env={"TMPDIR": str(run.dir)}, label=f"single-{name}")

    def fig(r, key):
        if r is None:
            return None
        if key == "tps":
            return r["tasks_per_s"]
        return r["enqueue_to_delivery"][key] / 1000

    rows = [
        ("durable, batches of 100", "batched", "tps", "tasks/s"),
        ("durable, one by one (--batch 1)", "one-by-one", "tps", "tasks/s"),
        (f"durable, --rate {a.rate}: enqueue->delivery p50", f"rate-{a.rate}", "p50_us", "ms"),
        (f"durable, --rate {a.rate}: enqueue->delivery p99", f"rate-{a.rate}", "p99_us", "ms"),
        (f"durable, --rate {a.rate}: enqueue->delivery p99.9", f"rate-{a.rate}", "p999_us", "ms"),
    ]
    print()
    print(f"{'what':52} {'cluster (3)':>14} {'single':>14} {'cluster/single':>15}")
    for title, name, key, unit in rows:
        c = fig(results["cluster"].get(name), key)
        s = fig(results["single"].get(name), key)
        fmt = (lambda v: f"{v:,.0f}") if unit == "tasks/s" else (lambda v: f"{v:.2f}")
        cs = f"{fmt(c)} {unit}" if c is not None else "failed"
        ss = f"{fmt(s)} {unit}" if s is not None else ("skipped" if a.skip_single else "failed")
        ratio = f"{c / s:.2f}" if c is not None and s else "-"
        print(f"{title:52} {cs:>14} {ss:>14} {ratio:>15}")
    for where in ("cluster", "single"):
        for name, r in results[where].items():
            if r and (r["lost"] or r["duplicates"]):
                run.failed = True
                print(f"!! {where} {name}: lost {r['lost']}, duplicates {r['duplicates']}")
            if r and r.get("broker_cpu_s") is not None:
                rss = r.get("broker_peak_rss_bytes") or 0
                print(f"   {where} {name}: broker CPU {r['broker_cpu_s']:.1f} s, "
                      f"peak RSS {rss / 2**20:.0f} MiB"
                      + (" (the leader; RSS peak since it started)" if where == "cluster" else ""))


# --------------------------------------------------------------- producer


class Producer(threading.Thread):
    """Enqueues unique payloads with the CLI, one call per batch, never
    sending a payload twice; records each confirmed id and payload, and
    each call whose outcome is unknown."""

    def __init__(self, run, cluster, queue, name, batch, rate, confirmed, unknown):
        super().__init__(daemon=True, name=name)
        self.ctx, self.cluster, self.queue = run, cluster, queue
        self.pname, self.batch, self.rate = name, batch, rate
        self.confirmed, self.unknown = confirmed, unknown  # open files, shared
        self.stop_flag = threading.Event()
        self.seq = 0
        self.calls = 0
        self.ok_tasks = 0
        self.failures = {}  # exit status -> count
        self.hung = 0
        self.last_ok = None
        self.error = None

    def run(self):
        try:
            self.loop()
        except Exception as e:  # reported by the main thread
            self.error = e

    def loop(self):
        started = time.monotonic()
        while not self.stop_flag.is_set():
            if self.rate:
                due = started + self.seq / self.rate
                if self.stop_flag.wait(max(0.0, due - time.monotonic())):
                    break
            payloads = [f"{self.pname}-{self.seq + i:09d}" for i in range(self.batch)]
            self.seq += self.batch
            self.calls += 1
            t_start = wall()
            rc, out, err, took = self.cluster.sluice(
                ["--json", "enqueue", self.queue] + payloads, timeout=60,
                key=f"producer-{self.pname}")
            ids = None
            if rc == 0:
                try:
                    ids = json.loads(out)
                except ValueError:
                    ids = None
            if rc == 0 and isinstance(ids, list) and len(ids) == len(payloads):
                with self.ctx.lock:
                    t_end = wall()
                    for i, p in zip(ids, payloads):
                        # id, payload, when the call started and returned
                        self.confirmed.write(f"{i} {p} {t_start} {t_end}\n")
                    self.confirmed.flush()
                self.ok_tasks += len(payloads)
                self.last_ok = time.monotonic()
            else:
                if rc == "timeout":
                    self.hung += 1
                self.failures[rc] = self.failures.get(rc, 0) + 1
                with self.ctx.lock:
                    self.unknown.write(json.dumps({
                        "start": t_start, "seconds": round(took, 3), "exit": rc,
                        "payloads": payloads, "stdout": out[-300:], "stderr": err.strip()[-500:],
                    }) + "\n")
                    self.unknown.flush()
                # Not a synchronisation: only keeps a failing loop from spinning.
                self.stop_flag.wait(0.05)


# --------------------------------------------------------------- failover


def failover(run, a):
    cl = Cluster(run)
    cl.start()
    cl.wait_stable()
    q = "failover"
    must(cl.sluice(["queue", "create", q, "--durable", "--capacity", "100000000"]),
         "queue create")
    confirmed = open(run.dir / "confirmed.txt", "a")
    unknown = open(run.dir / "unconfirmed.jsonl", "a")
    prod = Producer(run, cl, q, "bg", 1, a.rate, confirmed, unknown)
    prod.start()
    say(f"background producer: one task per `sluice enqueue`, at most {a.rate}/s")

    # What a probe costs when nothing fails: the CLI's own start-up and
    # connection, included in every failover time below.
    base = []
    for i in range(5):
        rc, _, _, took = cl.sluice(["--json", "enqueue", q, f"probe-0-{i}"], key="probe")
        if rc == 0:
            base.append(took)
    probes_ok = len(base)
    times, rows = [], []
    for k in range(1, a.kills + 1):
        st = cl.wait_stable()
        leader = cl.members[st["node_id"]]
        t0 = time.monotonic()
        leader.kill9()
        attempts, exits = 0, {}
        while True:
            attempts += 1
            rc, out, err, _ = cl.sluice(["--json", "enqueue", q, f"probe-{k}-{attempts}"],
                                        timeout=60, key="probe")
            if rc == 0:
                t1 = time.monotonic()
                probes_ok += 1
                break
            exits[rc] = exits.get(rc, 0) + 1
            if time.monotonic() - t0 > a.give_up:
                run.failed = True
                raise RuntimeError(f"kill {k}: no enqueue confirmed {a.give_up} s after killing "
                                   f"the leader; last error: {err.strip()}")
        ms = (t1 - t0) * 1000
        times.append(ms)
        new = cl.status()
        new_desc = f"member {new['node_id']} term {new['term']}" if new else "?"
        run.event(f"kill {k}: leader {leader.id} -> {new_desc} in {ms:.0f} ms")
        t2 = time.monotonic()
        leader.start()
        leader.wait_listening()
        cl.wait_stable()
        caught = (time.monotonic() - t2) * 1000
        failed = ", ".join(f"exit {c} x{n}" for c, n in sorted(exits.items(), key=str))
        say(f"kill {k}/{a.kills}: leader member {leader.id} (term {st['term']}) -> {new_desc}: "
            f"first enqueue confirmed {ms:.0f} ms after the kill ({attempts} probe(s)"
            f"{': ' + failed if failed else ''}); member {leader.id} restarted and caught up "
            f"in {caught:.0f} ms")
        rows.append((k, leader.id, ms))
    prod.stop_flag.set()
    prod.join(timeout=90)
    if prod.error:
        raise prod.error

    # Nothing consumes this queue: what it holds is what was stored.
    info = json.loads(must(cl.sluice(["--json", "stats", q]), "stats"))
    stored = info["stats"]["unfinished"]
    ok = prod.ok_tasks + probes_ok
    unknown_n = sum(prod.failures.values())
    diverged = check_converged(run, cl, q, "after the last failover")
    print()
    print(f"failover: {len(times)} leader kills")
    if times:
        print(f"  kill -> first enqueue confirmed by the new leader: p50 {pct(times, 50):.0f} ms, "
              f"max {max(times):.0f} ms (min {min(times):.0f}, mean {statistics.mean(times):.0f})")
    if base:
        print(f"  (each includes a fresh `sluice enqueue` process: {statistics.median(base) * 1000:.0f}"
              f" ms when nothing fails)")
    print(f"  background producer: {prod.ok_tasks} tasks confirmed, {unknown_n} calls failed "
          f"(outcome unknown: " + ", ".join(f"exit {c} x{n}" for c, n in prod.failures.items())
          + ")")
    print(f"  queue holds {stored} tasks stored; confirmed {ok}; unconfirmed calls {unknown_n}")
    if diverged:
        print("!! MEMBERS DIVERGE: see above")
    if stored < ok:
        run.failed = True
        print(f"!! LOST: {ok - stored} confirmed tasks are not in the queue")
    elif stored > ok + unknown_n:
        run.failed = True
        print(f"!! STORED TWICE: {stored - ok - unknown_n} more tasks stored than enqueued")
    else:
        print("  consistent: confirmed <= stored <= confirmed + unconfirmed")
    cl.stop()


# ----------------------------------------------------------------- chaos


class Monitor(threading.Thread):
    """Polls every member's own metrics: who says it leads (serves), in
    which term. Two serving members in the same term is a split brain;
    two in different terms is a deposed leader that still serves."""

    def __init__(self, run, cluster, interval=0.1):
        super().__init__(daemon=True, name="monitor")
        self.ctx, self.cluster, self.interval = run, cluster, interval
        self.stop_flag = threading.Event()
        self.samples = 0
        self.same_term = []  # (wall, {node: term})
        self.overlap = []  # (wall, {node: term}) with different terms
        self.leaderless = 0.0  # seconds with no member serving
        self.unexpected_exits = []
        self.log = open(run.dir / "leaders.log", "a")

    def run(self):
        last = time.monotonic()
        while not self.stop_flag.wait(self.interval):
            now = time.monotonic()
            leaders = {}
            for m in self.cluster.members.values():
                if m.proc is not None and m.proc.poll() is not None and not m.killed_on_purpose:
                    m.killed_on_purpose = True  # report once
                    msg = (f"member {m.id} (pid {m.proc.pid}) exited by itself, status "
                           f"{m.proc.returncode}")
                    self.unexpected_exits.append((wall(), msg))
                    self.ctx.event("!! " + msg)
                    say("!! " + msg)
                mm = m.metrics(timeout=0.5) if m.alive() else None
                if mm and mm.get("sluice_cluster_leader") == 1.0:
                    leaders[m.id] = int(mm.get("sluice_cluster_term", -1))
            self.samples += 1
            w = wall()
            self.log.write(f"{w} {json.dumps(leaders)}\n")
            if not leaders:
                self.leaderless += now - last
            if len(leaders) > 1:
                terms = list(leaders.values())
                if len(set(terms)) < len(terms):
                    self.same_term.append((w, leaders))
                    self.ctx.event(f"!! SPLIT BRAIN: serving members with their terms {leaders}")
                    say(f"!! SPLIT BRAIN: two members serve in the same term: {leaders}")
                else:
                    self.overlap.append((w, leaders))
                    self.ctx.event(f"two members serve (different terms) {leaders}")
            last = now
        self.log.close()


def start_worker(run, cl, q, concurrency, processed, n, task_sleep=0.0):
    cmd = ("p=$(cat); printf '%s %s %s\\n' \"$SLUICE_TASK_ID\" \"$SLUICE_ATTEMPT\" \"$p\" "
           ">> \"$0\"")
    if task_sleep:
        cmd += f"; sleep {task_sleep}"
    argv = [run.bins["sluice-worker"], "--broker", cl.urls, "--queue", q,
            "--concurrency", str(concurrency), "--name", f"chaos-worker-{n}",
            "--", "sh", "-c", cmd, str(processed)]
    with open(run.dir / "worker.log", "a") as log:
        log.write(f"==== {wall()} worker start #{n} ====\n")
        log.flush()
        return run.spawn(argv, "sluice-worker", log, log)


def stop_worker(run, w, grace=60):
    if w.poll() is None:
        w.terminate()
        try:
            w.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            say(f"worker did not stop within {grace} s of SIGTERM: killing it")
            w.kill()
            w.wait()
    run.forget(w)
    return w.returncode


def queue_stats(cl, q):
    rc, out, err, _ = cl.sluice(["--json", "stats", q], timeout=30, key="stats")
    if rc != 0:
        return None
    try:
        return json.loads(out)["stats"]
    except (ValueError, KeyError):
        return None


def chaos(run, a):
    rng = random.Random(a.seed)
    say(f"random seed {a.seed}")
    cl = Cluster(run)
    cl.start()
    cl.wait_stable()
    q = "chaos"
    must(cl.sluice(["queue", "create", q, "--durable", "--capacity", "100000000",
                    "--ack-deadline", a.ack_deadline, "--max-attempts", "0",
                    "--retry-initial", "100ms", "--retry-max", "2s"]), "queue create")
    processed = run.dir / "processed.txt"
    processed.touch()
    worker_starts = 1
    worker = start_worker(run, cl, q, a.concurrency, processed, worker_starts, a.task_sleep)
    confirmed = open(run.dir / "confirmed.txt", "a")
    unknown = open(run.dir / "unconfirmed.jsonl", "a")
    producers = [Producer(run, cl, q, f"p{i}", a.batch, a.rate / a.producers, confirmed, unknown)
                 for i in range(a.producers)]
    mon = Monitor(run, cl)
    mon.start()
    for p in producers:
        p.start()
    say(f"{a.producers} producer(s), {a.batch} payload(s) per `sluice enqueue`, "
        f"{a.rate} tasks/s in all; worker concurrency {a.concurrency}")

    kills = []
    end = time.monotonic() + a.seconds
    try:
        while True:
            gap = rng.uniform(a.kill_every_min, a.kill_every_max)
            if time.monotonic() + gap >= end:
                break
            time.sleep(gap)  # random delay between kills (the chaos itself)
            st = cl.status()
            if st and rng.random() < a.leader_share:
                victim = cl.members[st["node_id"]]
            else:
                victim = cl.members[rng.choice(sorted(cl.members))]
            was_leader = bool(st and st["node_id"] == victim.id)
            down = rng.uniform(a.down_min, a.down_max)
            victim.kill9()
            say(f"chaos: kill -9 member {victim.id}" + (" (the leader)" if was_leader else "")
                + f", restart in {down:.1f} s")
            time.sleep(down)  # random downtime
            victim.start()
            victim.wait_listening()
            kills.append((wall(), victim.id, was_leader, down))
            if worker.poll() is not None:
                say(f"!! the worker exited (status {worker.returncode}); starting it again")
                run.event(f"!! worker exited status {worker.returncode}")
                worker_starts += 1
                worker = start_worker(run, cl, q, a.concurrency, processed, worker_starts, a.task_sleep)
    finally:
        for p in producers:
            p.stop_flag.set()
    say("chaos over: stopping the producers (their calls in flight finish)")
    for p in producers:
        p.join(timeout=90)
        if p.is_alive():
            say(f"!! producer {p.pname} still in a call after 90 s")
        if p.error:
            raise p.error

    say("waiting until every member is up and caught up")
    cl.wait_stable(timeout=120)
    before = after = diverged_before = None
    if not a.no_final_crash:
        say("final: stop the worker (SIGTERM), kill -9 all three members together, "
            "restart them all")
        rc = stop_worker(run, worker)
        if rc != 0:
            say(f"!! worker exited with status {rc} on SIGTERM")
        diverged_before = check_converged(run, cl, q, "before the final crash")
        before = queue_stats(cl, q)
        for m in cl.members.values():
            m.proc.kill()
        for m in cl.members.values():
            m.kill9()
        for m in cl.members.values():
            m.start()
        for m in cl.members.values():
            m.wait_listening()
        cl.wait_stable(timeout=120)
        after = queue_stats(cl, q)
        say(f"queue before the crash: {brief(before)}")
        say(f"queue after the restart: {brief(after)}")
        worker_starts += 1
        worker = start_worker(run, cl, q, a.concurrency, processed, worker_starts, a.task_sleep)

    say(f"waiting for the queue to drain (unfinished 0, at most {a.drain_timeout} s)")
    drained = True
    try:
        wait_until("queue drained", lambda: (lambda s: s and s["unfinished"] == 0)(
            queue_stats(cl, q)), a.drain_timeout, 0.25)
    except Timeout as e:
        drained = False
        run.failed = True
        say(f"!! {e}")
    final = queue_stats(cl, q)
    stop_worker(run, worker)
    diverged_end = check_converged(run, cl, q, "at the end")
    mon.stop_flag.set()
    mon.join(timeout=10)
    cl.stop()
    report_chaos(run, a, producers, kills, mon, before, after, final, drained,
                 {"before the final crash": diverged_before, "at the end": diverged_end})


def brief(s):
    if not s:
        return "(stats failed)"
    return (f"unfinished {s['unfinished']} (ready {s['ready']}, leased {s['leased']}, "
            f"retrying {s['retrying']}), enqueued_total {s['enqueued_total']}, "
            f"acked_total {s['acked_total']}, dead_total {s['dead_total']}")


def report_chaos(run, a, producers, kills, mon, before, after, final, drained, diverged):
    confirmed = {}  # payload -> id
    by_id = {}  # id -> payloads (confirmed)
    when = {}  # payload -> (call started, confirmed)
    for line in (run.dir / "confirmed.txt").read_text().splitlines():
        tid, p, t_start, t_end = line.split(" ")
        when[p] = (t_start, t_end)
        confirmed.setdefault(p, []).append(tid)
        by_id.setdefault(tid, set()).add(p)
    unconfirmed = set()
    unknown_calls = 0
    for line in (run.dir / "unconfirmed.jsonl").read_text().splitlines():
        unknown_calls += 1
        unconfirmed.update(json.loads(line)["payloads"])
    processed = {}  # payload -> [(id, attempt)]
    proc_ids = {}  # id -> payloads
    bad_lines = 0
    for line in (run.dir / "processed.txt").read_text().splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3:
            bad_lines += 1
            continue
        tid, att, p = parts
        processed.setdefault(p, []).append((tid, att))
        proc_ids.setdefault(tid, set()).add(p)

    lost = sorted(p for p in confirmed if p not in processed)
    confirmed_twice = sorted(p for p, ids in confirmed.items() if len(ids) > 1)
    redelivered = sorted(p for p, runs in processed.items()
                         if len(runs) > len({t for t, _ in runs}))
    two_ids = sorted(p for p, runs in processed.items() if len({t for t, _ in runs}) > 1)
    two_ids_confirmed = [p for p in two_ids if p in confirmed]
    extra_ids = sum(len({t for t, _ in processed[p]}) - 1 for p in two_ids)
    # A payload runs under two ids when its batch was stored twice (the
    # retry of a batch not recognised), or when a leader delivered a task
    # before its enqueue was committed and died: the task ran, was never
    # stored, and the client's retry stored it (once) under a new id. The
    # queue's count of stored tasks tells them apart, in sum: ids that ran
    # but were never stored are the second kind.
    stored = final["enqueued_total"] if final else None
    never_stored = len(proc_ids) - stored if stored is not None else None
    stored_twice_min = max(0, extra_ids - (never_stored or 0)) if stored is not None else None
    # A confirmed task that never ran under its own id, its payload only
    # under another: the confirmation named a task that did not survive.
    id_not_run = sorted(p for p in confirmed if p in processed
                        and not set(confirmed[p]) & {t for t, _ in processed[p]})
    phantom = sorted(p for p in processed if p not in confirmed)
    phantom_unknown = [p for p in phantom if p in unconfirmed]
    phantom_never_sent = [p for p in phantom if p not in unconfirmed]
    id_collisions = sorted(t for t, ps in by_id.items() if len(ps) > 1) + sorted(
        t for t, ps in proc_ids.items() if len(ps) > 1)
    more_than_once = sorted(p for p, runs in processed.items() if len(runs) > 1)

    calls = sum(p.calls for p in producers)
    fails = {}
    for p in producers:
        for c, n in p.failures.items():
            fails[c] = fails.get(c, 0) + n
    print()
    print(f"chaos: {a.seconds} s, {len(kills)} kills "
          f"({sum(1 for k in kills if k[2])} of the leader), seed {a.seed}")
    for w, node, was_leader, down in kills:
        print(f"  {w} kill -9 member {node}{' (leader)' if was_leader else ''}, down {down:.1f} s")
    print(f"producers: {calls} `sluice enqueue` calls, {len(confirmed)} tasks confirmed, "
          f"{unknown_calls} calls failed ({len(unconfirmed)} payloads, outcome unknown): "
          + (", ".join(f"exit {c} x{n}" for c, n in sorted(fails.items(), key=str)) or "none"))
    print(f"worker: {sum(len(r) for r in processed.values())} runs of {len(processed)} "
          f"payloads")
    if before:
        print(f"queue before the final crash: {brief(before)}")
        print(f"queue after the restart:      {brief(after)}")
    print(f"queue at the end:             {brief(final)}"
          + ("" if drained else "   !! NOT DRAINED"))
    # Nothing ran between the two (producers and worker stopped, every
    # member caught up): a crash of all three must give back the same queue.
    # (Leased tasks come back ready after a restart: not compared.)
    keys = ("unfinished", "enqueued_total", "acked_total", "dead_total")
    rolled_back = bool(before and after and any(before[k] != after[k] for k in keys))
    if before and not after:
        rolled_back = True
    if rolled_back:
        print("!! THE QUEUE CHANGED ACROSS THE FULL CRASH AND RESTART: "
              + ", ".join(f"{k} {before[k]} -> {after[k] if after else '?'}" for k in keys
                          if not after or before[k] != after[k]))
    print(f"leaders seen: {mon.samples} polls; {mon.leaderless:.1f} s with no member serving; "
          f"{len(mon.overlap)} polls with two serving members in different terms")
    print()
    print(f"LOST (confirmed, never processed):                 {len(lost)}")
    print(f"DUPLICATED: processed more than once:              {len(more_than_once)}")
    print(f"   of which the same task id again (redelivery):   {len(redelivered)}")
    print(f"   of which under two task ids:                    {len(two_ids)}"
          f"  ({len(two_ids_confirmed)} of them confirmed)")
    if stored is not None:
        print(f"      task ids that ran: {len(proc_ids)}; tasks the queue stored (enqueued_total):"
              f" {stored}; so {never_stored} ran without ever being stored (delivered")
        print(f"      before their enqueue committed, leader lost); STORED TWICE, at least:"
              f" {stored_twice_min}")
    print(f"   confirmed once, but under two ids:              {len(confirmed_twice)}")
    print(f"CONFIRMED ID NEVER RAN (payload ran under another): {len(id_not_run)}")
    print(f"PHANTOM (processed, never confirmed):              {len(phantom)}")
    print(f"   from a call that failed (answer lost):          {len(phantom_unknown)}")
    print(f"   never sent by a producer (!!):                  {len(phantom_never_sent)}")
    print(f"ID COLLISIONS (one id, two payloads):              {len(id_collisions)}")
    print(f"SPLIT BRAIN (two serving in the same term):        {len(mon.same_term)} polls")
    for when, views in diverged.items():
        if views:
            print(f"MEMBERS DIVERGE ({when}): the queue differs between members:")
            for i, v in views.items():
                print(f"   member {i}: {v}")
    print(f"members that exited by themselves:                 {len(mon.unexpected_exits)}")
    print(f"unreadable lines in processed.txt:                 {bad_lines}")

    def detail(title, items, fmt):
        if items:
            print(f"\n{title} (first 20):")
            for x in items[:20]:
                print("  " + fmt(x))

    detail("lost", lost, lambda p: f"{p} confirmed as {confirmed[p]} (call {when[p][0]} .. "
           f"{when[p][1]})")
    detail("under two task ids", two_ids, lambda p: f"{p}: runs {processed[p]}, "
           f"confirmed {confirmed.get(p, 'no')}")
    detail("confirmed id never ran", id_not_run, lambda p: f"{p}: confirmed {confirmed[p]}, "
           f"ran {processed[p]}")
    detail("redelivered", redelivered, lambda p: f"{p}: runs {processed[p]}")
    detail("phantom, never sent", phantom_never_sent, lambda p: f"{p}: runs {processed[p]}")
    detail("id collisions", id_collisions, lambda t: f"{t}: confirmed "
           f"{sorted(by_id.get(t, []))}, ran {sorted(proc_ids.get(t, []))}")
    detail("split brain", mon.same_term, lambda x: f"{x[0]} serving: {x[1]}")
    detail("two leaders, different terms", mon.overlap, lambda x: f"{x[0]} serving: {x[1]}")
    detail("members that exited by themselves", mon.unexpected_exits, lambda x: f"{x[0]} {x[1]}")
    bad = (lost or stored_twice_min or (never_stored or 0) < 0 or confirmed_twice or id_not_run or phantom_never_sent
           or id_collisions or mon.same_term or mon.unexpected_exits or not drained
           or rolled_back or any(diverged.values()))
    if bad:
        run.failed = True
        print(f"\n!! CHECK FAILED: records in {run.dir} (confirmed.txt, processed.txt, "
              "unconfirmed.jsonl, events.log, leaders.log, m*.log, worker.log)")
    else:
        print("\nno loss, no task stored twice, no split brain")


# ------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("throughput", help="sluice bench against a cluster and a single broker")
    t.add_argument("--tasks", type=int, default=200_000, help="batched run (default 200000)")
    t.add_argument("--tasks-single", type=int, default=20_000,
                   help="one-by-one run (default 20000)")
    t.add_argument("--rate", type=int, default=5000, help="latency run's rate (default 5000)")
    t.add_argument("--rate-duration", default="20s", help="latency run's length (default 20s)")
    t.add_argument("--skip-single", action="store_true", help="no single-broker comparison")
    f = sub.add_parser("failover", help="time leader kill -> first confirmed enqueue")
    f.add_argument("kills", nargs="?", type=int, default=20)
    f.add_argument("--rate", type=float, default=50,
                   help="background producer's most enqueue calls/s (default 50)")
    f.add_argument("--give-up", type=float, default=120,
                   help="seconds without a confirmed enqueue after a kill before failing")
    c = sub.add_parser("chaos", help="kill members at random; count lost and duplicated tasks")
    c.add_argument("seconds", nargs="?", type=float, default=60)
    c.add_argument("--producers", type=int, default=2)
    c.add_argument("--batch", type=int, default=5, help="payloads per `sluice enqueue` call")
    c.add_argument("--rate", type=float, default=100, help="tasks/s, all producers (default 100)")
    c.add_argument("--concurrency", type=int, default=4, help="worker concurrency")
    c.add_argument("--task-sleep", type=float, default=0.0,
                   help="seconds each task's command sleeps after recording it (a slower "
                        "worker keeps a backlog in the queue while members are killed)")
    c.add_argument("--ack-deadline", default="10s", help="the queue's lease (default 10s)")
    c.add_argument("--kill-every-min", type=float, default=2.0)
    c.add_argument("--kill-every-max", type=float, default=5.0)
    c.add_argument("--down-min", type=float, default=0.2)
    c.add_argument("--down-max", type=float, default=5.0,
                   help="most seconds a member stays down (default 5: beyond an election, "
                        "which takes 2.4-3.2 s, so both a leader's comeback and a real "
                        "failover happen)")
    c.add_argument("--leader-share", type=float, default=0.5,
                   help="share of kills aimed at the leader (default 0.5)")
    c.add_argument("--drain-timeout", type=float, default=300)
    c.add_argument("--no-final-crash", action="store_true",
                   help="at the end, do not kill -9 and restart all three members")
    c.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    if a.mode == "chaos" and a.seed is None:
        a.seed = random.randrange(1 << 30)

    global RUN
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    RUN = Run(a.mode)
    atexit.register(RUN.cleanup)
    say(f"binaries: {RUN.bins['sluice'].parent}; work directory: {RUN.dir}")
    try:
        {"throughput": throughput, "failover": failover, "chaos": chaos}[a.mode](RUN, a)
    except (Exception, SystemExit) as e:
        RUN.failed = True
        say(f"error: {e}")
        RUN.cleanup()
        sys.exit(1)
    RUN.cleanup()
    sys.exit(1 if RUN.failed else 0)


if __name__ == "__main__":
    main()
