//! The broker's TLS settings from `--tls-cert`, `--tls-key` and
//! `--tls-client-ca`, read and checked at start so a bad file is one clear
//! line before the broker says it is listening, not a failure later.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The TLS configuration tonic serves, from the files named on the
/// command line; errors name the flag and the file.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, String> {
    let read = |p: &Path, flag: &str| {
        std::fs::read(p).map_err(|e| format!("cannot read {flag} {}: {e}", p.display()))
    };
    let cert_pem = read(cert, "--tls-cert")?;
    let key_pem = read(key, "--tls-key")?;
    check_key_matches(&cert_pem, &key_pem, cert, key)?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
    if let Some(ca) = client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?));
    }
    Ok(config)
}

/// Checks that `key_pem` is the private key of the first certificate in
/// `cert_pem`. tonic only builds its rustls config once serving begins, so
/// without this a mismatched pair got as far as `listening on` and then
/// stopped with a bare "transport error". The check is rustls's own
/// (`CertifiedKey::keys_match`, comparing the public keys), with the ring
/// provider tonic's `tls-ring` feature serves with.
fn check_key_matches(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<(), String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: not a PEM certificate: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("--tls-key {}: no PEM private key in it: {e}", key.display()))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("--tls-key {}: unusable private key: {e}", key.display()))?;
    match CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) => Ok(()),
        // A key that cannot say its public key: rustls serves it unchecked
        // too, and a mismatch then shows at the first handshake.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(format!(
                "--tls-key {} does not match --tls-cert {}: the key is not the certificate's \
                 private key",
                key.display(),
                cert.display()
            ))
        }
        Err(e) => Err(format!(
            "--tls-cert {} with --tls-key {}: {e}",
            cert.display(),
            key.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_key_must_belong_to_its_certificate() {
        let (cert, key) = pair();
        let (_, other_key) = pair();
        let (c, k) = (Path::new("c.pem"), Path::new("k.pem"));
        assert_eq!(
            check_key_matches(cert.as_bytes(), key.as_bytes(), c, k),
            Ok(())
        );
        assert_eq!(
            check_key_matches(cert.as_bytes(), other_key.as_bytes(), c, k),
            Err(
                "--tls-key k.pem does not match --tls-cert c.pem: the key is not the \
                 certificate's private key"
                    .to_owned()
            )
        );
        let e = check_key_matches(key.as_bytes(), key.as_bytes(), c, k).expect_err("no cert");
        assert!(e.starts_with("--tls-cert c.pem: no certificate"), "{e}");
        let e = check_key_matches(cert.as_bytes(), cert.as_bytes(), c, k).expect_err("no key");
        assert!(e.starts_with("--tls-key k.pem: no PEM private key"), "{e}");
    }
}
