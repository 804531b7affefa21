//! The on-disk encoding as pure functions over bytes: segment headers and
//! record frames. No I/O here, so every rule of the format is unit-tested
//! without touching a disk. The format itself is described in `mod.rs`.

/// First eight bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"SLUICEWL";
/// The one format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Bytes in a segment header.
pub const HEADER_LEN: usize = 32;
/// Bytes in a frame header (length + checksum) before the payload.
pub const FRAME_HEADER_LEN: usize = 8;
/// The largest payload the format allows. A reader treats a larger length
/// as corruption rather than trying to read it, which bounds how much a
/// damaged length field can make it allocate.
pub const MAX_RECORD_LEN: u32 = 64 << 20;

/// The fixed-size header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment's first record (also in its name).
    pub first_seq: u64,
    /// `first_seq` of the segment this one was rolled from, 0 for none. It
    /// lets recovery notice a segment missing from the middle of the log.
    pub prev_first_seq: u64,
}

/// Why a segment header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a sluice log segment (bad magic bytes)")]
    BadMagic,
    #[error("segment header checksum mismatch")]
    BadChecksum,
    #[error("segment format version {0} is not supported")]
    UnsupportedVersion(u32),
    #[error("segment header names first sequence number 0")]
    ZeroSeq,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..20].copy_from_slice(&self.first_seq.to_le_bytes());
        b[20..28].copy_from_slice(&self.prev_first_seq.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Checks magic, then checksum, then version, so that a file from a
    /// newer broker is reported as such and not as damage.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Self, HeaderError> {
        if b[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32c::crc32c(&b[0..28]) != le_u32(&b[28..32]) {
            return Err(HeaderError::BadChecksum);
        }
        let version = le_u32(&b[8..12]);
        if version != VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let first_seq = le_u64(&b[12..20]);
        if first_seq == 0 {
            return Err(HeaderError::ZeroSeq);
        }
        Ok(SegmentHeader {
            first_seq,
            prev_first_seq: le_u64(&b[20..28]),
        })
    }
}

/// Why the bytes at some offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The file (or buffer) ends inside the frame.
    #[error("frame needs {needed} bytes but only {available} remain")]
    Truncated { needed: u64, available: u64 },
    /// The length field exceeds [`MAX_RECORD_LEN`].
    #[error("impossible record length {len} (the format's maximum is {MAX_RECORD_LEN})")]
    TooLong { len: u32 },
    /// Length or payload bytes differ from what was written.
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum { stored: u32, computed: u32 },
}

impl FrameError {
    /// A frame cut short by the end of the data, the shape a write
    /// interrupted by a crash leaves behind.
    pub fn is_truncated(&self) -> bool {
        matches!(self, FrameError::Truncated { .. })
    }
}

/// Bytes a frame for a payload of `payload_len` bytes takes.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + payload_len
}

/// The checksum of a frame: CRC32C over the four length bytes, then the
/// payload. Covering the length means a flipped length bit is caught too.
pub fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

/// Appends the frame for `payload` to `out`. The caller has checked the
/// payload against [`MAX_RECORD_LEN`]; a longer one is a bug upstream.
pub fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_RECORD_LEN as usize);
    let len_bytes = (payload.len() as u32).to_le_bytes();
    out.reserve(frame_len(payload.len()));
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&frame_crc(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Splits a frame header into (payload length, stored checksum).
pub fn decode_frame_header(b: &[u8; FRAME_HEADER_LEN]) -> (u32, u32) {
    (le_u32(&b[0..4]), le_u32(&b[4..8]))
}

/// Checks a length read from a frame header against the format limit and
/// the bytes left (`available` counts from the start of the frame).
/// Returns the whole frame's length.
pub fn check_frame_len(len: u32, available: u64) -> Result<u64, FrameError> {
    if len > MAX_RECORD_LEN {
        return Err(FrameError::TooLong { len });
    }
    let needed = (FRAME_HEADER_LEN as u64) + u64::from(len);
    if needed > available {
        return Err(FrameError::Truncated { needed, available });
    }
    Ok(needed)
}

/// Checks a payload against its frame's stored checksum.
pub fn verify_frame(len: u32, payload: &[u8], stored: u32) -> Result<(), FrameError> {
    let computed = frame_crc(len.to_le_bytes(), payload);
    if computed == stored {
        Ok(())
    } else {
        Err(FrameError::BadChecksum { stored, computed })
    }
}

/// Decodes the frame at the start of `buf`: its payload and the bytes the
/// frame took.
pub fn decode_frame(buf: &[u8]) -> Result<(&[u8], usize), FrameError> {
    let available = buf.len() as u64;
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(FrameError::Truncated {
            needed: FRAME_HEADER_LEN as u64,
            available,
        });
    };
    let (len, stored) = decode_frame_header(header);
    let total = check_frame_len(len, available)? as usize;
    let payload = &buf[FRAME_HEADER_LEN..total];
    verify_frame(len, payload, stored)?;
    Ok((payload, total))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_frame(&mut out, p);
        }
        out
    }

    #[test]
    fn frames_round_trip() {
        let payloads: [&[u8]; 4] = [b"one", b"", b"three", &[0xff; 1000]];
        let buf = frames(&payloads);
        let mut rest = &buf[..];
        for p in payloads {
            let (got, used) = decode_frame(rest).expect("valid frame");
            assert_eq!(got, p);
            assert_eq!(used, frame_len(p.len()));
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn frame_layout_is_length_crc_payload_little_endian() {
        let buf = frames(&[b"abc"]);
        assert_eq!(&buf[0..4], &3u32.to_le_bytes());
        let crc = crc32c::crc32c(&[3, 0, 0, 0, b'a', b'b', b'c']);
        assert_eq!(&buf[4..8], &crc.to_le_bytes());
        assert_eq!(&buf[8..], b"abc");
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let buf = frames(&[b"hello, world"]);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let err = decode_frame(&bad).expect_err("corruption must be caught");
                // A flipped length bit shows up as a checksum mismatch, a
                // too-long length, or a frame running past the data.
                assert!(
                    matches!(
                        err,
                        FrameError::BadChecksum { .. }
                            | FrameError::Truncated { .. }
                            | FrameError::TooLong { .. }
                    ),
                    "byte {byte} bit {bit}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_reported_as_truncated() {
        let buf = frames(&[b"some payload"]);
        for cut in 0..buf.len() {
            let err = decode_frame(&buf[..cut]).expect_err("short frame");
            assert!(err.is_truncated(), "cut at {cut}: {err:?}");
        }
    }

    #[test]
    fn impossible_length_is_refused_before_reading() {
        let mut buf = frames(&[b"x"]);
        buf[0..4].copy_from_slice(&(MAX_RECORD_LEN + 1).to_le_bytes());
        assert_eq!(
            decode_frame(&buf),
            Err(FrameError::TooLong {
                len: MAX_RECORD_LEN + 1
            })
        );
    }

    #[test]
    fn zeroed_bytes_are_never_a_valid_frame() {
        // Recovery relies on this: a file extended by the filesystem but
        // never written reads as zeros, and must not replay as records.
        assert!(matches!(
            decode_frame(&[0u8; 64]),
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            first_seq: 42,
            prev_first_seq: 7,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));

        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadMagic));

        let mut bad = b;
        bad[13] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadChecksum));

        let mut newer = b;
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&newer[0..28]);
        newer[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&newer),
            Err(HeaderError::UnsupportedVersion(2))
        );
    }
}
