//! `sluice-worker --http-post`: each task is a POST to a service, and the
//! service's answer settles it — acked, dead-lettered, retried, or (a 429
//! with Retry-After) the whole queue held back for every worker. The
//! service is a small HTTP/1.1 responder in the test that records each
//! request and answers from a script.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_tests::{Broker, DEADLINE, Proc, bin, eventually, num};

/// One request as the service received it.
#[derive(Debug, Clone)]
struct Seen {
    /// When its head and body were in.
    at: Instant,
    /// Header names lower-cased (HTTP's are case-insensitive).
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// When the answer started going out.
    answered: Option<Instant>,
}

impl Seen {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// An answer of the script.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// The requests seen so far, shared by the service and the test.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().expect("log").clone()
    }

    fn len(&self) -> usize {
        self.0.lock().expect("log").len()
    }
}

/// An HTTP/1.1 service on 127.0.0.1:0: a thread per connection, one
/// request per connection (it answers `Connection: close`). The script gets
/// each request's number (0 for the first) and may block to hold it.
struct Service {
    addr: SocketAddr,
    log: Log,
    stop: Arc<AtomicBool>,
}

impl Service {
    fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Service {
        Service::start_with_log(Log::default(), script)
    }

    fn start_with_log(
        log: Log,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let (log2, stop2) = (log.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (log, script) = (log2.clone(), Arc::clone(&script));
                std::thread::spawn(move || serve(conn, &log, &*script));
            }
        });
        Service { addr, log, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request, records it, answers what the script says.
fn serve(conn: TcpStream, log: &Log, script: &(dyn Fn(usize) -> Reply + Send + Sync)) {
    let _ = conn.set_read_timeout(Some(DEADLINE));
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // the Drop's wake-up, or a probe
    }
    assert!(line.starts_with("POST /hook HTTP/1.1"), "{line:?}");
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    assert!(
        !headers.contains_key("transfer-encoding"),
        "the worker sends a Content-Length: {headers:?}"
    );
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let n = {
        let mut seen = log.0.lock().expect("log");
        seen.push(Seen {
            at: Instant::now(),
            headers,
            body,
            answered: None,
        });
        seen.len() - 1
    };
    let reply = script(n);
    let mut out = format!(
        "HTTP/1.1 {} Script\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&reply.body);
    log.0.lock().expect("log")[n].answered = Some(Instant::now());
    let mut conn = &conn;
    let _ = conn.write_all(out.as_bytes());
    let _ = conn.flush();
}

/// `sluice-worker --queue QUEUE --http-post URL EXTRA...`.
fn http_worker(b: &Broker, queue: &str, url: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("sluice-worker"));
    cmd.args(["--broker", &b.url(), "--queue", queue, "--http-post", url])
        .args(extra)
        .env("RUST_LOG", "sluice_worker=debug,info");
    Proc::start("sluice-worker", &mut cmd)
}

#[test]
fn a_2xx_acks_each_task_with_the_answer_as_its_result() {
    let svc = Service::start(|n| Reply::new(200, &format!("done-{n}")));
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let _w = http_worker(&b, "q", &svc.url(), &["--concurrency", "2", "--name", "w"]);
    b.wait_stat("q", "consumers", 1);

    // A job, to read back the results the acks carried.
    let out = b.cli_stdin(
        &[
            "--json",
            "enqueue",
            "q",
            "--job",
            "j",
            "--wait",
            "--header",
            "trace-id=abc",
        ],
        "one\ntwo\nthree\n",
    );
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let (summary, outcomes) = lines.split_last().expect("lines");
    assert_eq!(summary["succeeded"], 3, "{summary}");
    let mut results: Vec<&str> = outcomes
        .iter()
        .map(|o| o["result"].as_str().expect("result"))
        .collect();
    results.sort();
    assert_eq!(results, ["done-0", "done-1", "done-2"]);

    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "acked_total"]), 3);
    assert_eq!(num(&s, &["stats", "nacked_total"]), 0);
    let seen = svc.log.all();
    assert_eq!(seen.len(), 3, "one request per task");
    let mut bodies: Vec<&[u8]> = seen.iter().map(|r| &r.body[..]).collect();
    bodies.sort();
    assert_eq!(bodies, [&b"one"[..], b"three", b"two"]);
    let ids: Vec<&str> = outcomes
        .iter()
        .map(|o| o["task_id"].as_str().expect("task id"))
        .collect();
    for r in &seen {
        assert!(ids.contains(&r.header("sluice-task-id")), "{r:?}");
        assert_eq!(r.header("sluice-queue"), "q");
        assert_eq!(r.header("sluice-attempt"), "1");
        assert_eq!(r.header("sluice-header-trace-id"), "abc");
        assert_eq!(r.header("content-type"), "application/octet-stream");
        assert!(!r.headers.contains_key("sluice-group"), "no group: {r:?}");
    }
}

#[test]
fn a_tasks_group_goes_with_its_request() {
    let svc = Service::start(|_| Reply::new(204, ""));
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let _w = http_worker(&b, "q", &svc.url(), &[]);
    b.ok(&["enqueue", "q", "--group", "tenant-a", "for tenant a"]);
    b.wait_stat("q", "acked_total", 1);
    let seen = svc.log.all();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("sluice-group"), "tenant-a");
    assert_eq!(seen[0].body, b"for tenant a");
}

