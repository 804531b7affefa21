//! The write-ahead log's content: what durable queues log ([`codec`], with
//! the hot record written by hand in `encode`) and how a restart reads it
//! back ([`open`]); and, for a cluster, what its Raft log proposes and its
//! snapshots hold ([`replicated`]). The log itself — segments, checksums,
//! group commit — is `crate::storage`.

pub mod codec;
mod encode;
pub mod open;
pub mod replicated;

pub use codec::*;
