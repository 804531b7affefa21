//! Authentication and authorisation with tokens from a file.
//!
//! ```toml
//! # --auth-file sluice-auth.toml
//! [tokens.ops]
//! token = "long-random-secret"
//! admin = ["*"]            # create, delete, purge queues (and everything else)
//! produce = ["*"]
//! consume = ["*"]
//!
//! [tokens.ingest]
//! token = "another-secret"
//! produce = ["orders.*"]   # patterns: exact names, or a prefix ending in *
//! ```
//!
//! A file the broker cannot take at its word stops the start, naming the
//! entry and line: two entries with one secret (one of them would silently
//! get the other's rights), or a pattern that is neither a queue name nor a
//! prefix ending in `*` (it would silently match nothing).
//!
//! The token travels as `authorization: Bearer <token>`. A tower layer in
//! front of the service resolves it (compared in constant time, never
//! logged): none or an unknown one is UNAUTHENTICATED before any handler
//! runs. What the token may do to which queue is checked by the service
//! with [`Access::require`], before it looks the queue up, so a refusal
//! (PERMISSION_DENIED) never tells whether the queue exists.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Deserialize;
use subtle::ConstantTimeEq;
use toml::Spanned;
use tonic::Status;

use crate::api::validate;

/// What a request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Create, delete and purge queues.
    Admin,
    /// Enqueue, publish, seal jobs.
    Produce,
    /// Consume, get, settle.
    Consume,
    /// Read stats, join, watch jobs: any role on the queue.
    Read,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: BTreeMap<String, TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    // Spanned: errors name the line at fault.
    token: Spanned<String>,
    #[serde(default)]
    admin: Vec<Spanned<String>>,
    #[serde(default)]
    produce: Vec<Spanned<String>>,
    #[serde(default)]
    consume: Vec<Spanned<String>>,
}

/// One token's rights.
#[derive(Debug)]
pub struct Grant {
    /// The token's name (logged; the token itself never is).
    pub name: String,
    secret: Vec<u8>,
    admin: Vec<String>,
    produce: Vec<String>,
    consume: Vec<String>,
}

/// Why `pattern` is not a queue name or a prefix ending in `*`. `matches`
/// reads a `*` only at the end, so one elsewhere would be taken literally
/// and match no queue: the operator meant something else.
fn check_pattern(pattern: &str) -> Result<(), &'static str> {
    let (fixed, prefix) = match pattern.strip_suffix('*') {
        Some(fixed) => (fixed, true),
        None => (pattern, false),
    };
    if fixed.contains('*') {
        return Err("has a * before its end");
    }
    if fixed.is_empty() {
        return if prefix { Ok(()) } else { Err("is empty") };
    }
    if !validate::is_queue_name(fixed) {
        return Err("has characters a queue name cannot have, or is too long");
    }
    Ok(())
}

fn matches(patterns: &[String], queue: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => queue.starts_with(prefix),
        None => p == queue,
    })
}

impl Grant {
    fn allows(&self, role: Role, queue: &str) -> bool {
        let admin = matches(&self.admin, queue);
        match role {
            Role::Admin => admin,
            Role::Produce => admin || matches(&self.produce, queue),
            Role::Consume => admin || matches(&self.consume, queue),
            Role::Read => admin || matches(&self.produce, queue) || matches(&self.consume, queue),
        }
    }
}

/// The tokens of an auth file.
#[derive(Debug, Clone)]
pub struct Tokens {
    grants: Vec<Arc<Grant>>,
}

