//! The dashboard's JSON API on `--http-listen`, with the real broker: every
//! endpoint, who may read and act (tokens from an auth file, the session
//! cookie), and bad input answered with a status and a message.

use sluice_tests::cluster::Cluster;
use sluice_tests::{
    Broker, DEADLINE, HttpReply, Value, broker_refuses, eventually, http_call, num,
};

const AUTH: &str = r#"
[tokens.ops]
token = "ops-0123456789abcdef"
admin = ["*"]

[tokens.viewer]
token = "viewer-0123456789abcdef"
consume = ["calls", "dlq"]
"#;

const JSON: (&str, &str) = ("content-type", "application/json");

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// `sluice stats QUEUE --json` with a token file.
fn stats_as(b: &Broker, queue: &str, token_file: &str) -> serde_json::Value {
    let out = b.ok(&["--token-file", token_file, "--json", "stats", queue]);
    serde_json::from_str(&out).unwrap_or_default()
}

/// Schedule `name` in an answer of `GET /api/schedules` (Null when it is
/// not listed).
fn listed(list: &Value, name: &str) -> Value {
    list["schedules"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_default()
}

/// The names an answer of `GET /api/schedules` lists, in order.
fn names(list: &Value) -> Vec<String> {
    list["schedules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect()
}

struct Dash {
    addr: String,
    token: Option<String>,
}

impl Dash {
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> HttpReply {
        let auth = self.token.as_deref().map(bearer);
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some((k, v)) = &auth {
            headers.push((k, v));
        }
        if body.is_some() {
            headers.push(JSON);
        }
        http_call(&self.addr, method, path, &headers, body.unwrap_or(""))
    }

    fn get(&self, path: &str) -> HttpReply {
        self.call("GET", path, None)
    }

    fn post(&self, path: &str, body: &str) -> HttpReply {
        self.call("POST", path, Some(body))
    }

    fn delete(&self, path: &str) -> HttpReply {
        self.call("DELETE", path, Some("{}"))
    }
}

/// A broker with a dashboard, a queue whose one task died into its dead
/// letter queue, and another task ready.
fn with_a_dead_letter(extra: &[&str]) -> (Broker, String) {
    let mut args = vec!["--http-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let b = Broker::start_on("127.0.0.1:0", &args);
    let addr = b.dashboard_addr();
    (b, addr)
}

fn traffic(b: &Broker) {
    b.ok(&["queue", "create", "dlq"]);
    b.ok(&[
        "queue",
        "create",
        "calls",
        "--dead-letter",
        "dlq",
        "--max-attempts",
        "1",
        "--ack-deadline",
        "100ms",
    ]);
    b.ok(&["enqueue", "calls", "--group", "acme", "doomed"]);
    b.ok(&["get", "calls", "--no-ack"]);
    b.wait_stat("dlq", "ready", 1);
    b.ok(&["enqueue", "calls", "fine"]);
}

#[test]
fn an_open_dashboard_shows_queues_tasks_and_jobs_and_redrives_a_dead_letter() {
    let (b, addr) = with_a_dead_letter(&[]);
    traffic(&b);
    let d = Dash { addr, token: None };

    let o = d.get("/api/overview");
    assert_eq!(o.status, 200, "{o:?}");
    let o = o.json();
    assert_eq!(o["broker"]["role"], "standalone", "{o}");
    let calls = o["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "calls"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(num(&calls, &["ready"]), 1, "{o}");
    assert_eq!(calls["dead_letter"], "dlq");
    assert_eq!(num(&calls, &["dead_total"]), 1);
    assert_eq!(calls["can_admin"], true);

    let q = d.get("/api/queues/calls").json();
    assert_eq!(q["options"]["order"], "fifo", "{q}");
    assert_eq!(num(&q, &["options", "max_attempts"]), 1);
    assert_eq!(q["history"]["interval_s"], 5);
    let dlq = d.get("/api/queues/dlq").json();
    assert_eq!(dlq["dead_letter_of"][0], "calls", "{dlq}");

    // The dead letter, as a person browsing the dead letter queue sees it.
    let t = d.get("/api/queues/dlq/tasks?limit=10").json();
    assert_eq!(num(&t, &["total"]), 1, "{t}");
    let task = &t["tasks"][0];
    assert_eq!(task["payload_preview"], "doomed", "{t}");
    assert_eq!(task["dead_from"], "calls");
    assert_eq!(task["dead_reason"], "max-attempts");
    assert_eq!(task["group"], "acme");
    assert!(t["next_after"].is_null());

    // Redrive: back in its queue, gone from the dead letter queue.
    let r = d.post(
        "/api/queues/dlq/redrive",
        &format!(r#"{{"ids": [{}]}}"#, task["id"]),
    );
    assert_eq!((r.status, num(&r.json(), &["count"])), (200, 1), "{r:?}");
    b.wait_stat("calls", "ready", 2);
    assert_eq!(num(&b.stats("dlq"), &["stats", "ready"]), 0);

    // Pause and resume: what stats says follows.
    assert_eq!(d.post("/api/queues/calls/pause", "{}").status, 200);
    assert_eq!(b.stats("calls")["options"]["paused"], true);
    assert_eq!(d.post("/api/queues/calls/resume", "{}").status, 200);
    assert_eq!(b.stats("calls")["options"]["paused"], false);

    // Jobs.
    b.ok(&["enqueue", "calls", "--job", "nightly", "j1"]);
    let jobs = d.get("/api/jobs").json();
    assert_eq!(jobs["jobs"][0]["id"], "nightly", "{jobs}");
    let job = d.get("/api/jobs/nightly").json();
    assert_eq!(num(&job, &["job", "stored"]), 1, "{job}");
    assert_eq!(d.get("/api/jobs/unknown").status, 404);

    // Purge and delete.
    let p = d.post("/api/queues/calls/purge", "{}");
    assert_eq!((p.status, num(&p.json(), &["count"])), (200, 3), "{p:?}");
    let del = d.call("DELETE", "/api/queues/dlq", Some("{}"));
    assert_eq!(del.status, 200, "{del:?}");
    assert!(b.cli(&["stats", "dlq"]).code != 0, "dlq is gone");

    // The same scrape as --metrics-listen.
    let m = d.get("/metrics");
    assert!(m.body.contains("sluice_queue_ready_tasks"), "{m:?}");
}

#[test]
fn bad_input_is_a_status_and_a_message() {
    let (b, addr) = with_a_dead_letter(&[]);
    traffic(&b);
    b.ok(&["queue", "create", "ticks"]);
    b.ok(&[
        "schedule", "create", "tick", "--queue", "ticks", "--every", "1h", "--paused",
    ]);
    let d = Dash { addr, token: None };
    for (method, path, body, want) in [
        ("GET", "/api/queues/nope", None, 404),
        ("POST", "/api/schedules/nope/pause", Some("{}"), 404),
        ("POST", "/api/schedules/nope/resume", Some("{}"), 404),
        ("DELETE", "/api/schedules/nope", Some("{}"), 404),
        // Not a schedule's name at all: unknown alike.
        ("POST", "/api/schedules/no%20such!/pause", Some("{}"), 404),
        ("GET", "/api/queues/dlq/tasks?after=zzz", None, 400),
        ("POST", "/api/queues/nope/pause", Some("{}"), 404),
        (
            "POST",
            "/api/queues/dlq/redrive",
            Some(r#"{"ids": ["x"]}"#),
            400,
        ),
        (
            "POST",
            "/api/queues/dlq/redrive",
            Some(r#"{"to": "no such queue!"}"#),
            400,
        ),
        (
            "POST",
            "/api/queues/dlq/redrive",
            Some(r#"{"to": "gone"}"#),
            404,
        ),
        ("POST", "/api/queues/dlq/redrive", Some("not json"), 400),
        ("POST", "/api/session", Some(r#"{"token": 5}"#), 422),
    ] {
        let r = d.call(method, path, body);
        assert_eq!(r.status, want, "{method} {path} {body:?}: {r:?}");
        assert!(
            r.json()["error"].is_string(),
            "{method} {path} {body:?}: an error in the API's shape: {r:?}"
        );
    }
    // A change without a JSON body (what a cross-site form would send).
    let r = http_call(
        &d.addr,
        "POST",
        "/api/queues/calls/purge",
        &[("content-type", "application/x-www-form-urlencoded")],
        "a=1",
    );
    assert_eq!(r.status, 415, "{r:?}");
    assert!(r.json()["error"].is_string(), "{r:?}");
    assert_eq!(
        num(&b.stats("calls"), &["stats", "ready"]),
        1,
        "nothing purged"
    );
    // Nor may a schedule be resumed or deleted by one.
    for (method, path) in [
        ("POST", "/api/schedules/tick/resume"),
        ("POST", "/api/schedules/tick/pause"),
        ("DELETE", "/api/schedules/tick"),
    ] {
        let r = http_call(
            &d.addr,
            method,
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            "a=1",
        );
        assert_eq!(r.status, 415, "{method} {path}: {r:?}");
        assert!(r.json()["error"].is_string(), "{r:?}");
        let r = http_call(&d.addr, method, path, &[], "");
        assert_eq!(r.status, 415, "{method} {path} without a body: {r:?}");
    }
    assert_eq!(
        b.listed_schedule(&[], "tick")["paused"],
        true,
        "the schedule is still there, still paused"
    );
    // Nothing was moved by the refused redrives.
    assert_eq!(num(&b.stats("dlq"), &["stats", "ready"]), 1);
}

#[test]
fn with_an_auth_file_nothing_is_shown_without_a_token_and_only_admins_act() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, AUTH).expect("write");
    let auth = auth.display().to_string();
    let (b, addr) = with_a_dead_letter(&["--auth-file", &auth]);
    // The CLI needs the ops token for the traffic.
    std::fs::write(dir.path().join("token"), "ops-0123456789abcdef\n").expect("write");
    let ops_file = dir.path().join("token").display().to_string();
    for args in [
        vec!["queue", "create", "dlq"],
        vec!["queue", "create", "calls", "--dead-letter", "dlq"],
        vec!["queue", "create", "secret"],
        vec!["enqueue", "calls", "x"],
    ] {
        let mut a = vec!["--token-file", ops_file.as_str()];
        a.extend(args);
        b.ok(&a);
    }

    let anon = Dash {
        addr: addr.clone(),
        token: None,
    };
    for path in [
        "/api/overview",
        "/api/queues/calls",
        "/api/queues/calls/tasks",
        "/api/jobs",
        "/api/jobs/x",
    ] {
        assert_eq!(anon.get(path).status, 401, "{path}");
    }
    assert_eq!(anon.post("/api/queues/calls/purge", "{}").status, 401);
    // Pages send a visitor without a session to sign in.
    let page = anon.get("/");
    assert_eq!(page.status, 303, "{page:?}");
    assert_eq!(page.header("location"), Some("/login"));
    assert_eq!(anon.get("/login").status, 200);

    // A consumer's token reads its queues only, and may not act.
    let viewer = Dash {
        addr: addr.clone(),
        token: Some("viewer-0123456789abcdef".into()),
    };
    let o = viewer.get("/api/overview").json();
    let names: Vec<&str> = o["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert_eq!(names, ["calls", "dlq"], "{o}");
    assert_eq!(o["queues"][0]["can_admin"], false);
    assert_eq!(o["broker"]["viewer"]["name"], "viewer");
    assert_eq!(viewer.get("/api/queues/secret").status, 404, "not leaked");
    for action in ["pause", "resume", "purge", "redrive"] {
        let r = viewer.post(&format!("/api/queues/calls/{action}"), "{}");
        assert_eq!(r.status, 403, "{action}: {r:?}");
    }
    assert_eq!(
        viewer
            .call("DELETE", "/api/queues/calls", Some("{}"))
            .status,
        403
    );
    assert_eq!(
        num(&stats_as(&b, "calls", &ops_file), &["stats", "ready"]),
        1
    );

    // Signing in sets an HttpOnly, SameSite cookie that then works alone.
    let bad = anon.post("/api/session", r#"{"token": "wrong-0123456789abcdef"}"#);
    assert_eq!(bad.status, 401);
    let ok = anon.post("/api/session", r#"{"token": "ops-0123456789abcdef"}"#);
    assert_eq!(ok.status, 200, "{ok:?}");
    let cookie = ok.header("set-cookie").unwrap_or_default().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let value = cookie.split(';').next().unwrap_or_default().to_owned();
    let r = http_call(
        &addr,
        "POST",
        "/api/queues/calls/pause",
        &[("cookie", &value), JSON],
        "{}",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let page = http_call(&addr, "GET", "/", &[("cookie", &value)], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("calls"), "the overview lists the queue");
    eventually(DEADLINE, "the pause is in force", || {
        stats_as(&b, "calls", &ops_file)["options"]["paused"] == true
    });
}

#[test]
fn schedules_are_listed_and_paused_resumed_and_deleted() {
    let (b, addr) = with_a_dead_letter(&[]);
    let d = Dash { addr, token: None };
    assert_eq!(
        d.get("/api/schedules").json()["schedules"],
        Value::Array(vec![])
    );

    b.ok(&["queue", "create", "reports"]);
    b.ok(&["queue", "create", "api"]);
    b.ok(&[
        "schedule",
        "create",
        "nightly",
        "--queue",
        "reports",
        "--cron",
        "0 3 * * *",
        "--tz",
        "Europe/Paris",
        "--missed",
        "catch-up:3",
    ]);
    b.ok(&[
        "schedule", "create", "poll", "--queue", "api", "--every", "1s",
    ]);
    // A tick that fails: its queue is gone.
    b.ok(&["queue", "create", "doomed"]);
    b.ok(&[
        "schedule", "create", "orphan", "--queue", "doomed", "--every", "1s",
    ]);
    b.ok(&["queue", "delete", "doomed"]);

    let list = d.get("/api/schedules");
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(
        names(&list.json()),
        ["nightly", "orphan", "poll"],
        "by name"
    );
    let nightly = listed(&list.json(), "nightly");
    assert_eq!(nightly["queue"], "reports", "{nightly}");
    assert_eq!(nightly["when"], "0 3 * * * (Europe/Paris)");
    assert_eq!(nightly["cron"], "0 3 * * *");
    assert_eq!(nightly["time_zone"], "Europe/Paris");
    assert!(nightly["every_ms"].is_null());
    assert_eq!(nightly["catch_up"], 3);
    assert_eq!(nightly["state"], "running");
    assert_eq!(nightly["can_admin"], true);
    assert!(
        nightly["last_tick_unix_ms"].is_null(),
        "no tick yet: {nightly}"
    );
    assert!(nightly["last_task_id"].is_null() && nightly["last_error"].is_null());
    // The next tick is what the CLI says it is.
    assert_eq!(
        nightly["next_tick_unix_ms"],
        b.listed_schedule(&[], "nightly")["next_tick_unix_ms"],
        "{nightly}"
    );

    // The interval's ticks: the task of the last one, the counts growing.
    let mut poll = Value::Null;
    eventually(DEADLINE, "poll fired two ticks", || {
        poll = listed(&d.get("/api/schedules").json(), "poll");
        num(&poll, &["fired"]) >= 2
    });
    assert_eq!(poll["when"], "every 1s", "{poll}");
    assert_eq!(poll["every_ms"], 1000);
    assert!(poll["cron"].is_null() && poll["time_zone"].is_null());
    assert!(poll["last_task_id"].is_string(), "{poll}");
    assert!(poll["last_error"].is_null(), "{poll}");
    assert!(num(&poll, &["last_tick_unix_ms"]) > 0 && num(&poll, &["last_run_unix_ms"]) > 0);
    assert!(num(&poll, &["next_tick_unix_ms"]) > num(&poll, &["last_tick_unix_ms"]));
    let mut orphan = Value::Null;
    eventually(DEADLINE, "orphan failed a tick", || {
        orphan = listed(&d.get("/api/schedules").json(), "orphan");
        num(&orphan, &["failed"]) >= 1
    });
    assert!(
        orphan["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("doomed")),
        "{orphan}"
    );

    // A queue's page lists its own schedules only.
    let q = d.get("/api/queues/api").json();
    let on_page: Vec<&str> = q["schedules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(on_page, ["poll"], "{q}");
    assert_eq!(
        d.get("/api/queues/reports").json()["schedules"][0]["name"],
        "nightly"
    );

    // Pause: the list and the CLI agree, no next tick, no more ticks.
    let r = d.post("/api/schedules/poll/pause", "{}");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("poll")),
        "{r:?}"
    );
    let poll = listed(&d.get("/api/schedules").json(), "poll");
    assert_eq!(
        (poll["state"].as_str(), poll["paused"].as_bool()),
        (Some("paused"), Some(true))
    );
    assert!(poll["next_tick_unix_ms"].is_null(), "{poll}");
    assert_eq!(b.listed_schedule(&[], "poll")["paused"], true);
    // Pausing again changes nothing, and says so with a 200.
    assert_eq!(d.post("/api/schedules/poll/pause", "{}").status, 200);

    let r = d.post("/api/schedules/poll/resume", "{}");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        listed(&d.get("/api/schedules").json(), "poll")["state"],
        "running"
    );
    assert_eq!(b.listed_schedule(&[], "poll")["paused"], false);

    // Delete: gone from the list, the queue's page and the CLI; then 404.
    let r = d.delete("/api/schedules/poll");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        names(&d.get("/api/schedules").json()),
        ["nightly", "orphan"]
    );
    assert_eq!(
        d.get("/api/queues/api").json()["schedules"],
        Value::Array(vec![])
    );
    assert!(b.listed_schedule(&[], "poll").is_null());
    assert_eq!(d.delete("/api/schedules/poll").status, 404);
    assert_eq!(d.post("/api/schedules/poll/resume", "{}").status, 404);

    // The page.
    let page = d.get("/schedules");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("nightly") && page.body.contains("Europe/Paris"));
}

/// A schedule is its queue's: listed to who may read the queue, paused,
/// resumed and deleted by who administers it, unknown to anyone else.
#[test]
fn with_an_auth_file_a_schedule_is_seen_and_changed_as_its_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, AUTH).expect("write");
    let auth = auth.display().to_string();
    let (b, addr) = with_a_dead_letter(&["--auth-file", &auth]);
    std::fs::write(
        dir.path().join("token"),
        "ops-0123456789abcdef
",
    )
    .expect("write");
    let ops_file = dir.path().join("token").display().to_string();
    let ops_cli = ["--token-file", ops_file.as_str()];
    for args in [
        vec!["queue", "create", "calls"],
        vec!["queue", "create", "secret"],
        vec![
            "schedule",
            "create",
            "calls-hourly",
            "--queue",
            "calls",
            "--every",
            "1h",
        ],
        vec![
            "schedule",
            "create",
            "secret-hourly",
            "--queue",
            "secret",
            "--every",
            "1h",
        ],
    ] {
        b.ok(&[&ops_cli[..], &args].concat());
    }

    // Without a token: nothing, on every route.
    let anon = Dash {
        addr: addr.clone(),
        token: None,
    };
    assert_eq!(anon.get("/api/schedules").status, 401);
    for action in ["pause", "resume"] {
        let r = anon.post(&format!("/api/schedules/calls-hourly/{action}"), "{}");
        assert_eq!(r.status, 401, "{action}: {r:?}");
    }
    assert_eq!(anon.delete("/api/schedules/calls-hourly").status, 401);
    let page = anon.get("/schedules");
    assert_eq!(
        (page.status, page.header("location")),
        (303, Some("/login"))
    );

    // A consumer of calls: its schedule, without the right to change it;
    // the other queue's is unknown to it.
    let viewer = Dash {
        addr: addr.clone(),
        token: Some("viewer-0123456789abcdef".into()),
    };
    let list = viewer.get("/api/schedules").json();
    assert_eq!(names(&list), ["calls-hourly"], "{list}");
    assert_eq!(listed(&list, "calls-hourly")["can_admin"], false);
    for action in ["pause", "resume"] {
        let r = viewer.post(&format!("/api/schedules/calls-hourly/{action}"), "{}");
        assert_eq!(r.status, 403, "{action}: {r:?}");
        assert!(r.json()["error"].is_string(), "{r:?}");
        let r = viewer.post(&format!("/api/schedules/secret-hourly/{action}"), "{}");
        assert_eq!(r.status, 404, "{action} of a hidden schedule: {r:?}");
    }
    assert_eq!(viewer.delete("/api/schedules/calls-hourly").status, 403);
    assert_eq!(viewer.delete("/api/schedules/secret-hourly").status, 404);
    let page = viewer.get("/schedules");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("calls-hourly") && !page.body.contains("secret-hourly"));
    for name in ["calls-hourly", "secret-hourly"] {
        let s = b.listed_schedule(&ops_cli, name);
        assert_eq!(s["paused"], false, "{name} untouched: {s}");
    }

    // The admin: every schedule, and every change.
    let ops = Dash {
        addr,
        token: Some("ops-0123456789abcdef".into()),
    };
    let list = ops.get("/api/schedules").json();
    assert_eq!(names(&list), ["calls-hourly", "secret-hourly"], "{list}");
    assert_eq!(listed(&list, "secret-hourly")["can_admin"], true);
    assert_eq!(
        ops.post("/api/schedules/secret-hourly/pause", "{}").status,
        200
    );
    assert_eq!(b.listed_schedule(&ops_cli, "secret-hourly")["paused"], true);
    assert_eq!(
        ops.post("/api/schedules/secret-hourly/resume", "{}").status,
        200
    );
    assert_eq!(
        b.listed_schedule(&ops_cli, "secret-hourly")["paused"],
        false
    );
    assert_eq!(ops.delete("/api/schedules/secret-hourly").status, 200);
    assert!(b.listed_schedule(&ops_cli, "secret-hourly").is_null());
}

/// In a cluster every member's dashboard lists the schedules, and only the
/// leader's changes them: a follower answers 503, naming the leader.
#[test]
fn a_schedule_changes_on_the_leaders_dashboard_only() {
    let c = Cluster::start_with_args(3, &["--http-listen", "127.0.0.1:0"]);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    let l = c.up(leader);
    l.ok(&["queue", "create", "api"]);
    l.ok(&[
        "schedule", "create", "poll", "--queue", "api", "--every", "1h",
    ]);

    let f = Dash {
        addr: c.up(follower).dashboard_addr(),
        token: None,
    };
    eventually(DEADLINE, "the follower lists the schedule", || {
        names(&f.get("/api/schedules").json()) == ["poll"]
    });
    for (method, path) in [
        ("POST", "/api/schedules/poll/pause"),
        ("POST", "/api/schedules/poll/resume"),
        ("DELETE", "/api/schedules/poll"),
    ] {
        let r = f.call(method, path, Some("{}"));
        assert_eq!(r.status, 503, "{method} {path} on a follower: {r:?}");
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains(&c.addrs[leader])),
            "{r:?}"
        );
    }

    let d = Dash {
        addr: l.dashboard_addr(),
        token: None,
    };
    assert_eq!(d.post("/api/schedules/poll/pause", "{}").status, 200);
    eventually(DEADLINE, "the follower shows it paused", || {
        listed(&f.get("/api/schedules").json(), "poll")["state"] == "paused"
    });
}

#[test]
fn an_open_dashboard_off_loopback_is_refused() {
    let r = broker_refuses(&["--http-listen", "0.0.0.0:0"]);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("--auth-file"), "{r:?}");
}
