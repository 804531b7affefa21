//! Bad input on the wire: garbage bytes on the port, malformed protobuf
//! in well-framed gRPC calls, and streams cut short. The broker goes on
//! serving and loses no task.

use std::io::Write;

use bytes::{Buf, BufMut, Bytes};
use proptest::prelude::*;
use sluice_tests::{Broker, num};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A codec that sends the bytes it is given, as they are.
#[derive(Default, Clone)]
struct Raw;

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn raw_call(url: &str, method: &str, body: Bytes) -> Result<Bytes, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = format!("/sluice.v1.SluiceService/{method}")
        .parse()
        .expect("path");
    grpc.unary(tonic::Request::new(body), path, Raw)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_malformed_calls_leave_the_broker_serving() {
    let b = Broker::start();
    tokio::task::block_in_place(|| {
        b.ok(&["queue", "create", "q"]);
        b.ok(&["enqueue", "q", "precious"]);
    });

    // Garbage straight onto the TCP port, then a cut connection.
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 4096],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
    ] {
        let mut s = std::net::TcpStream::connect(&b.addr).expect("connect");
        let _ = s.write_all(junk);
        drop(s);
    }

    // Well-framed gRPC calls whose message is not protobuf, or lies about
    // its lengths: refused with a status, never a crash.
    let url = b.url();
    let mut garbage: Vec<Bytes> = vec![
        Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
        Bytes::from_static(&[0x0a, 0x7f, b'q']), // field 1 claims 127 bytes, has 1
        Bytes::from_static(&[0x12, 0x05, 0x0a, 0x03]), // a task cut short
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..50 {
        let len = (seed % 64) as usize;
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.push(seed as u8);
        }
        garbage.push(Bytes::from(v));
    }
    for method in [
        "Enqueue",
        "Get",
        "Ack",
        "Nack",
        "CreateQueue",
        "DeleteQueue",
        "PurgeQueue",
        "UpdateQueue",
    ] {
        for g in &garbage {
            // Any status is fine (many random bytes decode to empty or
            // partial messages); what matters is what follows.
            let _ = raw_call(&url, method, g.clone()).await;
        }
    }

    // Still serving, and the task is still there.
    tokio::task::block_in_place(|| {
        let s = b.stats("q");
        assert_eq!(num(&s, &["stats", "ready"]), 1, "{s}");
        assert_eq!(b.ok(&["get", "q"]), "precious\n");
        b.ok(&["queue", "create", "still-works"]);
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The decoder never panics on random input, and whatever decodes is
    /// turned into a clean answer (not a panic) by the broker's checks.
    #[test]
    fn random_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        use prost::Message;
        use sluice_client::proto::{ConsumeRequest, EnqueueRequest, PublishRequest};
        let _ = ConsumeRequest::decode(&data[..]);
        let _ = PublishRequest::decode(&data[..]);
        if let Ok(req) = EnqueueRequest::decode(&data[..]) {
            let limits = sluice_broker::limits::Limits::default();
            let _ = sluice_broker::api::validate::queue_name(&req.queue);
            let _ = sluice_broker::api::validate::new_tasks(
                req.tasks,
                sluice_broker::engine::TaskId(1),
                &limits,
            );
        }
    }
}