impl Tokens {
    /// Reads and checks an auth file; errors name the file, the entry, the
    /// line and what is wrong.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read auth file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("auth file {}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Tokens, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let line = |span: Range<usize>| {
            1 + text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
        };
        // Which entry holds each secret: a repeated one would let whichever
        // entry `find` meets last decide the rights, silently.
        let mut holders: HashMap<&str, (&str, usize)> = HashMap::new();
        for (name, t) in &file.tokens {
            let at = line(t.token.span());
            if t.token.get_ref().len() < 16 {
                return Err(format!(
                    "line {at}: tokens.{name}.token is shorter than 16 characters"
                ));
            }
            if let Some((other, other_at)) = holders.insert(t.token.get_ref(), (name, at)) {
                let ((a, a_at), (b, b_at)) = if other_at <= at {
                    ((other, other_at), (name.as_str(), at))
                } else {
                    ((name.as_str(), at), (other, other_at))
                };
                return Err(format!(
                    "line {b_at}: tokens.{b}.token is the same secret as tokens.{a}.token \
                     (line {a_at}); give each entry its own token"
                ));
            }
            for (role, patterns) in [
                ("admin", &t.admin),
                ("produce", &t.produce),
                ("consume", &t.consume),
            ] {
                for p in patterns {
                    check_pattern(p.get_ref()).map_err(|why| {
                        format!(
                            "line {}: tokens.{name}.{role}: pattern {:?} {why}; a pattern \
                             is an exact queue name (\"orders\") or a prefix ending in * \
                             (\"orders.*\", or \"*\" for every queue), of A-Z a-z 0-9 . _ -",
                            line(p.span()),
                            p.get_ref()
                        )
                    })?;
                }
            }
        }
        let plain = |v: Vec<Spanned<String>>| v.into_iter().map(Spanned::into_inner).collect();
        let grants = file
            .tokens
            .into_iter()
            .map(|(name, t)| {
                Arc::new(Grant {
                    name,
                    secret: t.token.into_inner().into_bytes(),
                    admin: plain(t.admin),
                    produce: plain(t.produce),
                    consume: plain(t.consume),
                })
            })
            .collect();
        Ok(Tokens { grants })
    }

    /// What `token` may do; None for a token the file does not name.
    pub fn check(&self, token: &str) -> Option<Access> {
        self.find(token.as_bytes()).map(Access::Granted)
    }

    /// The grant of a token, comparing every known token in constant time.
    fn find(&self, presented: &[u8]) -> Option<Arc<Grant>> {
        let mut found = None;
        for g in &self.grants {
            // Lengths differ: not equal, and ct_eq on unequal lengths is
            // false without looking; the loop still visits every grant.
            if bool::from(g.secret.as_slice().ct_eq(presented)) {
                found = Some(Arc::clone(g));
            }
        }
        found
    }
}

/// Who is asking: put in each request's extensions by [`AuthLayer`].
#[derive(Debug, Clone)]
pub enum Access {
    /// The broker runs without an auth file.
    Open,
    Granted(Arc<Grant>),
}

impl Access {
    /// Checks that this request may act as `role` on `queue`.
    pub fn require(&self, role: Role, queue: &str) -> Result<(), Status> {
        match self {
            Access::Open => Ok(()),
            Access::Granted(g) if g.allows(role, queue) => Ok(()),
            Access::Granted(g) => Err(Status::permission_denied(format!(
                "token {:?} may not {} queue {queue:?}",
                g.name,
                match role {
                    Role::Admin => "administer",
                    Role::Produce => "produce to",
                    Role::Consume => "consume from",
                    Role::Read => "read",
                }
            ))),
        }
    }

    /// For requests that name no queue (ListQueues): any valid token.
    pub fn name(&self) -> Option<&str> {
        match self {
            Access::Open => None,
            Access::Granted(g) => Some(&g.name),
        }
    }
}

/// The access a tonic request carries (Open when the layer did not run,
/// which only happens in tests that build the service directly).
pub fn access<T>(req: &tonic::Request<T>) -> Access {
    req.extensions()
        .get::<Access>()
        .cloned()
        .unwrap_or(Access::Open)
}

/// The token of an `authorization: Bearer <token>` value. The scheme is
/// matched in any case: HTTP auth schemes are case-insensitive (RFC 7235
/// section 2.1), and some clients send `bearer`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Tower layer: authenticates every request before the service sees it.
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Option<Arc<Tokens>>,
}