#[test]
fn a_4xx_sends_the_task_to_the_dead_letter_queue_with_the_status() {
    let svc = Service::start(|_| Reply::new(400, "bad input: no such user"));
    let b = Broker::start();
    b.ok(&["queue", "create", "dlq"]);
    b.ok(&["queue", "create", "q", "--dead-letter", "dlq"]);
    let _w = http_worker(&b, "q", &svc.url(), &[]);
    let id = b.ok(&["enqueue", "q", "poison"]);
    b.wait_stat("dlq", "ready", 1);

    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "delivered_total"]), 1, "not retried");
    assert_eq!(num(&s, &["stats", "dead_total"]), 1);
    assert_eq!(svc.log.len(), 1);
    let dead: serde_json::Value =
        serde_json::from_str(&b.ok(&["--json", "get", "dlq"])).expect("json");
    assert_eq!(dead["payload"], "poison");
    let h = &dead["headers"];
    assert_eq!(h["x-sluice-dead-id"], id.trim());
    assert_eq!(h["x-sluice-dead-reason"], "rejected");
    assert_eq!(
        h["x-sluice-dead-error"],
        "HTTP 400: bad input: no such user"
    );
}

#[test]
fn a_5xx_is_retried_until_the_service_takes_it() {
    let svc = Service::start(|n| match n {
        0 => Reply::new(500, "database down"),
        _ => Reply::new(200, "ok"),
    });
    let b = Broker::start();
    b.ok(&["queue", "create", "q", "--retry-initial", "20ms"]);
    let _w = http_worker(&b, "q", &svc.url(), &[]);
    b.ok(&["enqueue", "q", "payload"]);
    b.wait_stat("q", "acked_total", 1);

    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "nacked_total"]), 1);
    assert_eq!(num(&s, &["stats", "delivered_total"]), 2);
    assert_eq!(num(&s, &["stats", "unfinished"]), 0);
    let seen = svc.log.all();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("sluice-task-id"),
        seen[1].header("sluice-task-id")
    );
    assert_eq!(
        (
            seen[0].header("sluice-attempt"),
            seen[1].header("sluice-attempt")
        ),
        ("1", "2")
    );
    assert_eq!(seen[1].body, b"payload");
}

#[test]
fn a_429_holds_the_whole_queue_for_its_retry_after() {
    // Four requests arrive together (--concurrency 4, eight tasks queued).
    // The first is answered 429 with Retry-After: 1 once all four are in;
    // the other three are held until the worker has nacked it, then
    // answered 200. The nack's credit and the three acks' would each fetch
    // the next tasks at once, were the queue not held: every request after
    // the first four must come a second after the 429.
    let log = Log::default();
    let released = Arc::new(AtomicBool::new(false));
    let svc = {
        let (log, released) = (log.clone(), Arc::clone(&released));
        Service::start_with_log(log.clone(), move |n| match n {
            0 => {
                eventually(DEADLINE, "the first four requests in", || log.len() >= 4);
                Reply::new(429, "slow down").header("Retry-After", "1")
            }
            1..=3 => {
                eventually(DEADLINE, "the test releasing the held requests", || {
                    released.load(Ordering::SeqCst)
                });
                Reply::new(200, "ok")
            }
            _ => Reply::new(200, "ok"),
        })
    };
    let b = Broker::start();
    b.ok(&["queue", "create", "q"]);
    let _w = http_worker(&b, "q", &svc.url(), &["--concurrency", "4", "--name", "w"]);
    b.wait_stat("q", "consumers", 1);
    let input: String = (0..8).map(|i| format!("t{i}\n")).collect();
    assert_eq!(b.cli_stdin(&["enqueue", "q"], &input).code, 0);

    eventually(DEADLINE, "the worker nacked the 429", || {
        num(&b.stats("q"), &["stats", "nacked_total"]) == 1
    });
    released.store(true, Ordering::SeqCst);
    b.wait_stat("q", "acked_total", 8);

    let seen = log.all();
    assert_eq!(seen.len(), 9, "eight tasks, one of them twice: {seen:?}");
    let throttled_at = seen[0].answered.expect("the 429 went out");
    for (i, r) in seen.iter().enumerate().skip(4) {
        let after = r.at.saturating_duration_since(throttled_at);
        assert!(
            after >= Duration::from_millis(950),
            "request {i} came {after:?} after the 429 with Retry-After: 1 \
             (the queue should have been held for a second)"
        );
    }
    // The 429's task came back once the second was over, as attempt 2.
    let again: Vec<&Seen> = seen[4..]
        .iter()
        .filter(|r| r.header("sluice-task-id") == seen[0].header("sluice-task-id"))
        .collect();
    assert_eq!(again.len(), 1, "{seen:?}");
    assert_eq!(again[0].header("sluice-attempt"), "2");
    let s = b.stats("q");
    assert_eq!(num(&s, &["stats", "delivered_total"]), 9);
    assert_eq!(num(&s, &["stats", "unfinished"]), 0);
}

#[test]
fn a_worker_needs_exactly_one_of_a_command_and_a_url() {
    let b = Broker::start();
    for (args, says) in [
        (&["--queue", "q"][..], "--http-post"),
        (
            &[
                "--queue",
                "q",
                "--http-post",
                "http://127.0.0.1:1/",
                "--",
                "cat",
            ],
            "not both",
        ),
        (
            &["--queue", "q", "--http-post", "ftp://127.0.0.1/"],
            "http://",
        ),
    ] {
        let mut cmd = Command::new(bin("sluice-worker"));
        cmd.args(["--broker", &b.url()]).args(args);
        let mut w = Proc::start("sluice-worker", &mut cmd);
        assert_eq!(w.wait_exit(DEADLINE), Some(2), "{args:?}");
        let err = w.stderr_log();
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
