//! Tokens: no or unknown token is UNAUTHENTICATED, a known one without the
//! right is PERMISSION_DENIED, neither tells whether a queue exists, and
//! the CLI and worker send tokens from a file or the environment.

use sluice_tests::{Broker, DEADLINE, bin, cli, eventually};

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
