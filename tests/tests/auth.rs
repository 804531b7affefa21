//! Tokens: no or unknown token is UNAUTHENTICATED, a known one without the
//! right is PERMISSION_DENIED, neither tells whether a queue exists, a
//! schedule takes its queue's admin right and is unknown to a token that
//! may not read that queue, the CLI and worker send tokens from a file or
//! the environment, any gRPC client may spell the scheme `bearer`, and an
//! auth file that would not mean what it says stops the start.

use sluice_tests::{Broker, DEADLINE, bin, broker_refuses, cli, eventually};

const AUTH: &str = r#"
[tokens.ops]
token = "ops-0123456789abcdef"
admin = ["*"]

[tokens.ingest]
token = "ingest-0123456789abcdef"
produce = ["orders.*"]

[tokens.reader]
token = "reader-0123456789abcdef"
consume = ["orders.eu"]
"#;

fn as_token(b: &Broker, token: &str, args: &[&str]) -> sluice_tests::Out {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    cli(&b.url(), &all, None)
}

#[test]
fn tokens_and_roles_decide_who_may_do_what() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, AUTH).expect("write");
    let b = Broker::start_on("127.0.0.1:0", &["--auth-file", &auth.display().to_string()]);

    // No token, a wrong one: UNAUTHENTICATED, one line.
    for args in [
        vec!["queue", "list"],
        vec!["--token", "nope-0123456789abcdef", "queue", "list"],
    ] {
        let out = cli(&b.url(), &args, None);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("UNAUTHENTICATED"), "{out:?}");
        assert_eq!(out.stderr.trim_end().lines().count(), 1);
    }

    let ops = "ops-0123456789abcdef";
    let ingest = "ingest-0123456789abcdef";
    let reader = "reader-0123456789abcdef";
    for q in ["orders.eu", "billing"] {
        assert_eq!(as_token(&b, ops, &["queue", "create", q]).code, 0);
    }
    // The producer may produce to orders.* only, and may not administer.
    assert_eq!(as_token(&b, ingest, &["enqueue", "orders.eu", "x"]).code, 0);
    for args in [
        vec!["enqueue", "billing", "x"],
        vec!["enqueue", "secret-that-does-not-exist", "x"],
        vec!["queue", "create", "orders.new"],
        vec!["queue", "update", "orders.eu", "--max-in-flight", "1"],
        vec!["queue", "pause", "orders.eu"],
        vec!["get", "orders.eu"],
    ] {
        let out = as_token(&b, ingest, &args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("PERMISSION_DENIED"),
            "{args:?}: {out:?}"
        );
    }
    // A reader sees and takes only what it may.
    let list = as_token(&b, reader, &["queue", "list"]).stdout;
    assert!(
        list.contains("orders.eu") && !list.contains("billing"),
        "{list}"
    );
    let got = as_token(&b, reader, &["get", "orders.eu"]);
    assert_eq!((got.code, got.stdout.as_str()), (0, "x\n"), "{got:?}");
    // Changing a queue's options is administering it: not a consumer's
    // right, an admin's.
    let out = as_token(&b, reader, &["queue", "resume", "orders.eu"]);
    assert!(out.stderr.contains("PERMISSION_DENIED"), "{out:?}");
    let out = as_token(
        &b,
        ops,
        &["queue", "update", "orders.eu", "--rate", "100/s"],
    );
    assert_eq!(out.code, 0, "{out:?}");

    // From a file, as scripts should.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{ops}\n")).expect("write");
    let out = cli(
        &b.url(),
        &["--token-file", &token_file.display().to_string(), "stats"],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");

    // A worker with its token in the environment.
    as_token(&b, ingest, &["enqueue", "orders.eu", "for the worker"]);
    let mut c = std::process::Command::new(bin("sluice-worker"));
    c.args(["--broker", &b.url(), "--queue", "orders.eu", "--", "cat"])
        .env("SLUICE_TOKEN", reader);
    let _w = sluice_tests::Proc::start("worker", &mut c);
    eventually(DEADLINE, "worker acked with its token", || {
        let out = as_token(&b, ops, &["--json", "stats", "orders.eu"]);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .map(|v| v["stats"]["acked_total"] == 2)
            .unwrap_or(false)
    });
}

