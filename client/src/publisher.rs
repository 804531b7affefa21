//! [`Publisher`]: `await queue.put()` across the network.
//!
//! A `Publish` stream on which the broker grants credit (space reserved in
//! the queue for this producer) and confirms what it stored. `send` waits
//! for credit, so a producer faster than its workers is paused by them —
//! and what it sends is never refused for space.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use crate::Error;
use crate::client::Client;
use crate::coalesce::{Coalescing, FrameLimit};
use crate::proto::{NewTask, PublishRequest};

#[derive(Debug, Default)]
struct State {
    credit: u64,
    confirmed: Vec<String>,
    depth: u64,
    capacity: u64,
    /// Set when the stream ended; an error if it ended badly.
    ended: Option<Result<(), Error>>,
}

/// A producer on one queue. Not `Clone`: one stream, one sender.
///
/// Each `send` becomes a frame at once when the connection is idle; frames
/// queued while it is busy go out merged (see [`Coalescing`]), so sending
/// task by task runs at the speed of batches without waiting to fill one.
pub struct Publisher {
    /// Unbounded: what goes in is bounded by the credit, which `send`
    /// takes before it queues a frame.
    tx: mpsc::UnboundedSender<PublishRequest>,
    state: Arc<(Mutex<State>, Notify)>,
    sent: u64,
    /// Confirmed ids already handed out by `take_confirmed`.
    taken: u64,
    waited: Duration,
    reader: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Opens a Publish stream on `queue`, asking to have up to `window`
    /// tasks in flight (credit held plus sent and unconfirmed; 0 = the
    /// broker's default, 1000).
    /// Frames merged from queued sends stay within what the broker takes
    /// ([`Client::frame_limit`]).
    pub async fn publisher(&self, queue: &str, window: u32) -> Result<Publisher, Error> {
        let limit = self.frame_limit().await;
        self.publisher_with(queue, window, limit).await
    }

    /// [`Client::publisher`] whose merged frames stay within `limit` (for a
    /// broker started with a lower `--max-batch` than the default 10,000,
    /// or a smaller message size).
    pub async fn publisher_with(
        &self,
        queue: &str,
        window: u32,
        limit: FrameLimit,
    ) -> Result<Publisher, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let first = PublishRequest {
            queue: queue.to_owned(),
            window,
            ..PublishRequest::default()
        };
        tx.send(first)
            .map_err(|_| Error::Protocol("publish stream closed at once".into()))?;
        let mut inbound = self
            .raw()
            .publish(Coalescing::with_limit(rx, limit))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        let state = Arc::new((Mutex::new(State::default()), Notify::new()));
        let shared = Arc::clone(&state);
        let url = self.url().to_owned();
        let reader = tokio::spawn(async move {
            let end = loop {
                match inbound.message().await {
                    Ok(Some(resp)) => {
                        let (lock, notify) = &*shared;
                        if let Ok(mut st) = lock.lock() {
                            st.credit += resp.credit;
                            st.confirmed.extend(resp.confirmed_ids);
                            if resp.capacity > 0 {
                                st.depth = resp.depth;
                                st.capacity = resp.capacity;
                            }
                        }
                        notify.notify_waiters();
                    }
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(Error::from_status(status, &url)),
                };
            };
            let (lock, notify) = &*shared;
            if let Ok(mut st) = lock.lock() {
                st.ended = Some(end);
            }
            notify.notify_waiters();
        });
        Ok(Publisher {
            tx,
            state,
            sent: 0,
            taken: 0,
            waited: Duration::ZERO,
            reader,
        })
    }
}

impl Publisher {
    /// Sends one task once the broker has granted room for it.
    pub async fn send(&mut self, task: NewTask) -> Result<(), Error> {
        self.send_batch(vec![task]).await
    }

