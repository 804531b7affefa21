//! Frames queued while the connection is busy go out as one.
//!
//! A client stream is polled by the HTTP/2 connection when it can take the
//! next frame. [`Coalescing`] answers that poll with everything queued
//! since the last one, merged: a producer calling `send` per task, or a
//! worker acking each task as it finishes, gets batch-sized frames under
//! load and single ones when idle — without waiting to fill a batch, so no
//! delay is added.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio_stream::Stream;

use crate::proto::{ConsumeRequest, PublishRequest};

/// Items per merged frame at most: a broker may run with a --max-batch
/// below its default of 10,000, and the CLI sends 1,000.
pub const MAX_ITEMS: usize = 1000;

/// Payload (or result) bytes per merged frame at most, as the broker's own
/// frames: well under any gRPC size limit.
pub const MAX_BYTES: usize = 1024 * 1024;

/// How big a merged frame may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimit {
    /// Items (tasks; acks, nacks and extends) at most.
    pub items: usize,
    /// Payload (or result) bytes at most.
    pub bytes: usize,
}

impl Default for FrameLimit {
    fn default() -> Self {
        FrameLimit {
            items: MAX_ITEMS,
            bytes: MAX_BYTES,
        }
    }
}

/// A frame that can take in the one queued after it.
pub trait Coalesce: Sized {
    /// Merges `next` into `self` when the two mean the same as one frame
    /// and the result stays within `limit`; otherwise gives `next` back.
    fn absorb(&mut self, next: Self, limit: FrameLimit) -> Option<Self>;
}

/// The receiving end of an unbounded channel of frames, as a stream that
/// merges what is queued each time it is polled.
pub struct Coalescing<T> {
    rx: mpsc::UnboundedReceiver<T>,
    /// A frame that could not be merged into the last one: goes next.
    held: Option<T>,
    limit: FrameLimit,
}

impl<T> Coalescing<T> {
    pub fn new(rx: mpsc::UnboundedReceiver<T>) -> Self {
        Self::with_limit(rx, FrameLimit::default())
    }

    /// Merged frames stay within `limit` (a broker with a lower
    /// --max-batch, say); a single frame sent larger still goes as it is.
    pub fn with_limit(rx: mpsc::UnboundedReceiver<T>, limit: FrameLimit) -> Self {
        Coalescing {
            rx,
            held: None,
            limit,
        }
    }
}

impl<T: Coalesce + Unpin> Stream for Coalescing<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        let mut frame = match this.held.take() {
            Some(f) => f,
            None => match this.rx.poll_recv(cx) {
                Poll::Ready(Some(f)) => f,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        while let Ok(next) = this.rx.try_recv() {
            if let Some(back) = frame.absorb(next, this.limit) {
                this.held = Some(back);
                break;
            }
        }
        Poll::Ready(Some(frame))
    }
}

impl Coalesce for PublishRequest {
    fn absorb(&mut self, next: Self, limit: FrameLimit) -> Option<Self> {
        let bytes = |f: &PublishRequest| f.tasks.iter().map(|t| t.payload.len()).sum::<usize>();
        // The first frame names the queue and the window: it stays alone.
        let plain = |f: &PublishRequest| f.queue.is_empty() && f.window == 0;
        if !plain(self)
            || !plain(&next)
            || self.tasks.len() + next.tasks.len() > limit.items
            || bytes(self) + bytes(&next) > limit.bytes
        {
            return Some(next);
        }
        self.tasks.extend(next.tasks);
        None
    }
}

impl Coalesce for ConsumeRequest {
    fn absorb(&mut self, next: Self, limit: FrameLimit) -> Option<Self> {
        let items = |f: &ConsumeRequest| f.acks.len() + f.nacks.len() + f.extends.len();
        let bytes = |f: &ConsumeRequest| {
            f.acks.iter().map(|a| a.result.len()).sum::<usize>()
                + f.nacks.iter().map(|n| n.error.len()).sum::<usize>()
        };
        // Parts apply in field order (acks, nacks, extends, credit, stop):
        // merging keeps that meaning unless a subscribe or a stop would be
        // crossed, or the credit would overflow.
        if self.subscribe.is_some()
            || next.subscribe.is_some()
            || self.stop
            || items(self) + items(&next) > limit.items
            || bytes(self) + bytes(&next) > limit.bytes
        {
            return Some(next);
        }
        let Some(credit) = self.credit.checked_add(next.credit) else {
            return Some(next);
        };
        self.acks.extend(next.acks);
        self.nacks.extend(next.nacks);
        self.extends.extend(next.extends);
        self.credit = credit;
        self.stop = next.stop;
        None
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;
    use crate::proto::{AckItem, NewTask, Subscribe};

    fn tasks(n: usize) -> PublishRequest {
        PublishRequest {
            tasks: vec![NewTask::default(); n],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn what_is_queued_goes_out_as_one_frame_and_the_first_alone() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = Coalescing::new(rx);
        tx.send(PublishRequest {
            queue: "q".into(),
            ..Default::default()
        })
        .expect("send");
        for _ in 0..5 {
            tx.send(tasks(1)).expect("send");
        }
        let first = s.next().await.expect("first");
        assert_eq!((first.queue.as_str(), first.tasks.len()), ("q", 0));
        assert_eq!(s.next().await.expect("merged").tasks.len(), 5);
        // Nothing queued: the next frame goes as it comes, alone.
        tx.send(tasks(1)).expect("send");
        assert_eq!(s.next().await.expect("single").tasks.len(), 1);
        // Never past the item limit.
        for _ in 0..3 {
            tx.send(tasks(MAX_ITEMS / 2)).expect("send");
        }
        drop(tx);
        let sizes: Vec<usize> = s.map(|f| f.tasks.len()).collect().await;
        assert_eq!(sizes, [MAX_ITEMS, MAX_ITEMS / 2]);
    }

    #[tokio::test]
    async fn merged_frames_stay_within_the_limit_given() {
        let (tx, rx) = mpsc::unbounded_channel();
        let limit = FrameLimit {
            items: 3,
            bytes: MAX_BYTES,
        };
        let s = Coalescing::with_limit(rx, limit);
        for _ in 0..7 {
            tx.send(tasks(1)).expect("send");
        }
        drop(tx);
        let sizes: Vec<usize> = s.map(|f| f.tasks.len()).collect().await;
        assert_eq!(sizes, [3, 3, 1]);
    }

    #[tokio::test]
    async fn settlements_merge_but_never_across_a_stop() {
        let ack = || AckItem::default();
        let settle = |credit: u32| ConsumeRequest {
            acks: vec![ack()],
            credit,
            ..Default::default()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let s = Coalescing::new(rx);
        tx.send(ConsumeRequest {
            subscribe: Some(Subscribe::default()),
            credit: 4,
            ..Default::default()
        })
        .expect("send");
        tx.send(settle(1)).expect("send");
        tx.send(settle(1)).expect("send");
        tx.send(ConsumeRequest {
            stop: true,
            ..Default::default()
        })
        .expect("send");
        // After a stop, a credit resumes deliveries: it must stay after it.
        tx.send(settle(1)).expect("send");
        drop(tx);
        let frames: Vec<ConsumeRequest> = s.collect().await;
        let shape: Vec<(bool, usize, u32, bool)> = frames
            .iter()
            .map(|f| (f.subscribe.is_some(), f.acks.len(), f.credit, f.stop))
            .collect();
        assert_eq!(
            shape,
            [
                (true, 0, 4, false),
                (false, 2, 2, true),
                (false, 1, 1, false)
            ]
        );
    }
}
