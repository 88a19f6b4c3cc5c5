//! An impaired link in user space: a UDP relay that delays and drops datagrams, standing in
//! for `tc qdisc … netem` (which needs root and a kernel built with `sch_netem`; the kernel of
//! the machine this suite was written on has neither `netem` nor the `gact` action).
//!
//! A replica listens on `127.0.0.1:P` and advertises the relay's address `Q` instead
//! (`--advertise Q`), so every member that calls it or probes it goes through the relay; the
//! relay forwards to `P` from one socket per client, as a NAT would. Impairments apply to each
//! direction on its own and can be changed while the link carries traffic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// What the link does to each datagram, in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Added to every datagram's trip.
    pub delay: Duration,
    /// The share of datagrams dropped, 0.0 to 1.0.
    pub loss: f64,
}

/// Counters of a [`Relay`].
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Datagrams passed on.
    pub forwarded: AtomicU64,
    /// Datagrams dropped on purpose.
    pub dropped: AtomicU64,
}

struct Shared {
    upstream: Mutex<Option<SocketAddr>>,
    impairment: Mutex<Impairment>,
    rng: Mutex<u64>,
    stats: LinkStats,
}

impl Shared {
    fn impairment(&self) -> Impairment {
        *self.impairment.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A uniform draw in [0, 1) from a seeded xorshift, so runs are reproducible in their loss.
    fn draw(&self) -> f64 {
        let mut state = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Sends `data` to `to` from `socket` after the delay, unless it is dropped.
    fn pass(self: &Arc<Self>, socket: &Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr) {
        let impairment = self.impairment();
        if impairment.loss > 0.0 && self.draw() < impairment.loss {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        if impairment.delay.is_zero() {
            let _ = socket.try_send_to(&data, to);
            return;
        }
        let socket = socket.clone();
        tokio::spawn(async move {
            tokio::time::sleep(impairment.delay).await;
            let _ = socket.send_to(&data, to).await;
        });
    }
}

/// A running relay on loopback; stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay on `127.0.0.1` with no upstream yet (datagrams are dropped until
    /// [`Relay::set_upstream`]), impairing with `impairment`, its losses drawn from `seed`.
    pub fn start(impairment: Impairment, seed: u64) -> Relay {
        let shared = Arc::new(Shared {
            upstream: Mutex::new(None),
            impairment: Mutex::new(impairment),
            rng: Mutex::new(seed | 1),
            stats: LinkStats::default(),
        });
        let front = std::net::UdpSocket::bind("127.0.0.1:0").expect("a relay socket");
        front.set_nonblocking(true).expect("non-blocking");
        let addr = front.local_addr().expect("the relay's address");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the relay's runtime");
                runtime.block_on(async move {
                    let front = Arc::new(UdpSocket::from_std(front).expect("tokio socket"));
                    tokio::select! {
                        _ = relay(front, shared) => {}
                        _ = stopped => {}
                    }
                });
            })
        };
        Relay {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The address members must reach the replica at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where datagrams go: the replica's real address.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self
            .shared
            .upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(upstream);
    }

    /// Changes what the link does from now on.
    pub fn set_impairment(&self, impairment: Impairment) {
        *self
            .shared
            .impairment
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = impairment;
    }

    /// Datagrams passed on and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.stats.forwarded.load(Ordering::Relaxed),
            self.shared.stats.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn relay(front: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let Ok((len, client)) = front.recv_from(&mut buffer).await else {
            continue;
        };
        let Some(upstream) = *shared.upstream.lock().unwrap_or_else(|p| p.into_inner()) else {
            continue;
        };
        let back = match clients.get(&client) {
            Some(back) => back.clone(),
            None => {
                let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let back = Arc::new(back);
                clients.insert(client, back.clone());
                // Replies from the replica to this client.
                let (front, back_reader, shared) = (front.clone(), back.clone(), shared.clone());
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 65_536];
                    while let Ok((len, _)) = back_reader.recv_from(&mut buffer).await {
                        shared.pass(&front, buffer[..len].to_vec(), client);
                    }
                });
                back
            }
        };
        shared.pass(&back, buffer[..len].to_vec(), upstream);
    }
}
