//! Who is looking at the dashboard. With `--auth-file`, a visitor signs
//! in with a token, kept in an HttpOnly, SameSite=Strict cookie (scripts
//! may send `Authorization: Bearer` instead); nothing is shown without
//! one. The token's rights are the gRPC API's: it sees the queues it may
//! read and acts on those it administers. Without an auth file the
//! dashboard is open, as the broker is.

use axum::http::HeaderMap;

use crate::api::auth::{Access, Role};

/// The cookie that holds the token.
pub const COOKIE: &str = "sluice_token";

/// A visitor's rights, or why they have none.
pub fn access(tokens: Option<&crate::api::auth::Tokens>, headers: &HeaderMap) -> Option<Access> {
    let Some(tokens) = tokens else {
        return Some(Access::Open);
    };
    let presented = bearer(headers).or_else(|| cookie(headers))?;
    tokens.check(&presented)
}

/// Whether `access` may act as `role` on `queue`.
pub fn may(access: &Access, role: Role, queue: &str) -> bool {
    access.require(role, queue).is_ok()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then(|| unescape(v))
        })
        .flatten()
}

/// The `Set-Cookie` value that keeps `token` for the session.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        escape(token)
    )
}

/// The `Set-Cookie` value that forgets it.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Percent-encodes what a cookie value may not hold (tokens are any
/// string of the auth file).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_survives_its_cookie() {
        for t in ["plain-0123456789abcdef", "with space;semi=colon%é"] {
            let set = set_cookie(t);
            let value = set.split(';').next().unwrap_or_default().to_owned();
            let mut h = HeaderMap::new();
            h.insert(
                axum::http::header::COOKIE,
                format!("other=1; {value}").parse().expect("header"),
            );
            assert_eq!(cookie(&h).as_deref(), Some(t));
        }
    }
}
