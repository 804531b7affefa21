//! Lease tokens: the secret part of a lease that proves its holder
//! received the delivery.
//!
//! A lease is `(task id, attempt)`, and both are guessable (ids count up
//! from the boot time). So every delivery also carries a token: a MAC of
//! the pair under a key drawn at random when the broker starts. A settle
//! that quotes the token may end the lease from anywhere (a unary Ack
//! after Get, another connection); one that does not is accepted only on
//! the Consume stream the delivery went to. Nothing is stored per lease,
//! and leases end with the process anyway, so a new key per boot costs
//! nothing.

use siphasher::sip::SipHasher24;
use subtle::ConstantTimeEq;

use crate::engine::TaskId;

/// The broker's lease-token key.
#[derive(Clone)]
pub struct LeaseKey {
    /// SipHash-2-4 keyed once; each token hashes from a copy of it.
    mac: SipHasher24,
}

impl std::fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseKey(..)")
    }
}

impl LeaseKey {
    /// A fresh random key from the OS. Should the OS have none to give,
    /// std's hasher seeds (themselves drawn from the OS once per thread)
    /// stand in: still unknown to clients.
    pub fn random() -> Self {
        Self::from_bytes(&Self::random_bytes())
    }

    /// 16 random bytes for a key (a cluster's, proposed once by its first
    /// leader so that every member verifies the same tokens).
    pub fn random_bytes() -> [u8; 16] {
        let mut key = [0u8; 16];
        if getrandom::getrandom(&mut key).is_err() {
            use std::hash::BuildHasher;
            let state = std::collections::hash_map::RandomState::new();
            key[..8].copy_from_slice(&state.hash_one(1u8).to_le_bytes());
            key[8..].copy_from_slice(&state.hash_one(2u8).to_le_bytes());
        }
        key
    }

    /// The key of these bytes.
    pub fn from_bytes(key: &[u8; 16]) -> Self {
        LeaseKey {
            mac: SipHasher24::new_with_key(key),
        }
    }

    /// The token of one delivery: SipHash-2-4, a MAC built for short
    /// inputs, as 16 hex digits. Runs for every delivery: one call over
    /// the 12 bytes, not a streaming hasher.
    pub fn token(&self, id: TaskId, attempt: u32) -> String {
        let mut msg = [0u8; 12];
        msg[..8].copy_from_slice(&id.0.to_le_bytes());
        msg[8..].copy_from_slice(&attempt.to_le_bytes());
        crate::ids::hex64(self.mac.hash(&msg))
    }

    /// Whether `token` is the token of this delivery (constant time).
    pub fn verify(&self, id: TaskId, attempt: u32, token: &str) -> bool {
        bool::from(self.token(id, attempt).as_bytes().ct_eq(token.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_per_delivery_and_per_key() {
        let k = LeaseKey::random();
        let t = k.token(TaskId(7), 1);
        assert_eq!(t.len(), 16);
        assert!(k.verify(TaskId(7), 1, &t));
        assert!(!k.verify(TaskId(7), 2, &t), "another attempt");
        assert!(!k.verify(TaskId(8), 1, &t), "another task");
        assert!(!k.verify(TaskId(7), 1, ""), "no token");
        let other = LeaseKey::random();
        assert!(!other.verify(TaskId(7), 1, &t), "another broker run");
    }
}
