//! The hot record, written by hand: what one engine call changed in a
//! durable queue (`Changes`), or in several (`Batch`).
//!
//! Every durable enqueue, delivery and ack writes one. Built through
//! prost's derived messages, each costs owned copies of every field and a
//! length computation per nesting level (four levels: record, queue,
//! change, task), about a fifth of a durable broker's work. This writes
//! the same protobuf bytes straight from the engine's [`Change`]s with
//! each length computed once. The reading side stays prost's: the test
//! below checks the two agree on every shape of change.

use bytes::Bytes;
use prost::encoding::encoded_len_varint;

use crate::engine::{Change, Headers};

/// Wire type of a length-delimited field.
const LEN: u64 = 2;

/// The record is built in a Vec sized exactly up front: pushes never
/// reallocate, and the Vec becomes the Bytes without a copy.
type Buf = Vec<u8>;

fn encode_varint(mut v: u64, buf: &mut Buf) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(field: u64, wire: u64) -> u64 {
    (field << 3) | wire
}

/// A varint field, skipped when 0 (proto3's default, as prost does).
fn varint_len(field: u64, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        encoded_len_varint(key(field, 0)) + encoded_len_varint(v)
    }
}

fn put_varint(buf: &mut Buf, field: u64, v: u64) {
    if v != 0 {
        encode_varint(key(field, 0), buf);
        encode_varint(v, buf);
    }
}

/// An int32 goes on the wire sign-extended to 64 bits.
fn int32(v: i32) -> u64 {
    i64::from(v) as u64
}

/// A length-delimited field of `len` bytes, with its key and length.
fn delimited_len(field: u64, len: usize) -> usize {
    encoded_len_varint(key(field, LEN)) + encoded_len_varint(len as u64) + len
}

fn put_delimited_head(buf: &mut Buf, field: u64, len: usize) {
    encode_varint(key(field, LEN), buf);
    encode_varint(len as u64, buf);
}

/// A bytes or string field, skipped when empty.
fn bytes_len(field: u64, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        delimited_len(field, b.len())
    }
}

fn put_bytes(buf: &mut Buf, field: u64, b: &[u8]) {
    if !b.is_empty() {
        put_delimited_head(buf, field, b.len());
        buf.extend_from_slice(b);
    }
}

/// One map entry's body: key (1) and value (2), each skipped when empty.
fn entry_len(k: &str, v: &str) -> usize {
    bytes_len(1, k.as_bytes()) + bytes_len(2, v.as_bytes())
}

fn headers_len(h: &Headers) -> usize {
    h.as_ref().map_or(0, |m| {
        m.iter()
            .map(|(k, v)| delimited_len(3, entry_len(k, v)))
            .sum()
    })
}

/// The StoredTask message's body.
fn stored_len(c: &Change) -> usize {
    match c {
        Change::Stored {
            id,
            body,
            priority,
            due,
            attempt,
            key,
            job,
            group,
        } => {
            varint_len(1, id.0)
                + bytes_len(2, &body.payload)
                + headers_len(&body.headers)
                + varint_len(4, int32(*priority))
                + varint_len(5, *due)
                + varint_len(6, body.enqueued_at)
                + varint_len(7, u64::from(*attempt))
                + bytes_len(8, key.as_deref().unwrap_or_default().as_bytes())
                + bytes_len(9, job.as_deref().unwrap_or_default().as_bytes())
                + bytes_len(10, group.as_deref().unwrap_or_default().as_bytes())
        }
        Change::Attempt { id, attempt } => varint_len(1, id.0) + varint_len(2, u64::from(*attempt)),
        Change::Requeued { id, priority, due } => {
            varint_len(1, id.0) + varint_len(2, int32(*priority)) + varint_len(3, *due)
        }
        Change::Removed { .. } => 0,
        Change::Throttled { group, until } => {
            group.as_deref().map_or(0, |g| delimited_len(1, g.len())) + varint_len(2, *until)
        }
    }
}

/// A ChangeMsg's body: its one field.
fn change_len(c: &Change) -> usize {
    match c {
        Change::Stored { .. } => delimited_len(1, stored_len(c)),
        Change::Attempt { .. } => delimited_len(2, stored_len(c)),
        Change::Requeued { .. } => delimited_len(3, stored_len(c)),
        // A oneof scalar is written even when 0.
        Change::Removed { id } => encoded_len_varint(key(4, 0)) + encoded_len_varint(id.0),
        Change::Throttled { .. } => delimited_len(5, stored_len(c)),
    }
}

