//! Keep-alive connections to the backend, over hyper's own HTTP/1 client connections, within a
//! ceiling shared by every worker.
//!
//! hyper-util's legacy client does the same job in general (any host, any scheme, HTTP/2,
//! connection racing); one backend over HTTP/1 needs far less, and on the gateway's hot path
//! its per-request boxing, extension bookkeeping and pool-key hashing cost more than
//! verifying the callback's signature. What this pool keeps, and why:
//!
//! - at most `upstream.max_connections` open backend connections in all ([`Slots`]), of which
//!   `upstream.callback_connections` only callbacks may open or reuse: a flood of slow API
//!   requests can take every other connection and a callback still gets one at once. Beyond
//!   the ceiling a request waits for a slot until its deadline, then gets 503;
//! - LIFO reuse of idle connections, at most `max_idle` of them per worker;
//! - a connection is never reused once it has been idle for `idle_timeout`, which must stay
//!   below the backend's keep-alive (gunicorn's `--keep-alive`, 2 s by default), so it is the
//!   gateway and never the backend that ends an idle connection: a request written into a
//!   connection the backend is closing is the classic source of spurious 502s (hyper #2136,
//!   #3553). A sweeper closes expired idle connections in the background;
//! - a connection returns to the pool only once its response body has been read to the end;
//!   one dropped earlier (client gone, timeout) is closed, never reused with unread bytes;
//! - a request that could not be written to a pooled connection (closed just before) is sent
//!   on a fresh one: hyper hands the unsent request back (`TrySendError::take_message`), so
//!   this retry is provably safe even for a callback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ProxyError;
use crate::config::UpstreamTarget;
use crate::lane::Lane;

type Sender = http1::SendRequest<Full<Bytes>>;

/// Where the backend is.
#[derive(Debug, Clone)]
enum Target {
    /// An address literal: connect without name resolution.
    Addr(SocketAddr),
    /// `host:port`, resolved on each new connection.
    Name(String),
    /// A unix socket (gunicorn's `--bind unix:...`): the same HTTP/1, pooling and timeouts.
    Unix(PathBuf),
}

/// The right to hold one backend connection open, from the shared slots or the callbacks'
/// reserve. It lives in the connection's task, so it is returned when the connection closes.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    reserved: bool,
}

/// The ceiling on open backend connections, shared by every worker's pool.
#[derive(Debug, Clone)]
pub struct Slots {
    shared: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    /// `upstream_open_connections`.
    open: Gauge,
}

impl Slots {
    /// `max` connections in all, `reserved` of them for callbacks only.
    pub fn new(max: usize, reserved: usize, open: Gauge) -> Slots {
        Slots {
            shared: Arc::new(Semaphore::new(max.saturating_sub(reserved))),
            reserved: Arc::new(Semaphore::new(reserved)),
            open,
        }
    }

    /// A slot for a new connection of `lane`, waiting until `deadline`. Callbacks take a shared
    /// slot when one is free and fall back on their reserve; other traffic never touches it.
    async fn acquire(
        &self,
        lane: Lane,
        deadline: tokio::time::Instant,
    ) -> Result<Slot, ProxyError> {
        let slot = |permit, reserved| Slot {
            _permit: permit,
            reserved,
        };
        if let Ok(p) = self.shared.clone().try_acquire_owned() {
            return Ok(slot(p, false));
        }
        let waited = match lane {
            Lane::General => tokio::time::timeout_at(deadline, self.shared.clone().acquire_owned())
                .await
                .map(|p| p.map(|p| slot(p, false))),
            Lane::Callback => {
                if let Ok(p) = self.reserved.clone().try_acquire_owned() {
                    return Ok(slot(p, true));
                }
                tokio::time::timeout_at(deadline, async {
                    tokio::select! {
                        p = self.shared.clone().acquire_owned() => p.map(|p| slot(p, false)),
                        p = self.reserved.clone().acquire_owned() => p.map(|p| slot(p, true)),
                    }
                })
                .await
            }
        };
        match waited {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(ProxyError::Busy),
        }
    }

