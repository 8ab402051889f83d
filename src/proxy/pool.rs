//! Keep-alive connections to the backend, over hyper's own HTTP/1 client connections.
//!
//! hyper-util's legacy client does the same job in general (any host, any scheme, HTTP/2,
//! connection racing); one backend over HTTP/1 needs far less, and on the gateway's hot path
//! its per-request boxing, extension bookkeeping and pool-key hashing cost more than
//! verifying the callback's signature. What this pool keeps, and why:
//!
//! - LIFO reuse of idle connections, at most `max_idle` of them;
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
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ProxyError;

type Sender = http1::SendRequest<Full<Bytes>>;

/// Where the backend is.
#[derive(Debug, Clone)]
enum Target {
    /// An address literal: connect without name resolution.
    Addr(SocketAddr),
    /// `host:port`, resolved on each new connection.
    Name(String),
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

/// The pool of one backend.
#[derive(Debug)]
pub struct Pool {
    target: Target,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

/// A connection lent to one request; give it back with [`Pool::put`] once the response body
/// has ended.
#[derive(Debug)]
pub struct Lease {
    sender: Sender,
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
            pool.put(self.sender, self.answered);
        }
    }
}

impl Pool {
    pub fn new(
        authority: &str,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Arc<Pool> {
        let target = match authority.parse::<SocketAddr>() {
            Ok(addr) => Target::Addr(addr),
            Err(_) => Target::Name(authority.to_owned()),
        };
        let pool = Arc::new(Pool {
            target,
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

    /// Sends `req` (origin-form URI, `Host` set) on a pooled connection, or a new one. The
    /// response comes with the lease of its connection, to be released when its body ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(sender))),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed under us. Try another.
                    Some(unsent) => req = unsent,
                    None => return Err(ProxyError::Upstream(root_cause(&e.into_error()))),
                },
            }
        }
        self.send_fresh(req).await
    }

    /// Sends `req` on a new connection, never a pooled one (for resending a request that met
    /// a pooled connection closing under it).
    pub async fn send_fresh(
        self: &Arc<Self>,
        req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let mut sender = self.connect().await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(sender))),
            Err(e) => Err(ProxyError::Upstream(root_cause(e.error()))),
        }
    }

    fn lease(self: &Arc<Self>, sender: Sender) -> Lease {
        Lease {
            sender,
            pool: Arc::downgrade(self),
            answered: Instant::now(),
        }
    }

    /// The most recently used idle connection that is ready for a request. Expired and
    /// closed ones are dropped (which closes them); one whose connection task has not yet
    /// caught up with the end of the previous response stays for the next checkout.
    fn checkout(&self) -> Option<Sender> {
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
            } else if entry.sender.is_ready() {
                return Some(idle.remove(i).sender);
            }
        }
        None
    }

    fn put(&self, sender: Sender, since: Instant) {
        if sender.is_closed() || since.elapsed() >= self.idle_timeout {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle { sender, since });
        }
    }

    async fn connect(&self) -> Result<Sender, ProxyError> {
        let connect = async {
            match &self.target {
                Target::Addr(addr) => TcpStream::connect(addr).await,
                Target::Name(name) => TcpStream::connect(name.as_str()).await,
            }
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => return Err(ProxyError::ConnectTimeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ProxyError::ConnectTimeout)
            }
            Ok(Err(e)) => return Err(ProxyError::Connect(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        // hyper's adaptive read buffer: an exact size would also cap the response head.
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Connect(root_cause(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
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

/// The innermost cause of a hyper error, for logs.
fn root_cause(e: &hyper::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
