//! The client connection's socket, with nginx's `send_timeout`: when the client stops accepting
//! bytes (a zero TCP window), a write that makes no progress for `server.send_timeout` fails,
//! hyper ends the connection, and the response body it was sending (with the backend
//! connection behind it) is dropped. Without it a client that never reads holds its
//! connection slot and a backend connection for ever.
//!
//! One timer per connection, created the first time a write blocks and reset after that (no
//! timer at all for connections whose writes never block, which is nearly all of them).
//! HTTP/2 streams whose flow-control window stays shut while the socket is fine are the
//! connection watchdog's business ([`super::conn`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

/// A client socket whose writes must make progress within `timeout`.
pub struct SendDeadline<I> {
    inner: I,
    timeout: Duration,
    /// Armed while a write is blocked.
    timer: Option<Pin<Box<Sleep>>>,
    blocked: bool,
    /// `connections_closed_total{reason="send_timeout"}`.
    expired: Counter,
}

impl<I> SendDeadline<I> {
    pub fn new(inner: I, timeout: Duration, expired: Counter) -> Self {
        SendDeadline {
            inner,
            timeout,
            timer: None,
            blocked: false,
            expired,
        }
    }

    /// Called when a write could not proceed: arms the deadline at the first block, then
    /// fails the write once it has passed.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if !self.blocked {
            self.blocked = true;
            let at = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        ready!(timer.as_mut().poll(cx));
        self.expired.inc();
        tracing::debug!(
            "the client accepted no data for {:?}: closing",
            self.timeout
        );
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client accepted no data within send_timeout",
        )))
    }

    fn progressed<T>(&mut self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.blocked = false;
        result
    }
}

impl<I: Read + Unpin> Read for SendDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for SendDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.blocked(cx),
            done => self.progressed(done),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.blocked(cx),
            done => self.progressed(done),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.blocked(cx),
            done => self.progressed(done),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.blocked(cx),
            done => self.progressed(done),
        }
    }
}