    /// Slots free now: (shared, reserved). For tests and metrics.
    pub fn available(&self) -> (usize, usize) {
        (
            self.shared.available_permits(),
            self.reserved.available_permits(),
        )
    }
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
    /// Opened on a callback-reserved slot: only callbacks may reuse it.
    reserved: bool,
}

/// The pool of one backend, for one worker.
#[derive(Debug)]
pub struct Pool {
    target: Target,
    slots: Slots,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

/// A connection lent to one request; give it back with [`Lease::release`] once the response
/// body has ended.
#[derive(Debug)]
pub struct Lease {
    sender: Sender,
    reserved: bool,
    pool: Weak<Pool>,
    /// When the response headers arrived: the backend's keep-alive clock starts about then,
    /// so the pool counts idleness from here (a slow client reading a long body must not
    /// make the connection look younger than the backend thinks it is).
    answered: Instant,
}

impl Lease {
    /// Returns the connection to its pool if it can take another request.
    pub fn release(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(self.sender, self.reserved, self.answered);
        }
    }
}

impl Pool {
    pub fn new(
        target: &UpstreamTarget,
        slots: Slots,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Arc<Pool> {
        let target = match target {
            UpstreamTarget::Unix(path) => Target::Unix(path.clone()),
            UpstreamTarget::Tcp(authority) => match authority.as_str().parse::<SocketAddr>() {
                Ok(addr) => Target::Addr(addr),
                Err(_) => Target::Name(authority.as_str().to_owned()),
            },
        };
        let pool = Arc::new(Pool {
            target,
            slots,
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
            idle_timeout,
            connect_timeout,
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(sweep(Arc::downgrade(&pool), idle_timeout));
        }
        pool
    }

    /// Sends `req` (origin-form URI, `Host` set) on a pooled connection of `lane`, or a new
    /// one, and waits for the response headers until `deadline`. The response comes with the
    /// lease of its connection, to be released when its body ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
        lane: Lane,
        deadline: tokio::time::Instant,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        while let Some((mut sender, reserved)) = self.checkout(lane) {
            match tokio::time::timeout_at(deadline, sender.try_send_request(req)).await {
                Err(_) => return Err(ProxyError::Timeout),
                Ok(Ok(resp)) => return Ok((resp, self.lease(sender, reserved))),
                Ok(Err(mut e)) => match e.take_message() {
                    // Never written: the connection closed under us. Try another.
                    Some(unsent) => req = unsent,
                    None => return Err(ProxyError::Upstream(e.into_error())),
                },
            }
        }
        // Boxed: opening a connection (slot, connect, handshake) is the rare path, and its
        // state would otherwise make every request's future (which hyper moves into place
        // per request) a kilobyte larger.
        Box::pin(self.send_fresh(req, lane, deadline)).await
    }

    /// Sends `req` on a new connection, never a pooled one (for resending a request that met
    /// a pooled connection closing under it).
    pub async fn send_fresh(
        self: &Arc<Self>,
        req: Request<Full<Bytes>>,
        lane: Lane,
        deadline: tokio::time::Instant,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let slot = self.slots.acquire(lane, deadline).await?;
        let reserved = slot.reserved;
        let mut sender = self.connect(slot).await?;
        match tokio::time::timeout_at(deadline, sender.try_send_request(req)).await {
            Err(_) => Err(ProxyError::Timeout),
            Ok(Ok(resp)) => Ok((resp, self.lease(sender, reserved))),
            Ok(Err(e)) => Err(ProxyError::Upstream(e.into_error())),
        }
    }

    fn lease(self: &Arc<Self>, sender: Sender, reserved: bool) -> Lease {
        Lease {
            sender,
            reserved,
            pool: Arc::downgrade(self),
            answered: Instant::now(),
        }
    }

    /// The most recently used idle connection `lane` may use that is ready for a request.
    /// Expired and closed ones are dropped (which closes them); one whose connection task has
    /// not yet caught up with the end of the previous response stays for the next checkout.
    fn checkout(&self, lane: Lane) -> Option<(Sender, bool)> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            if now.duration_since(entry.since) >= self.idle_timeout || entry.sender.is_closed() {
                idle.remove(i);
            } else if (!entry.reserved || lane == Lane::Callback) && entry.sender.is_ready() {
                let entry = idle.remove(i);
                return Some((entry.sender, entry.reserved));
            }
        }
        None
    }

    /// Keeps an idle connection (its age is checked at checkout and by the sweeper, which
    /// drop it once it reaches `idle_timeout`).
    fn put(&self, sender: Sender, reserved: bool, since: Instant) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since,
                reserved,
            });
        }
    }

    /// Opens a connection on `slot`; the slot goes back when the connection's task ends.
    async fn connect(&self, slot: Slot) -> Result<Sender, ProxyError> {
        match &self.target {
            Target::Addr(addr) => {
                let tcp = within(self.connect_timeout, TcpStream::connect(addr)).await?;
                let _ = tcp.set_nodelay(true);
                self.handshake(tcp, slot).await
            }
            Target::Name(name) => {
                let tcp = within(self.connect_timeout, TcpStream::connect(name.as_str())).await?;
                let _ = tcp.set_nodelay(true);
                self.handshake(tcp, slot).await
            }
            Target::Unix(path) => {
                let unix = within(self.connect_timeout, UnixStream::connect(path)).await?;
                self.handshake(unix, slot).await
            }
        }
    }

    /// Speaks HTTP/1 on a new stream; its connection task holds `slot` for as long as it runs.
    async fn handshake<S>(&self, stream: S, slot: Slot) -> Result<Sender, ProxyError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        // hyper's adaptive read buffer: an exact size would also cap the response head.
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Handshake)?;
        let open = self.slots.open.clone();
        open.inc();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection ended: {e}");
            }
            open.dec();
        });
        Ok(sender)
    }
}

