//! Connection guards for the public listener: a cap on open connections and a request-head
//! read timeout, so that slow or idle clients cannot hold the service.
//!
//! poem's server has an idle timeout but no header read timeout, and hyper's own is not
//! reachable through it. [`GuardedAcceptor`] wraps the TCP acceptor and every connection it
//! hands out in [`GuardedIo`], which tracks the HTTP/1 request head on the read side:
//!
//! - **Head**: from the accept (or from the first byte of the next request on a kept-alive
//!   connection) the complete head (up to the blank line) must arrive within `header_timeout`;
//!   otherwise reads fail with `TimedOut` and the connection is closed. A client that sends half
//!   a request and stalls (slowloris) holds a connection for at most that long.
//! - **Body**: after the head, reads are not timed here; the body is read under the request's
//!   own limits.
//! - **Idle**: once the response is written, waiting for the next request is governed by the
//!   server's idle timeout, not by this one.
//!
//! The cap is a semaphore: at `max_connections` open connections the acceptor stops accepting
//! and new connections wait in the kernel's backlog until one closes, instead of the process
//! running out of file descriptors.
//!
//! The head end is found by scanning for `\r\n\r\n`; a body that contains that sequence only
//! ends the head phase early, which is harmless.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Wraps an acceptor with a connection cap and a head read timeout.
pub struct GuardedAcceptor<A> {
    /// The TCP acceptor.
    inner: A,
    /// One permit per open connection.
    permits: Arc<Semaphore>,
    /// Time allowed for a complete request head.
    header_timeout: Duration,
}

impl<A> GuardedAcceptor<A> {
    /// Guards `inner` with at most `max_connections` open connections.
    pub fn new(inner: A, max_connections: usize, header_timeout: Duration) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max_connections)),
            header_timeout,
        }
    }
}

impl<A: Acceptor> Acceptor for GuardedAcceptor<A> {
    type Io = GuardedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| io::Error::other("the connection semaphore was closed"))?;
        let (io, local, remote, scheme) = self.inner.accept().await?;
        Ok((
            GuardedIo::new(io, permit, self.header_timeout),
            local,
            remote,
            scheme,
        ))
    }
}

/// Where a connection is in its request cycle.
enum Phase {
    /// Reading a request head, which must be complete by the deadline.
    Head {
        /// How many bytes of `\r\n\r\n` the last bytes read matched.
        matched: u8,
    },
    /// Head complete; the body and the response are not timed here.
    Body,
    /// Response written; the next byte read starts a new head.
    Idle,
}

/// A connection with its head timeout and its share of the connection cap.
pub struct GuardedIo<T> {
    /// The TCP stream.
    inner: T,
    /// Released when the connection closes.
    _permit: OwnedSemaphorePermit,
    /// Time allowed for a complete request head.
    header_timeout: Duration,
    /// When the current head must be complete. One timer per connection, reset for each head
    /// and polled only when a read would wait, so a head that arrives in one read (the usual
    /// case) never touches the timer wheel.
    deadline: Pin<Box<Sleep>>,
    /// Where the connection is.
    phase: Phase,
}

impl<T> GuardedIo<T> {
    fn new(inner: T, permit: OwnedSemaphorePermit, header_timeout: Duration) -> Self {
        Self {
            inner,
            _permit: permit,
            header_timeout,
            deadline: Box::pin(tokio::time::sleep(header_timeout)),
            phase: Phase::Head { matched: 0 },
        }
    }

    /// Advances the head scan over newly read bytes.
    fn observe(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if matches!(self.phase, Phase::Idle) {
            self.deadline
                .as_mut()
                .reset(Instant::now() + self.header_timeout);
            self.phase = Phase::Head { matched: 0 };
        }
        if let Phase::Head { matched } = &mut self.phase {
            const END: &[u8; 4] = b"\r\n\r\n";
            for &byte in bytes {
                *matched = if byte == END[usize::from(*matched)] {
                    *matched + 1
                } else if byte == b'\r' {
                    1
                } else {
                    0
                };
                if *matched == 4 {
                    self.phase = Phase::Body;
                    return;
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.observe(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending
                if matches!(this.phase, Phase::Head { .. })
                    && this.deadline.as_mut().poll(cx).is_ready() =>
            {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request head was not received within the header read timeout",
                )))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) && matches!(self.phase, Phase::Body) {
            self.phase = Phase::Idle;
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) && matches!(self.phase, Phase::Body) {
            self.phase = Phase::Idle;
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
