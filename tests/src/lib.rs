//! A small harness for end-to-end tests: start the real `sluice-broker`,
//! run the real `sluice` CLI and `sluice-worker`, each process wrapped in a
//! guard that kills it on drop (also when the test fails), and wait for
//! conditions with a deadline instead of sleeping.
//!
//! The binaries are taken from the cargo target directory this test runs
//! from; build them first (`cargo build --workspace --bins`, which README's
//! test command does).

#![allow(clippy::unwrap_used)] // a failed harness step should fail the test loudly

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use serde_json::Value;

pub mod cluster;
pub mod proxy;

/// Generous default deadline: CI machines are slow and shared.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Path of one of the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// The numbers in a file, one per line (e.g. `date +%s%N` stamps a
/// command appended); lines that are not numbers are skipped, a missing
/// file is empty.
pub fn numbers_in(path: &Path) -> Vec<u128> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Polls `cond` until it holds or `within` passes; panics with `what`.
pub fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

/// Whether process `pid` is alive: it exists and is not a zombie. A
/// process whose parent died is reaped by init (or a subreaper) in its own
/// time, so a zombie counts as dead.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": comm may hold spaces and parentheses, so the
    // state is the first field after the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// A child process killed (SIGKILL) and reaped on drop. Its stderr is kept
/// in a file and printed if the test is failing, to explain the failure.
pub struct Proc {
    pub child: Child,
    name: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Starts any command under a guard (stderr kept in a log).
    pub fn start(name: &str, cmd: &mut Command) -> Proc {
        Proc::spawn(name, cmd.stdin(Stdio::null()).stdout(Stdio::null()))
    }

    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_owned(),
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name ("TERM", "KILL", "INT").
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    /// Waits for the process to exit within `within`; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < end,
                "{} did not exit within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} stderr ----\n{}", self.name, self.stderr_log());
        }
    }
}

/// A running broker on an ephemeral port.
pub struct Broker {
    pub proc: Proc,
    pub addr: String,
}

impl Broker {
    /// Starts `sluice-broker --listen 127.0.0.1:0 --in-memory` and reads
    /// its address from the `listening on` line.
    pub fn start() -> Broker {
        Broker::start_on("127.0.0.1:0", &[])
    }

    /// Starts a broker keeping its log in `dir`.
    pub fn start_durable(dir: &Path) -> Broker {
        Broker::start_on("127.0.0.1:0", &["--data-dir", &dir.display().to_string()])
    }

    /// Starts a broker on `listen` with extra arguments; in memory unless
    /// they name a `--data-dir`.
    pub fn start_on(listen: &str, extra: &[&str]) -> Broker {
        let mut proc = Proc::spawn("sluice-broker", &mut broker_command(listen, extra));
        let stdout = proc.child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(DEADLINE)
            .expect("broker printed no `listening on` line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}; stderr: {}",
                    proc.stderr_log()
                )
            })
            .to_owned();
        Broker { proc, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs the CLI against this broker.
    pub fn cli(&self, args: &[&str]) -> Out {
        cli(&self.url(), args, None)
    }

    /// Runs the CLI with `input` on stdin.
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> Out {
        cli(&self.url(), args, Some(input))
    }

    /// Runs the CLI and asserts it succeeded; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(out.code, 0, "sluice {args:?} failed: {out:?}");
        out.stdout
    }

    /// Starts the CLI in the background (e.g. an enqueue that will wait).
    pub fn cli_spawn(&self, args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin("sluice"));
        cmd.arg("--broker")
            .arg(self.url())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        Proc::spawn("sluice", &mut cmd)
    }

    /// Starts the CLI in the background with `input` on its stdin (written
    /// from a thread, so a CLI that stops reading does not block the test).
    /// Its stdout is piped: read it with [`Collected`], or after it exited
    /// when it prints little.
    pub fn cli_spawn_stdin(&self, args: &[&str], input: &str) -> Proc {
        let mut cmd = Command::new(bin("sluice"));
        cmd.arg("--broker")
            .arg(self.url())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn("sluice", &mut cmd);
        let mut stdin = proc.child.stdin.take().unwrap();
        let input = input.to_owned();
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        proc
    }

    /// Where a broker started with `--metrics-listen` serves its metrics,
    /// once it said so.
    pub fn metrics_addr(&self) -> String {
        let mut addr = String::new();
        eventually(DEADLINE, "metrics address logged", || {
            let log = self.proc.stderr_log();
            match log.lines().find_map(|l| l.strip_prefix("metrics on ")) {
                Some(a) => {
                    addr = a.trim().to_owned();
                    true
                }
                None => false,
            }
        });
        addr
    }

    /// The dashboard's address (`--http-listen`), from its stderr line.
    pub fn dashboard_addr(&self) -> String {
        let mut addr = String::new();
        eventually(DEADLINE, "dashboard address logged", || {
            let log = self.proc.stderr_log();
            match log.lines().find_map(|l| l.strip_prefix("dashboard on ")) {
                Some(a) => {
                    addr = a.trim().to_owned();
                    true
                }
                None => false,
            }
        });
        addr
    }

    /// `sluice --json ARGS...`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let argv: Vec<&str> = std::iter::once("--json")
            .chain(args.iter().copied())
            .collect();
        let out = self.ok(&argv);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("sluice {args:?}: {e}: {out}"))
    }

    /// Schedule `name` as `sluice BEFORE... --json schedule list` shows it
    /// (BEFORE: e.g. `--token T`); Null when it is not listed.
    pub fn listed_schedule(&self, before: &[&str], name: &str) -> Value {
        let mut args = before.to_vec();
        args.extend(["--json", "schedule", "list"]);
        let out = self.ok(&args);
        let list: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("schedule list: {e}: {out}"));
        list.as_array()
            .into_iter()
            .flatten()
            .find(|s| s["spec"]["name"] == name)
            .cloned()
            .unwrap_or_default()
    }

    /// `sluice stats QUEUE --json`.
    pub fn stats(&self, queue: &str) -> Value {
        let out = self.ok(&["--json", "stats", queue]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("stats --json: {e}: {out}"))
    }

    /// Waits until `queue`'s stats field `field` (e.g. "acked_total",
    /// "consumers") reads `want`.
    pub fn wait_stat(&self, queue: &str, field: &str, want: u64) {
        eventually(
            DEADLINE,
            &format!("{queue} stats.{field} == {want}"),
            || num(&self.stats(queue), &["stats", field]) == want,
        );
    }

    /// Starts `sluice-worker --queue QUEUE <args> -- <cmd...>`.
    pub fn worker(&self, queue: &str, args: &[&str], cmd: &[&str]) -> Proc {
        let mut c = Command::new(bin("sluice-worker"));
        c.args(["--broker", &self.url(), "--queue", queue])
            .args(args)
            .arg("--")
            .args(cmd)
            .env("RUST_LOG", "sluice_worker=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Proc::spawn("sluice-worker", &mut c)
    }
}