fn put_change(buf: &mut Buf, c: &Change) {
    match c {
        Change::Stored {
            id,
            body,
            priority,
            due,
            attempt,
            key,
            job,
            group,
        } => {
            put_delimited_head(buf, 1, stored_len(c));
            put_varint(buf, 1, id.0);
            put_bytes(buf, 2, &body.payload);
            if let Some(m) = &body.headers {
                for (k, v) in m.iter() {
                    put_delimited_head(buf, 3, entry_len(k, v));
                    put_bytes(buf, 1, k.as_bytes());
                    put_bytes(buf, 2, v.as_bytes());
                }
            }
            put_varint(buf, 4, int32(*priority));
            put_varint(buf, 5, *due);
            put_varint(buf, 6, body.enqueued_at);
            put_varint(buf, 7, u64::from(*attempt));
            put_bytes(buf, 8, key.as_deref().unwrap_or_default().as_bytes());
            put_bytes(buf, 9, job.as_deref().unwrap_or_default().as_bytes());
            put_bytes(buf, 10, group.as_deref().unwrap_or_default().as_bytes());
        }
        Change::Attempt { id, attempt } => {
            put_delimited_head(buf, 2, stored_len(c));
            put_varint(buf, 1, id.0);
            put_varint(buf, 2, u64::from(*attempt));
        }
        Change::Requeued { id, priority, due } => {
            put_delimited_head(buf, 3, stored_len(c));
            put_varint(buf, 1, id.0);
            put_varint(buf, 2, int32(*priority));
            put_varint(buf, 3, *due);
        }
        Change::Removed { id } => {
            encode_varint(key(4, 0), buf);
            encode_varint(id.0, buf);
        }
        Change::Throttled { group, until } => {
            put_delimited_head(buf, 5, stored_len(c));
            // An optional string is written when set, even empty.
            if let Some(g) = group {
                put_delimited_head(buf, 1, g.len());
                buf.extend_from_slice(g.as_bytes());
            }
            put_varint(buf, 2, *until);
        }
    }
}

/// A QueueChanges message's body. (Lengths are computed again when
/// writing: cheaper than keeping them in an allocation.)
fn queue_len(queue: &str, changes: &[Change]) -> usize {
    bytes_len(1, queue.as_bytes())
        + changes
            .iter()
            .map(|c| delimited_len(2, change_len(c)))
            .sum::<usize>()
}

fn put_queue(buf: &mut Buf, queue: &str, changes: &[Change]) {
    put_bytes(buf, 1, queue.as_bytes());
    for c in changes {
        put_delimited_head(buf, 2, change_len(c));
        put_change(buf, c);
    }
}

/// The record of changes to one or more queues: `Changes` for one (field
/// 3 of Record), `Batch` for several (field 5: replayed all or none).
pub fn changes_record(parts: &[(&str, &[Change])]) -> Bytes {
    let (field, body) = match parts {
        [(queue, changes)] => (3, queue_len(queue, changes)),
        many => (
            5,
            many.iter()
                .map(|(q, c)| delimited_len(1, queue_len(q, c)))
                .sum(),
        ),
    };
    let mut buf = Vec::with_capacity(delimited_len(field, body));
    put_delimited_head(&mut buf, field, body);
    for (queue, changes) in parts {
        if field == 5 {
            put_delimited_head(&mut buf, 1, queue_len(queue, changes));
        }
        put_queue(&mut buf, queue, changes);
    }
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::engine::{TaskBody, TaskId};

    fn change() -> impl Strategy<Value = Change> {
        let text = || proptest::option::of("[a-z]{0,3}");
        prop_oneof![
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::hash_map("[a-z]{0,3}", "[a-z]{0,3}", 0..3),
                any::<i32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                (text(), text(), text()),
            )
                .prop_map(
                    |(id, payload, headers, priority, due, at, attempt, (key, job, group))| {
                        Change::Stored {
                            id: TaskId(id),
                            body: TaskBody {
                                payload: payload.into(),
                                headers: (!headers.is_empty()).then(|| {
                                    Box::new(headers.into_iter().collect::<HashMap<_, _>>())
                                }),
                                enqueued_at: at,
                            },
                            priority,
                            due,
                            attempt,
                            key: key.map(Into::into),
                            job: job.map(Into::into),
                            group: group.map(Into::into),
                        }
                    }
                ),
            (any::<u64>(), any::<u32>()).prop_map(|(id, attempt)| Change::Attempt {
                id: TaskId(id),
                attempt
            }),
            (any::<u64>(), any::<i32>(), any::<u64>()).prop_map(|(id, priority, due)| {
                Change::Requeued {
                    id: TaskId(id),
                    priority,
                    due,
                }
            }),
            any::<u64>().prop_map(|id| Change::Removed { id: TaskId(id) }),
            (text(), any::<u64>()).prop_map(|(group, until)| Change::Throttled {
                group: group.map(Into::into),
                until,
            }),
        ]
    }

    proptest! {
        #[test]
        fn decodes_as_what_prost_would_have_written(
            parts in proptest::collection::vec(
                ("[a-z.]{1,5}", proptest::collection::vec(change(), 0..6)),
                1..4,
            )
        ) {
            let borrowed: Vec<(&str, &[Change])> =
                parts.iter().map(|(q, c)| (q.as_str(), c.as_slice())).collect();
            let ours = crate::wal::codec::Record::decode(changes_record(&borrowed))
                .expect("decodes");
            let theirs = crate::wal::codec::Record::decode(crate::wal::codec::prost_batch(&borrowed))
                .expect("decodes");
            prop_assert_eq!(ours, theirs);
        }
    }
}
