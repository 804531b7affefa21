//! Time: the broker's clock (`now` for the engine), each queue's timer
//! (lease expiry, delayed tasks, key windows) and the job sweep.

use super::*;

impl Broker {
    /// Forgets jobs past their time, every 10 seconds, until shutdown.
    pub(super) async fn sweep_jobs(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                _ = tick.tick() => self.inner.jobs.sweep(now_ms()),
            }
        }
    }
}

/// Milliseconds since the Unix epoch: the engine's `now`. The wall clock
/// is read once, at the first call; after that time advances with the
/// monotonic clock, so a clock step (NTP, an operator) neither expires
/// every lease at once nor freezes them.
pub fn now_ms() -> Millis {
    static BOOT: std::sync::OnceLock<(std::time::Instant, Millis)> = std::sync::OnceLock::new();
    let (at, wall) = BOOT.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as Millis);
        (std::time::Instant::now(), wall)
    });
    wall + at.elapsed().as_millis() as Millis
}

/// Milliseconds since the Unix epoch by the wall clock, read each time:
/// schedules tick at wall-clock times, so they follow a clock that was
/// stepped (NTP after boot) or stood still (a suspended host), which the
/// engine's [`now_ms`] deliberately does not.
pub fn wall_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Wakes the engine when its earliest deadline (lease expiry, delayed task)
/// comes, for as long as the queue exists.
pub(super) async fn run_timer(broker: Broker, q: Arc<QueueHandle>) {
    loop {
        if !broker.serving() {
            // A cluster member that does not lead runs no time of its own:
            // the leader's ticks come as commands. It looks again when it
            // is woken (it became leader) or after a while.
            tokio::select! {
                _ = q.deleted.cancelled() => return,
                _ = q.rearm.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let next = q.lock().state.next_deadline();
        let sleep = async {
            match next {
                Some(at) => {
                    let wait = at.saturating_sub(now_ms());
                    tokio::time::sleep(Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = q.deleted.cancelled() => return,
            _ = q.rearm.notified() => {}
            _ = sleep => {
                if broker.serving() {
                    broker.apply(&q, |core, now, fx| core.run(now, Command::Tick, fx));
                }
            }
        }
    }
}
