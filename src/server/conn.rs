//! Accepted connections: a global connection limit and a preface deadline.
//!
//! tonic serves whatever stream of connections it is given; Kinbar gives
//! it [`incoming`], which accepts from the listener and
//! - closes a connection at once when `max_connections` are already open
//!   (a permit is held for each connection's life), counted in
//!   `kinbar_connections_refused_total`;
//! - closes a connection that has not sent its first 24 bytes (the HTTP/2
//!   preface, or a TLS ClientHello) within the preface timeout, so idle and
//!   slow-preface connections cannot hold slots;
//! - never ends on an accept error (file descriptors exhausted, a reset
//!   during accept): it logs, waits a moment and accepts again.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a client must send before the deadline: the HTTP/2 preface.
const PREFACE_BYTES: usize = 24;

/// An accepted connection holding its slot.
pub struct Conn {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Until the first [`PREFACE_BYTES`] arrive.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    read: usize,
}

/// Connections accepted from `listener` under the limits above.
pub fn incoming(
    listener: TcpListener,
    max_connections: usize,
    preface_timeout: Duration,
) -> impl Stream<Item = io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(max_connections));
    futures::stream::unfold(
        (listener, 0u64, None),
        move |(listener, mut refused, mut last_logged)| {
            let slots = slots.clone();
            async move {
                loop {
                    let (tcp, peer) = match listener.accept().await {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed; accepting again");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        metrics::counter!("kinbar_connections_refused_total").increment(1);
                        refused += 1;
                        // One log line per second at most: a flood must not
                        // become a flood of logs.
                        if last_logged.is_none_or(|t: std::time::Instant| {
                            t.elapsed() >= Duration::from_secs(1)
                        }) {
                            tracing::warn!(
                                target: "kinbar::security",
                                %peer,
                                max_connections,
                                refused,
                                "connections refused: too many open connections"
                            );
                            last_logged = Some(std::time::Instant::now());
                            refused = 0;
                        }
                        drop(tcp);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let conn = Conn {
                        inner: tcp,
                        _permit: permit,
                        deadline: Some(Box::pin(tokio::time::sleep(preface_timeout))),
                        read: 0,
                    };
                    return Some((Ok(conn), (listener, refused, last_logged)));
                }
            }
        },
    )
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.read += buf.filled().len() - before;
                if this.read >= PREFACE_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                metrics::counter!("kinbar_connections_preface_timeouts_total").increment(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface or TLS handshake in time",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