/// `sluice-broker --listen LISTEN EXTRA...`, in memory unless `extra`
/// names a `--data-dir` or `--config`, stdout piped.
fn broker_command(listen: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("sluice-broker"));
    cmd.args(["--listen", listen]);
    if !extra.contains(&"--data-dir") && !extra.contains(&"--config") {
        cmd.arg("--in-memory");
    }
    cmd.args(extra)
        .env("RUST_LOG", "sluice_broker=debug,info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd
}

/// How a broker that refused to start ended.
#[derive(Debug)]
pub struct Refused {
    /// Its exit code (None: killed by a signal).
    pub code: Option<i32>,
    pub stderr: String,
}

/// Runs `sluice-broker --listen 127.0.0.1:0 EXTRA...` (in memory unless
/// `extra` names a `--data-dir` or `--config`) expecting it to refuse to
/// start. Fails the test as soon as it prints `listening on` (it took the
/// configuration), or if it has not exited within the deadline.
pub fn broker_refuses(extra: &[&str]) -> Refused {
    let mut proc = Proc::spawn("sluice-broker", &mut broker_command("127.0.0.1:0", extra));
    let stdout = proc.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + DEADLINE;
    let mut exited = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => assert!(
                !line.starts_with("listening on"),
                "the broker started ({line:?}) instead of refusing {extra:?}; stderr: {}",
                proc.stderr_log()
            ),
            // Every line read and the broker gone.
            Err(mpsc::RecvTimeoutError::Disconnected) if exited.is_some() => break,
            // Stdout closed: the exit is a moment away; poll for it.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if exited.is_none() {
            exited = proc.child.try_wait().unwrap();
        }
        assert!(
            Instant::now() < end,
            "sluice-broker {extra:?} neither refused nor started within {DEADLINE:?}"
        );
    }
    Refused {
        code: exited.and_then(|s| s.code()),
        stderr: proc.stderr_log(),
    }
}

