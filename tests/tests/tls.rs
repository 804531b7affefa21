//! TLS: the broker serves https with its certificate, clients trust it with
//! --ca-cert, with --tls-client-ca only clients with a certificate from
//! that CA get in, and a key that is not the certificate's stops the start.

use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use sluice_tests::{Broker, DEADLINE, broker_refuses, cli, eventually, num};

struct Pki {
    ca: Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).expect("ca");
        Pki { ca, ca_key }
    }

    /// A leaf for `names`, for servers or clients; writes cert and key.
    fn leaf(&self, dir: &Path, name: &str, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("params");
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![purpose];
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("leaf");
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c.display().to_string(), k.display().to_string())
    }

    fn write_ca(&self, dir: &Path) -> String {
        let p = dir.join("ca.pem");
        std::fs::write(&p, self.ca.pem()).expect("write");
        p.display().to_string()
    }
}

#[test]
fn clients_reach_a_tls_broker_when_they_trust_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let ca = pki.write_ca(dir.path());
    let (cert, key) = pki.leaf(dir.path(), "server", ExtendedKeyUsagePurpose::ServerAuth);
    let b = Broker::start_on("127.0.0.1:0", &["--tls-cert", &cert, "--tls-key", &key]);
    let url = format!("https://{}", b.addr);

    let ok = |args: &[&str]| {
        let mut all = vec!["--ca-cert", &ca];
        all.extend_from_slice(args);
        let out = cli(&url, &all, None);
        assert_eq!(out.code, 0, "sluice {args:?}: {out:?}");
        out.stdout
    };
    ok(&["queue", "create", "q"]);
    ok(&["enqueue", "q", "over tls"]);
    assert_eq!(ok(&["get", "q"]), "over tls\n");

    // Not trusting the CA: a one-line refusal, nothing done.
    let out = cli(&url, &["queue", "list"], None);
    assert_eq!(out.code, 69, "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
    // Plain http to a TLS broker gets nowhere either.
    assert_ne!(cli(&b.url(), &["queue", "list"], None).code, 0);

    // A worker over TLS.
    ok(&["enqueue", "q", "for the worker"]);
    let mut c = std::process::Command::new(sluice_tests::bin("sluice-worker"));
    c.args([
        "--broker",
        &url,
        "--ca-cert",
        &ca,
        "--queue",
        "q",
        "--",
        "cat",
    ]);
    let _w = sluice_tests::Proc::start("tls worker", &mut c);
    eventually(DEADLINE, "worker acked over TLS", || {
        let out = cli(&url, &["--ca-cert", &ca, "--json", "stats", "q"], None);
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .map(|v| num(&v, &["stats", "acked_total"]) == 2)
            .unwrap_or(false)
    });
}

#[test]
fn mutual_tls_lets_in_only_clients_with_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let ca = pki.write_ca(dir.path());
    let (cert, key) = pki.leaf(dir.path(), "server", ExtendedKeyUsagePurpose::ServerAuth);
    let (ccert, ckey) = pki.leaf(dir.path(), "client", ExtendedKeyUsagePurpose::ClientAuth);
    let b = Broker::start_on(
        "127.0.0.1:0",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    );
    let url = format!("https://{}", b.addr);
    let without = cli(&url, &["--ca-cert", &ca, "queue", "list"], None);
    assert_ne!(without.code, 0, "{without:?}");
    let with = cli(
        &url,
        &[
            "--ca-cert",
            &ca,
            "--client-cert",
            &ccert,
            "--client-key",
            &ckey,
            "queue",
            "create",
            "q",
        ],
        None,
    );
    assert_eq!(with.code, 0, "{with:?}");
}

#[test]
fn a_key_that_is_not_the_certificates_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let (cert, _) = pki.leaf(dir.path(), "server", ExtendedKeyUsagePurpose::ServerAuth);
    let (_, other_key) = pki.leaf(dir.path(), "other", ExtendedKeyUsagePurpose::ServerAuth);
    // Before, the broker printed `listening on`, then stopped with a bare
    // "transport error" (exit 1) naming neither file.
    let out = broker_refuses(&["--tls-cert", &cert, "--tls-key", &other_key]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let want = format!("sluice-broker: --tls-key {other_key} does not match --tls-cert {cert}");
    assert!(out.stderr.contains(&want), "{out:?}");
}