/// A connect bounded by `upstream.connect_timeout`.
async fn within<S>(
    timeout: Duration,
    connect: impl std::future::Future<Output = std::io::Result<S>>,
) -> Result<S, ProxyError> {
    match tokio::time::timeout(timeout, connect).await {
        Err(_) => Err(ProxyError::ConnectTimeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => Err(ProxyError::ConnectTimeout),
        Ok(Err(e)) => Err(ProxyError::Connect(e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Closes idle connections once they reach the idle timeout, until the pool is gone.
async fn sweep(pool: Weak<Pool>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut idle = pool
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let (keep, expired) = std::mem::take(&mut *idle).into_iter().partition(|e| {
                now.duration_since(e.since) < pool.idle_timeout && !e.sender.is_closed()
            });
            *idle = keep;
            expired
        };
        // Dropped outside the lock.
        drop(expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(30)
    }

    #[tokio::test]
    async fn callbacks_keep_their_reserve_when_other_traffic_takes_every_shared_slot() {
        let slots = Slots::new(3, 1, Gauge::default());
        let a = slots.acquire(Lane::General, later()).await.unwrap();
        let b = slots.acquire(Lane::General, later()).await.unwrap();
        assert!(!a.reserved && !b.reserved);
        assert!(matches!(
            slots.acquire(Lane::General, later()).await,
            Err(ProxyError::Busy)
        ));
        let cb = slots.acquire(Lane::Callback, later()).await.unwrap();
        assert!(cb.reserved, "the callback got the reserved slot");
        assert!(slots.acquire(Lane::Callback, later()).await.is_err());
        // A shared slot freed is taken by whoever waits, a callback included.
        drop(a);
        assert!(
            !slots
                .acquire(Lane::Callback, later())
                .await
                .unwrap()
                .reserved
        );
        assert_eq!(slots.available(), (1, 0));
    }
}