/// What a pipe has yielded so far, read by a background thread: to poll a
/// running process's output (a [`Proc`]'s stderr is in
/// [`Proc::stderr_log`] already).
#[derive(Clone, Default)]
pub struct Collected(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Collected {
    /// Starts reading `pipe` until its end.
    pub fn from(mut pipe: impl Read + Send + 'static) -> Collected {
        let collected = Collected::default();
        let buf = collected.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.0.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        collected
    }

    /// Everything read so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// What a CLI run printed and returned.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `sluice --broker URL args...`, optionally feeding stdin; fails the
/// test if it does not finish within the deadline.
pub fn cli(url: &str, args: &[&str], input: Option<&str>) -> Out {
    let mut child = Command::new(bin("sluice"))
        .arg("--broker")
        .arg(url)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_owned();
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Reads a u64 field of a JSON object by path (`["stats", "ready"]`).
pub fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {v}"))
}

/// A raw `Consume` stream, for tests that play the worker's side of the
/// protocol frame by frame.
pub struct RawConsumer {
    pub tx: tokio::sync::mpsc::Sender<sluice_client::proto::ConsumeRequest>,
    pub rx: tonic::Streaming<sluice_client::proto::ConsumeResponse>,
}

impl RawConsumer {
    /// Subscribes to `queue` as `name`, granting `credit`; waits for the
    /// broker's confirmation.
    pub async fn subscribe(url: &str, queue: &str, name: &str, credit: u32) -> RawConsumer {
        Self::try_subscribe(url, queue, name, credit)
            .await
            .unwrap_or_else(|status| panic!("subscribe {queue:?} as {name:?}: {status:?}"))
    }

    /// As [`RawConsumer::subscribe`], returning the broker's refusal.
    pub async fn try_subscribe(
        url: &str,
        queue: &str,
        name: &str,
        credit: u32,
    ) -> Result<RawConsumer, tonic::Status> {
        use sluice_client::proto::{ConsumeRequest, Subscribe};
        let client = sluice_client::Client::connect(url).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(ConsumeRequest {
            subscribe: Some(Subscribe {
                queue: queue.into(),
                consumer_name: name.into(),
            }),
            credit,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut rx = client
            .raw()
            .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = rx
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unknown("stream ended before subscribed"))?;
        assert!(first.subscribed.is_some(), "{first:?}");
        Ok(RawConsumer { tx, rx })
    }

    /// The next frame from the broker, within the deadline.
    pub async fn next(&mut self) -> sluice_client::proto::ConsumeResponse {
        tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("a frame within the deadline")
            .expect("stream healthy")
            .expect("stream open")
    }

    /// Reads frames until `n` deliveries arrived in total.
    pub async fn deliveries(&mut self, n: usize) -> Vec<sluice_client::proto::Delivery> {
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(self.next().await.deliveries);
        }
        assert_eq!(out.len(), n, "more deliveries than expected");
        out
    }

    pub async fn send(&self, frame: sluice_client::proto::ConsumeRequest) {
        self.tx.send(frame).await.unwrap();
    }
}

/// A consumer's field in `sluice --json stats` output, or None while it is
/// not subscribed (yet).
pub fn consumer_num(stats: &Value, name: &str, field: &str) -> Option<u64> {
    stats["consumers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)?[field]
        .as_u64()
}

/// The lease (with its token) for an ack/nack/extend of `d`.
pub fn lease_of(d: &sluice_client::proto::Delivery) -> sluice_client::proto::LeaseRef {
    use sluice_client::DeliveryExt;
    d.lease()
}

/// Creates `path` when dropped: releases blocked test handlers (and any
/// orphaned command of a killed worker) even when the test fails.
pub struct Flag(pub PathBuf);

impl Flag {
    /// Shell that blocks until the flag is raised (at most 30 s, so a
    /// handler never outlives a broken test for long).
    pub fn wait_script(&self) -> String {
        format!(
            "for i in $(seq 600); do [ -f {} ] && break; sleep 0.05; done",
            self.0.display()
        )
    }

    pub fn raise(&self) {
        std::fs::write(&self.0, b"go").unwrap();
    }
}

impl Drop for Flag {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"go");
    }
}

/// The workspace's root directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The Python of the test virtualenv, with the generated stubs on its path
/// (`./scripts/test.sh` sets both up).
pub fn python() -> Command {
    let root = root();
    let py = root.join("target/py/bin/python");
    assert!(
        py.exists(),
        "{} not found: run ./scripts/test.sh (it sets up the Python virtualenv)",
        py.display()
    );
    let mut cmd = Command::new(py);
    cmd.env("SLUICE_PY_GEN", root.join("target/py-gen"));
    cmd
}

/// Node with the example's packages installed (`./scripts/test.sh`).
pub fn node() -> Command {
    let modules = root().join("examples/node/node_modules");
    assert!(
        modules.exists(),
        "{} not found: run ./scripts/test.sh (it runs npm ci)",
        modules.display()
    );
    Command::new("node")
}

/// `GET /metrics` from a broker's `--metrics-listen` address: the whole
/// HTTP response.
pub fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

/// An HTTP answer, as [`http_call`] read it.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The body as JSON (Null when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to `addr` (`Connection: close`), with extra
/// header lines and a body; the answer with its chunked body decoded.
pub fn http_call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpReply {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest: &[u8] = raw.get(split + 4..).unwrap_or_default();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let data = &rest[eol + 2..];
            if n == 0 || data.len() < n {
                break;
            }
            out.extend_from_slice(&data[..n]);
            rest = data.get(n + 2..).unwrap_or_default();
        }
        String::from_utf8_lossy(&out).into_owned()
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}