impl AuthLayer {
    pub fn new(tokens: Option<Tokens>) -> Self {
        AuthLayer {
            tokens: tokens.map(Arc::new),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let Some(tokens) = &self.tokens else {
            req.extensions_mut().insert(Access::Open);
            return Box::pin(self.inner.call(req));
        };
        // Health checks and reflection stay open, as load balancers and
        // grpcurl's `list` expect; the sluice API needs a token. Members'
        // Raft calls prove themselves with the cluster secret instead
        // (`cluster::service`).
        let path = req.uri().path();
        if !path.starts_with("/sluice.") || path.starts_with("/sluice.cluster.") {
            req.extensions_mut().insert(Access::Open);
            return Box::pin(self.inner.call(req));
        }
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .map(|t| t.as_bytes().to_vec());
        match presented.and_then(|t| tokens.find(&t)) {
            Some(grant) => {
                req.extensions_mut().insert(Access::Granted(grant));
                Box::pin(self.inner.call(req))
            }
            None => {
                let status = Status::unauthenticated(
                    "missing or unknown token (send `authorization: Bearer <token>`)",
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Who is calling, as far as the network says: for consumer lists and
/// logs, never for rights.
pub fn peer<T>(req: &tonic::Request<T>) -> String {
    req.remote_addr().map(|a| a.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(admin: &[&str], produce: &[&str], consume: &[&str]) -> Grant {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Grant {
            name: "t".into(),
            secret: b"0123456789abcdef".to_vec(),
            admin: v(admin),
            produce: v(produce),
            consume: v(consume),
        }
    }

    #[test]
    fn roles_and_patterns() {
        let g = grant(&[], &["orders.*"], &["orders.eu"]);
        assert!(g.allows(Role::Produce, "orders.us"));
        assert!(!g.allows(Role::Produce, "billing"));
        assert!(g.allows(Role::Consume, "orders.eu"));
        assert!(!g.allows(Role::Consume, "orders.us"));
        assert!(!g.allows(Role::Admin, "orders.eu"));
        assert!(g.allows(Role::Read, "orders.us"));
        let admin = grant(&["*"], &[], &[]);
        assert!(admin.allows(Role::Consume, "anything"));
    }

    #[test]
    fn tokens_are_found_only_exactly() {
        let t = Tokens {
            grants: vec![Arc::new(grant(&["*"], &[], &[]))],
        };
        assert!(t.find(b"0123456789abcdef").is_some());
        assert!(t.find(b"0123456789abcde").is_none());
        assert!(t.find(b"").is_none());
    }

    #[test]
    fn a_secret_listed_twice_is_refused_naming_both_entries_and_lines() {
        let text = r#"
[tokens.ops]
token = "0123456789abcdef"
admin = ["*"]

[tokens.billing]
token = "0123456789abcdef"
consume = ["billing"]
"#;
        let e = Tokens::parse(text).expect_err("duplicate secret");
        assert_eq!(
            e,
            "line 7: tokens.billing.token is the same secret as tokens.ops.token (line 3); \
             give each entry its own token"
        );
        assert!(!e.contains("0123456789abcdef"), "the secret is never shown");
    }

    #[test]
    fn patterns_are_queue_names_or_prefixes_ending_in_a_star() {
        for good in ["*", "orders", "orders.*", "a-b_c.9*", "o*"] {
            assert_eq!(check_pattern(good), Ok(()), "{good:?}");
        }
        for bad in [
            "ord*ers",
            "*orders",
            "**",
            "orders.**",
            "",
            "orders/*",
            "a b",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad:?}");
        }
        assert!(check_pattern(&"x".repeat(129)).is_err());

        let text = "[tokens.ingest]\ntoken = \"0123456789abcdef\"\nproduce = [\n  \"orders.*\",\n  \"ord*ers\",\n]\n";
        let e = Tokens::parse(text).expect_err("bad pattern");
        assert!(
            e.starts_with(
                "line 5: tokens.ingest.produce: pattern \"ord*ers\" has a * before its end;"
            ),
            "{e}"
        );
        assert!(e.contains("a prefix ending in *"), "{e}");
    }

    #[test]
    fn a_good_file_loads() {
        let text = r#"
[tokens.ops]
token = "0123456789abcdef"
admin = ["*"]

[tokens.ingest]
token = "fedcba9876543210"
produce = ["orders.*", "billing"]
"#;
        let t = Tokens::parse(text).expect("valid");
        let ingest = t.find(b"fedcba9876543210").expect("found");
        assert_eq!(ingest.name, "ingest");
        assert!(ingest.allows(Role::Produce, "orders.eu"));
        assert!(ingest.allows(Role::Produce, "billing"));
        assert!(!ingest.allows(Role::Produce, "billing.eu"));
    }

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for v in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR   tok "] {
            assert_eq!(bearer_token(v), Some("tok"), "{v:?}");
        }
        for v in ["Basic tok", "Bearertok", "Bearer", "Bearer ", "tok"] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
