//! How ids look outside the broker: task ids (and lease tokens) as 16
//! lowercase hex digits.

use crate::engine::TaskId;

/// Task ids on the wire: 16 lowercase hex digits. Written by hand: this
/// runs for every delivery, and `format!` was a few percent of the broker.
pub fn task_id_str(id: TaskId) -> String {
    hex64(id.0)
}

/// 16 lowercase hex digits.
pub fn hex64(v: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for (i, byte) in v.to_be_bytes().into_iter().enumerate() {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    // Always ASCII, so never the default.
    String::from_utf8(buf.to_vec()).unwrap_or_default()
}

/// None for anything this broker never handed out.
pub fn parse_task_id(s: &str) -> Option<TaskId> {
    if s.len() != 16 {
        return None;
    }
    let mut v = 0u64;
    for b in s.bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(TaskId(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip() {
        let id = TaskId(0x0123_4567_89ab_cdef);
        assert_eq!(parse_task_id(&task_id_str(id)), Some(id));
        assert_eq!(parse_task_id("xyz"), None);
        assert_eq!(parse_task_id("zzzzzzzzzzzzzzzz"), None);
        assert_eq!(task_id_str(TaskId(0x1a)), "000000000000001a");
        assert_eq!(parse_task_id("000000000000001A"), None, "lowercase only");
        assert_eq!(parse_task_id("ffffffffffffffff"), Some(TaskId(u64::MAX)));
    }
}