    /// Sends tasks, each as soon as there is credit for it: a frame per
    /// stretch of credit, so a batch larger than the credit (or the window)
    /// goes out in parts rather than waiting for room it may never get.
    /// Cancel-safe between frames: credit is taken only with a frame sent.
    pub async fn send_batch(&mut self, mut tasks: Vec<NewTask>) -> Result<(), Error> {
        while !tasks.is_empty() {
            let started = Instant::now();
            self.wait_credit().await?;
            // Nothing awaits from here on, so the credit taken below always
            // goes out with its frame.
            let take = {
                let mut st = self
                    .state
                    .0
                    .lock()
                    .map_err(|_| Error::Protocol("publisher state poisoned".into()))?;
                let take = st.credit.min(tasks.len() as u64);
                st.credit -= take;
                take
            };
            if take == 0 {
                continue;
            }
            let rest = tasks.split_off(take as usize);
            let frame = PublishRequest {
                tasks: std::mem::replace(&mut tasks, rest),
                ..PublishRequest::default()
            };
            self.tx
                .send(frame)
                .map_err(|_| Error::Protocol("publish stream closed".into()))?;
            self.sent += take;
            self.waited += started.elapsed();
        }
        Ok(())
    }

    /// Waits up to `within` for credit: true once there is some, false if
    /// the time passed first, so a caller can tell its user it is waiting
    /// for space and go on waiting. The time counts in
    /// [`Publisher::waited`].
    pub async fn wait_credit_for(&mut self, within: Duration) -> Result<bool, Error> {
        let started = Instant::now();
        let got = tokio::time::timeout(within, self.wait_credit()).await;
        self.waited += started.elapsed();
        match got {
            Ok(r) => r.map(|()| true),
            Err(_elapsed) => Ok(false),
        }
    }

    /// Waits until the broker granted some credit (or ended the stream).
    async fn wait_credit(&self) -> Result<(), Error> {
        loop {
            let (lock, notify) = &*self.state;
            let waiting = notify.notified();
            tokio::pin!(waiting);
            waiting.as_mut().enable();
            {
                let st = lock
                    .lock()
                    .map_err(|_| Error::Protocol("publisher state poisoned".into()))?;
                if let Some(end) = &st.ended {
                    return Err(match end {
                        Err(e) => Error::Protocol(format!("publish stream ended: {e}")),
                        Ok(()) => Error::Protocol("the broker ended the publish stream".into()),
                    });
                }
                if st.credit > 0 {
                    return Ok(());
                }
            }
            waiting.await;
        }
    }

    /// Credit held now: tasks that may be sent without waiting.
    pub fn credit(&self) -> u64 {
        self.state.0.lock().map_or(0, |st| st.credit)
    }

    /// Tasks sent and not yet confirmed.
    pub fn unconfirmed(&self) -> u64 {
        let confirmed = self
            .state
            .0
            .lock()
            .map_or(0, |st| st.confirmed.len() as u64);
        self.sent.saturating_sub(confirmed + self.taken)
    }

    /// Takes the ids confirmed since the last call, in the order sent.
    pub fn take_confirmed(&mut self) -> Vec<String> {
        let taken = self
            .state
            .0
            .lock()
            .map(|mut st| std::mem::take(&mut st.confirmed))
            .unwrap_or_default();
        self.taken += taken.len() as u64;
        taken
    }

    /// Tasks sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Time spent waiting for credit.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The queue's depth and capacity at the last confirmation.
    pub fn depth(&self) -> (u64, u64) {
        self.state
            .0
            .lock()
            .map_or((0, 0), |st| (st.depth, st.capacity))
    }

    /// Ends the stream and waits until every task sent is confirmed;
    /// returns their ids (those not yet taken), in the order sent.
    pub async fn finish(self) -> Result<Vec<String>, Error> {
        drop(self.tx);
        self.reader
            .await
            .map_err(|e| Error::Protocol(format!("publish reader failed: {e}")))?;
        let mut st = self
            .state
            .0
            .lock()
            .map_err(|_| Error::Protocol("publisher state poisoned".into()))?;
        if let Some(Err(e)) = st.ended.take() {
            return Err(e);
        }
        let ids = std::mem::take(&mut st.confirmed);
        let confirmed = ids.len() as u64 + self.taken;
        if confirmed != self.sent {
            return Err(Error::Protocol(format!(
                "{} tasks sent, {confirmed} confirmed",
                self.sent
            )));
        }
        Ok(ids)
    }
}
