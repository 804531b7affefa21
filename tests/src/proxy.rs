//! A TCP proxy the test controls: one link between two processes (e.g. a
//! cluster member and the member it calls) that can be cut and healed, to
//! make network partitions on loopback.
//!
//! Plain threads: one accepts, two per connection copy bytes. Everything
//! stops by itself when the [`Proxy`] is dropped: its listener closes and
//! its connections are shut down, which ends their threads.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// A proxy on `127.0.0.1:<ephemeral>` forwarding every connection to
/// `target`, until cut.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accepting: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    /// Set once the proxy is dropped: the accepting thread ends.
    stopped: AtomicBool,
    links: Mutex<Links>,
}

#[derive(Default)]
struct Links {
    /// While cut, new connections are closed at once.
    cut: bool,
    next: u64,
    /// Both ends of every open connection, to shut them down on a cut.
    open: HashMap<u64, (TcpStream, TcpStream)>,
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn close(pair: &(TcpStream, TcpStream)) {
    let _ = pair.0.shutdown(Shutdown::Both);
    let _ = pair.1.shutdown(Shutdown::Both);
}

impl Proxy {
    /// Starts forwarding to `target` (which need not be up yet: a
    /// connection it refuses is closed).
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared::default());
        let accepting = {
            let shared = shared.clone();
            std::thread::spawn(move || accept(&listener, target, &shared))
        };
        Proxy {
            addr,
            shared,
            accepting: Some(accepting),
        }
    }

    /// Where to connect to reach the target through this proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link: every open connection is shut down (both sides see
    /// it closed) and new ones are closed as soon as they are accepted,
    /// until [`Proxy::heal`].
    pub fn cut(&self) {
        let mut links = self.shared.links();
        links.cut = true;
        for pair in links.open.values() {
            close(pair);
        }
        links.open.clear();
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.shared.links().cut = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.cut();
        // Wake the accepting thread, blocked in accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accepting.take() {
            let _ = t.join();
        }
    }
}

fn accept(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = incoming else { continue };
        if shared.links().cut {
            // Dropped: closed at once.
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        // Registered under the lock that `cut` takes, and only if not cut
        // meanwhile: no connection outlives a cut.
        let id = {
            let mut links = shared.links();
            if links.cut {
                continue;
            }
            links.next += 1;
            let id = links.next;
            links.open.insert(id, (c3, s3));
            id
        };
        for (from, to) in [(client, s2), (server, c2)] {
            let shared = shared.clone();
            std::thread::spawn(move || {
                pump(from, to);
                // One direction ended: the connection is over both ways.
                if let Some(pair) = shared.links().open.remove(&id) {
                    close(&pair);
                }
            });
        }
    }
}

/// Copies `from` to `to` until either ends or fails.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}