#[test]
fn an_open_broker_refuses_a_non_loopback_address() {
    let out = std::process::Command::new(bin("sluice-broker"))
        .args(["--listen", "0.0.0.0:0", "--in-memory"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--auth-file"), "{err}");
    assert!(out.stdout.is_empty());
}

const GUARDED: &str = r#"
[tokens.ops]
token = "ops-0123456789abcdef"
admin = ["*"]

[tokens.payroll]
token = "payroll-0123456789abcdef"
produce = ["secret"]
consume = ["secret"]

[tokens.public]
token = "public-0123456789abcdef"
consume = ["public"]
produce = ["public"]

[tokens.colleague]
token = "colleague-0123456789abcdef"
consume = ["secret"]

[tokens.a-admin]
token = "a-admin-0123456789abcdef"
admin = ["a.*"]

[tokens.a-admin-b]
token = "a-admin-b-0123456789abcdef"
admin = ["a.*"]
produce = ["b.*"]
"#;

async fn as_client(b: &Broker, token: &str) -> sluice_client::Client {
    let opts = sluice_client::TlsOptions {
        token: Some(token.into()),
        ..Default::default()
    };
    sluice_client::Client::connect_with(&b.url(), &opts)
        .await
        .expect("connect")
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    r.expect_err("refused").code()
}

/// Acks `d`'s lease on "secret" quoting `token`, through the unary call;
/// returns the codes of the refused items.
async fn ack_with_token(
    client: &sluice_client::Raw,
    d: &sluice_client::proto::Delivery,
    token: &str,
) -> Vec<i32> {
    use sluice_client::proto::{AckItem, AckRequest, LeaseRef};
    let req = AckRequest {
        queue: "secret".into(),
        acks: vec![AckItem {
            lease: Some(LeaseRef {
                task_id: d.task.as_ref().expect("task").id.clone(),
                attempt: d.attempt,
                lease_token: token.into(),
            }),
            ..Default::default()
        }],
    };
    let answer = client.clone().ack(req).await.expect("answered");
    answer.into_inner().errors.iter().map(|e| e.code).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_dead_letters_and_leases_are_guarded_by_their_queues() {
    use sluice_client::proto::{
        ConsumeRequest, CreateQueueRequest, EnqueueRequest, LeaseRef, NewTask, QueueOptions,
        SealJobRequest, Subscribe, WatchJobRequest,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, GUARDED).expect("write");
    let b = Broker::start_on("127.0.0.1:0", &["--auth-file", &auth.display().to_string()]);
    let ops = as_client(&b, "ops-0123456789abcdef").await;
    for q in ["secret", "public", "b.x"] {
        ops.create_queue(q, QueueOptions::default())
            .await
            .expect("create");
    }

    // Jobs: the payroll producer runs job "payroll" on queue "secret".
    let payroll = as_client(&b, "payroll-0123456789abcdef").await.raw();
    payroll
        .clone()
        .enqueue(EnqueueRequest {
            queue: "secret".into(),
            tasks: vec![NewTask {
                payload: "salary of alice".into(),
                job_id: "payroll".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let public = as_client(&b, "public-0123456789abcdef").await.raw();
    let watch = |job: &str| WatchJobRequest { job_id: job.into() };
    let seal = |job: &str| SealJobRequest {
        job_id: job.into(),
        total: 0,
    };
    // A token for another queue neither reads nor seals it...
    assert_eq!(
        code(public.clone().watch_job(watch("payroll")).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(public.clone().seal_job(seal("payroll")).await),
        tonic::Code::PermissionDenied
    );
    // ...and an unknown job is not created by asking.
    assert_eq!(
        code(public.clone().watch_job(watch("nobody")).await),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(public.clone().seal_job(seal("nobody")).await),
        tonic::Code::NotFound
    );
    // The owner seals it, and may watch it.
    let sealed = payroll
        .clone()
        .seal_job(seal("payroll"))
        .await
        .expect("seal");
    assert_eq!(sealed.into_inner().total, 1);
    payroll
        .clone()
        .watch_job(watch("payroll"))
        .await
        .expect("its owner may watch");
    // A second seal with another total is refused.
    let other = SealJobRequest {
        job_id: "payroll".into(),
        total: 7,
    };
    assert_eq!(
        code(payroll.clone().seal_job(other).await),
        tonic::Code::FailedPrecondition
    );

    // Dead letters go only where the creator may produce.
    let dl = |name: &str| CreateQueueRequest {
        name: name.into(),
        options: Some(QueueOptions {
            dead_letter: "b.x".into(),
            ..Default::default()
        }),
    };
    let a_admin = as_client(&b, "a-admin-0123456789abcdef").await.raw();
    assert_eq!(
        code(a_admin.clone().create_queue(dl("a.x")).await),
        tonic::Code::PermissionDenied
    );
    let a_admin_b = as_client(&b, "a-admin-b-0123456789abcdef").await.raw();
    a_admin_b
        .clone()
        .create_queue(dl("a.x"))
        .await
        .expect("may produce to b.x");

    // Leases: the payroll worker holds "salary of alice". A colleague who
    // may consume the queue too cannot settle it by guessing the lease.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ConsumeRequest {
        subscribe: Some(Subscribe {
            queue: "secret".into(),
            consumer_name: "payroll-worker".into(),
        }),
        credit: 1,
        ..Default::default()
    })
    .await
    .expect("send");
    let mut stream = payroll
        .clone()
        .consume(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("consume")
        .into_inner();
    let mut delivery = None;
    while delivery.is_none() {
        let frame = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("in time")
            .expect("healthy")
            .expect("open");
        delivery = frame.deliveries.into_iter().next();
    }
    let d = delivery.expect("delivered");
    assert!(d.lease_token.is_empty(), "settled on its stream: {d:?}");
    let colleague = as_client(&b, "colleague-0123456789abcdef").await.raw();
    use sluice_client::proto::SettleErrorCode::{Invalid, StaleLease};
    for (token, want) in [("", Invalid), ("0123456789abcdef", StaleLease)] {
        let refused = ack_with_token(&colleague, &d, token).await;
        assert_eq!(refused, [want as i32], "{token:?}");
    }
    eventually(DEADLINE, "the lease is still held", || {
        let out = as_token(&b, "ops-0123456789abcdef", &["--json", "stats", "secret"]);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .map(|v| v["stats"]["leased"] == 1)
            .unwrap_or(false)
    });
    // The holder settles it on its stream, as it always could.
    tx.send(ConsumeRequest {
        acks: vec![sluice_client::proto::AckItem {
            lease: Some(LeaseRef {
                task_id: d.task.as_ref().expect("task").id.clone(),
                attempt: d.attempt,
                lease_token: String::new(),
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
    .expect("send");
    eventually(DEADLINE, "the holder acked it", || {
        let out = as_token(&b, "ops-0123456789abcdef", &["--json", "stats", "secret"]);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .map(|v| v["stats"]["acked_total"] == 1)
            .unwrap_or(false)
    });

    // A task taken with Get carries its token: only a settle that quotes
    // it is accepted.
    payroll
        .clone()
        .enqueue(EnqueueRequest {
            queue: "secret".into(),
            tasks: vec![NewTask {
                payload: "salary of bob".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("enqueue");
    let got = colleague
        .clone()
        .get(sluice_client::proto::GetRequest {
            queue: "secret".into(),
            max_tasks: 1,
            wait_ms: 5000,
        })
        .await
        .expect("get")
        .into_inner()
        .deliveries
        .remove(0);
    assert_eq!(got.lease_token.len(), 16, "{got:?}");
    for (token, want) in [("", Invalid), ("fedcba9876543210", StaleLease)] {
        let refused = ack_with_token(&payroll, &got, token).await;
        assert_eq!(refused, [want as i32], "{token:?}");
    }
    let refused = ack_with_token(&colleague, &got, &got.lease_token).await;
    assert!(refused.is_empty(), "the holder of the token: {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_membership_takes_the_admin_of_every_queue() {
    use sluice_client::proto::{AddClusterMemberRequest, RemoveClusterMemberRequest};
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, GUARDED).expect("write");
    let b = Broker::start_on("127.0.0.1:0", &["--auth-file", &auth.display().to_string()]);
    let add = || AddClusterMemberRequest {
        node_id: 4,
        address: "127.0.0.1:1".into(),
    };
    let remove = || RemoveClusterMemberRequest { node_id: 2 };
    // An admin of some queues is not an admin of the broker.
    for token in ["a-admin-0123456789abcdef", "payroll-0123456789abcdef"] {
        let mut raw = as_client(&b, token).await.raw();
        assert_eq!(
            code(raw.add_cluster_member(add()).await),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(raw.remove_cluster_member(remove()).await),
            tonic::Code::PermissionDenied
        );
    }
    // The admin of "*" is let through, and told this broker runs alone.
    let mut ops = as_client(&b, "ops-0123456789abcdef").await.raw();
    assert_eq!(
        code(ops.add_cluster_member(add()).await),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(ops.remove_cluster_member(remove()).await),
        tonic::Code::FailedPrecondition
    );
}

/// Writes `text` as an auth file and starts a broker on it, expecting a
/// refusal: exit 2 with one `sluice-broker:` line saying why.
fn refused_auth_file(text: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, text).expect("write");
    let out = broker_refuses(&["--auth-file", &auth.display().to_string()]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("sluice-broker: "))
        .unwrap_or_else(|| panic!("no error line: {out:?}"))
        .to_owned();
    assert!(line.contains(&auth.display().to_string()), "{line}");
    line
}

#[test]
fn an_auth_file_with_a_secret_twice_stops_the_start() {
    // Before, the later entry silently won: an admin became a consumer.
    let line = refused_auth_file(
        r#"
[tokens.ops]
token = "same-0123456789abcdef"
admin = ["*"]

[tokens.worker]
token = "same-0123456789abcdef"
consume = ["billing"]
"#,
    );
    assert!(
        line.contains(
            "line 7: tokens.worker.token is the same secret as tokens.ops.token (line 3)"
        ),
        "{line}"
    );
    assert!(
        !line.contains("same-0123456789abcdef"),
        "secret shown: {line}"
    );
}

#[test]
fn an_auth_file_with_a_star_inside_a_pattern_stops_the_start() {
    let line = refused_auth_file(
        r#"
[tokens.ingest]
token = "ingest-0123456789abcdef"
produce = ["ord*ers"]
"#,
    );
    assert!(
        line.contains(r#"line 4: tokens.ingest.produce: pattern "ord*ers""#),
        "{line}"
    );
    assert!(line.contains("a prefix ending in *"), "{line}");
}

#[tokio::test]
async fn the_bearer_scheme_may_be_spelled_in_any_case() {
    use sluice_client::proto::ListQueuesRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, AUTH).expect("write");
    let b = Broker::start_on("127.0.0.1:0", &["--auth-file", &auth.display().to_string()]);
    // A client without a token of its own: the header is set by hand, as a
    // gRPC client in another language would.
    let client = sluice_client::Client::connect(&b.url())
        .await
        .expect("connect");
    let call = |value: String| {
        let mut raw = client.raw();
        async move {
            let mut req = tonic::Request::new(ListQueuesRequest {});
            req.metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
            raw.list_queues(req).await.map(|_| ()).map_err(|s| s.code())
        }
    };
    for scheme in ["Bearer", "bearer", "BEARER"] {
        assert_eq!(
            call(format!("{scheme} ops-0123456789abcdef")).await,
            Ok(()),
            "{scheme}"
        );
    }
    assert_eq!(
        call("bearer nope-0123456789abcdef".into()).await,
        Err(tonic::Code::Unauthenticated)
    );
    assert_eq!(
        call("Basic ops-0123456789abcdef".into()).await,
        Err(tonic::Code::Unauthenticated)
    );
}

const SCHEDULING: &str = r#"
[tokens.ops]
token = "ops-0123456789abcdef"
admin = ["*"]

[tokens.reports-admin]
token = "reports-admin-0123456789abcdef"
admin = ["reports.*"]

[tokens.ingest]
token = "ingest-0123456789abcdef"
produce = ["reports.*"]

[tokens.billing-reader]
token = "billing-reader-0123456789abcdef"
consume = ["billing"]
"#;

/// Names of the schedules ListSchedules shows `raw` (with `queue`, if
/// given), or its refusal.
async fn schedule_names(
    raw: &sluice_client::Raw,
    queue: &str,
) -> Result<Vec<String>, tonic::Status> {
    let answer = raw
        .clone()
        .list_schedules(sluice_client::proto::ListSchedulesRequest {
            queue: queue.into(),
            after: String::new(),
        })
        .await?;
    Ok(answer
        .into_inner()
        .schedules
        .into_iter()
        .filter_map(|s| s.spec.map(|s| s.name))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_take_the_admin_right_of_their_queue_and_hide_the_others() {
    use sluice_client::proto::{
        CreateScheduleRequest, DeleteScheduleRequest, PauseScheduleRequest, QueueOptions,
        ResumeScheduleRequest, ScheduleSpec, ScheduledTask,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("auth.toml");
    std::fs::write(&auth, SCHEDULING).expect("write");
    let b = Broker::start_on("127.0.0.1:0", &["--auth-file", &auth.display().to_string()]);
    let ops = as_client(&b, "ops-0123456789abcdef").await;
    for q in ["reports.daily", "billing"] {
        ops.create_queue(q, QueueOptions::default())
            .await
            .expect("create");
    }
    let spec = |name: &str, queue: &str| ScheduleSpec {
        name: name.into(),
        queue: queue.into(),
        every_ms: 3_600_000,
        task: Some(ScheduledTask {
            payload: "run".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let create = |name: &str, queue: &str| CreateScheduleRequest {
        schedule: Some(spec(name, queue)),
        paused: false,
    };
    let reports_admin = as_client(&b, "reports-admin-0123456789abcdef").await.raw();
    let ingest = as_client(&b, "ingest-0123456789abcdef").await.raw();
    let billing_reader = as_client(&b, "billing-reader-0123456789abcdef").await.raw();
    let mut ops_raw = ops.raw();

    // Creating takes the admin right on the queue: a token that may only
    // produce to it is refused, as it is for a queue it may not touch
    // at all or one that does not exist (which is not told).
    for queue in ["reports.daily", "billing", "reports.nowhere"] {
        assert_eq!(
            code(ingest.clone().create_schedule(create("mine", queue)).await),
            tonic::Code::PermissionDenied,
            "{queue}"
        );
    }
    assert_eq!(
        code(
            reports_admin
                .clone()
                .create_schedule(create("mine", "billing"))
                .await
        ),
        tonic::Code::PermissionDenied
    );
    reports_admin
        .clone()
        .create_schedule(create("daily", "reports.daily"))
        .await
        .expect("the queue's admin creates it");
    ops_raw
        .create_schedule(create("invoices", "billing"))
        .await
        .expect("created");

    // Delete, pause, resume: PERMISSION_DENIED to a token that may see
    // the schedule's queue but not administer it; NOT_FOUND, as for a
    // schedule that does not exist, to one that may not read it at all.
    let delete = |n: &str| DeleteScheduleRequest { name: n.into() };
    let pause = |n: &str| PauseScheduleRequest { name: n.into() };
    let resume = |n: &str| ResumeScheduleRequest { name: n.into() };
    let refusals = async |raw: &sluice_client::Raw, name: &str| {
        let mut raw = raw.clone();
        [
            raw.delete_schedule(delete(name)).await.map(|_| ()),
            raw.pause_schedule(pause(name)).await.map(|_| ()),
            raw.resume_schedule(resume(name)).await.map(|_| ()),
        ]
        .map(|r| r.expect_err("refused"))
    };
    for refused in refusals(&ingest, "daily").await {
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    let unknown = refusals(&ingest, "ghost").await;
    for raw in [&ingest, &reports_admin] {
        let hidden = refusals(raw, "invoices").await;
        for (hidden, unknown) in hidden.iter().zip(&unknown) {
            assert_eq!(hidden.code(), tonic::Code::NotFound, "{hidden:?}");
            assert_eq!(
                hidden.message().replace("invoices", "NAME"),
                unknown.message().replace("ghost", "NAME"),
                "told apart from an unknown schedule"
            );
            assert!(!hidden.message().contains("billing"), "{hidden:?}");
        }
    }
    // The CLI says so in one line.
    let out = as_token(
        &b,
        "ingest-0123456789abcdef",
        &["schedule", "pause", "invoices"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("NOT_FOUND"), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");

    // Nothing refused changed anything.
    let all = schedule_names(&ops_raw, "").await.expect("listed");
    assert_eq!(all, ["daily", "invoices"]);
    let listed = ops_raw
        .list_schedules(sluice_client::proto::ListSchedulesRequest::default())
        .await
        .expect("listed")
        .into_inner();
    assert!(listed.schedules.iter().all(|s| !s.paused), "{listed:?}");

    // Listing shows the schedules of the queues a token may read; asked
    // for a queue it may not, PERMISSION_DENIED.
    assert_eq!(
        schedule_names(&ingest, "").await.expect("listed"),
        ["daily"]
    );
    assert_eq!(
        schedule_names(&ingest, "reports.daily")
            .await
            .expect("listed"),
        ["daily"]
    );
    assert_eq!(
        schedule_names(&billing_reader, "").await.expect("listed"),
        ["invoices"]
    );
    assert_eq!(
        code(schedule_names(&ingest, "billing").await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(schedule_names(&billing_reader, "reports.daily").await),
        tonic::Code::PermissionDenied
    );

    // The queue's admin runs its own schedule.
    let mut admin = reports_admin.clone();
    let paused = admin.pause_schedule(pause("daily")).await.expect("paused");
    assert!(paused.into_inner().schedule.is_some_and(|s| s.paused));
    let resumed = admin
        .resume_schedule(resume("daily"))
        .await
        .expect("resumed");
    assert!(resumed.into_inner().schedule.is_some_and(|s| !s.paused));
    admin
        .delete_schedule(delete("daily"))
        .await
        .expect("deleted");
    assert_eq!(
        schedule_names(&ops_raw, "").await.expect("listed"),
        ["invoices"]
    );

    // Without a token, none of the five is answered.
    let anon = sluice_client::Client::connect(&b.url())
        .await
        .expect("connect")
        .raw();
    let mut a = anon.clone();
    for status in [
        a.create_schedule(create("x", "billing")).await.map(|_| ()),
        schedule_names(&anon, "").await.map(|_| ()),
        a.delete_schedule(delete("invoices")).await.map(|_| ()),
        a.pause_schedule(pause("invoices")).await.map(|_| ()),
        a.resume_schedule(resume("invoices")).await.map(|_| ()),
    ] {
        assert_eq!(code(status), tonic::Code::Unauthenticated);
    }
}
