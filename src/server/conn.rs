//! Accepted connections: a global connection limit and a preface deadline.
//!
//! tonic serves whatever stream of connections it is given; Kinbar gives
//! it [`incoming`], which accepts from the listener and
//! - closes a connection at once when `max_connections` are already open
//!   (a permit is held for each connection's life), counted in
//!   `kinbar_connections_refused_total`;
//! - does not serve a connection whose client address has spent its
//!   budget of HTTP/2 protocol errors (`penalty.rs`): it is held unread
//!   until the address is back in budget, then closed (counted in
//!   `kinbar_connections_penalized_total`), so a flood that `h2` cuts off
//!   (CONTINUATION, rapid reset) cannot simply reconnect;
//! - closes a connection that has not sent its first 24 bytes (the HTTP/2
//!   preface, or a TLS ClientHello) within the preface timeout, so idle and
//!   slow-preface connections cannot hold slots;
//! - never ends on an accept error (file descriptors exhausted, a reset
//!   during accept): it logs, waits a moment and accepts again;
//! - with TLS, completes each connection's whole handshake within the same
//!   deadline, concurrently (`tls.rs` holds the reloadable certificate);
//!   a failed handshake ends that connection only (RUSTSEC-2024-0376).

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

use super::penalty::{FrameScan, MAX_HELD, MAX_HOLD, PeerPenalties, peer_key};

/// Bytes a client must send before the deadline: the HTTP/2 preface.
const PREFACE_BYTES: usize = 24;

/// An accepted connection holding its slot.
pub struct Conn {
    inner: Io,
    _permit: OwnedSemaphorePermit,
    /// Until the first [`PREFACE_BYTES`] arrive.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    read: usize,
    /// The names (DNS and URI SANs, subject common names) of the client
    /// certificate the TLS handshake verified (mTLS), empty otherwise.
    client_names: Arc<[String]>,
    /// Where a GOAWAY with an error code is charged, and the frames
    /// written so far (`penalty.rs`).
    charged: Option<(Arc<PeerPenalties>, std::net::IpAddr)>,
    frames: FrameScan,
}

/// Plaintext, or TLS terminated by Kinbar (`tls.rs`).
enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Tcp(t) => t,
            Io::Tls(t) => t.get_ref().0,
        }
    }
}

/// The connection limits [`incoming`] applies.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections in all.
    pub max_connections: usize,
    /// HTTP/2 protocol errors a client address may cause (refilled one
    /// per second) before its new connections are refused; 0: no limit.
    pub protocol_errors_per_peer: u32,
    /// Time to send the first 24 bytes (and, with TLS, to finish the
    /// handshake).
    pub preface_timeout: Duration,
}

/// One warning per second at most for refusals of one kind: a flood must
/// not become a flood of logs.
struct Throttled {
    refused: u64,
    last_logged: Option<std::time::Instant>,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            refused: 0,
            last_logged: None,
        }
    }

    /// Counts one refusal; returns how many to report if it is time to log.
    fn count(&mut self) -> Option<u64> {
        self.refused += 1;
        if self
            .last_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_logged = Some(std::time::Instant::now());
            return Some(std::mem::take(&mut self.refused));
        }
        None
    }
}

/// Connections accepted from `listener` under the limits above; with
/// `tls`, each completes its whole TLS handshake within the preface
/// timeout, in a task of its own (a slow handshake never holds up the
/// others), with the certificate in force when it arrived.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
    tls: Option<Arc<super::tls::ReloadingTls>>,
) -> impl Stream<Item = io::Result<Conn>> {
    let Limits {
        max_connections,
        protocol_errors_per_peer,
        preface_timeout,
    } = limits;
    let slots = Arc::new(Semaphore::new(max_connections));
    let penalties = (protocol_errors_per_peer > 0)
        .then(|| Arc::new(PeerPenalties::new(protocol_errors_per_peer)));
    let holds = Arc::new(Semaphore::new(MAX_HELD));
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        let mut over_limit = Throttled::new();
        let mut penalized = Throttled::new();
        let mut last_pruned = std::time::Instant::now();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                // The server stopped taking connections.
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; accepting again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let charged = penalties.as_ref().map(|p| (p.clone(), peer_key(peer)));
            if let Some((penalties, key)) = &charged {
                if last_pruned.elapsed() >= PeerPenalties::PRUNE_EVERY {
                    penalties.prune();
                    last_pruned = std::time::Instant::now();
                }
                if let Some(wait) = penalties.refusal(*key) {
                    metrics::counter!("kinbar_connections_penalized_total").increment(1);
                    if let Some(refused) = penalized.count() {
                        tracing::warn!(
                            target: "kinbar::security",
                            %peer,
                            protocol_errors_per_peer,
                            refused,
                            "connections refused: this address keeps breaking HTTP/2 (its connections end in protocol errors)"
                        );
                    }
                    // Held unread until the address may connect again (its
                    // sender waits instead of reconnecting), then closed.
                    if let Ok(held) = holds.clone().try_acquire_owned() {
                        tokio::spawn(async move {
                            tokio::time::sleep(wait.min(MAX_HOLD)).await;
                            drop((tcp, held));
                        });
                    }
                    continue;
                }
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                metrics::counter!("kinbar_connections_refused_total").increment(1);
                if let Some(refused) = over_limit.count() {
                    tracing::warn!(
                        target: "kinbar::security",
                        %peer,
                        max_connections,
                        refused,
                        "connections refused: too many open connections"
                    );
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let deadline = tokio::time::Instant::now() + preface_timeout;
            let Some(tls) = &tls else {
                let conn = Conn {
                    inner: Io::Tcp(tcp),
                    _permit: permit,
                    deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
                    read: 0,
                    client_names: Arc::from([]),
                    charged,
                    frames: FrameScan::default(),
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let client_names = client_names(&stream);
                        let conn = Conn {
                            inner: Io::Tls(Box::new(stream)),
                            _permit: permit,
                            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
                            read: 0,
                            client_names,
                            charged,
                            frames: FrameScan::default(),
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("kinbar_tls_handshake_failures_total").increment(1);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("kinbar_connections_preface_timeouts_total").increment(1);
                        tracing::debug!(%peer, "TLS handshake not completed in time");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The names of the verified client certificate, if the client presented
/// one: its DNS and URI subject alternative names, then its subject's
/// common names (mTLS identities match any of them).
fn client_names(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Arc<[String]> {
    let Some(leaf) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    else {
        return Arc::from([]);
    };
    match webpki::EndEntityCert::try_from(leaf) {
        Ok(cert) => cert
            .valid_dns_names()
            .chain(cert.valid_uri_names())
            .map(str::to_string)
            .chain(common_names(cert.subject()))
            .collect(),
        Err(_) => Arc::from([]),
    }
}

/// The common names (OID 2.5.4.3) in a certificate subject, given as
/// webpki gives it: the contents of the Name SEQUENCE, without its tag and
/// length. Names in other string types (BMPString, TeletexString…) are
/// skipped; a subject that does not parse gives none.
fn common_names(subject: &[u8]) -> Vec<String> {
    const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
    // Wrap the contents back into a SEQUENCE for the DER reader.
    let mut der = vec![0x30];
    let len = subject.len();
    if len < 0x80 {
        der.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        der.push(0x80 | (bytes.len() - skip) as u8);
        der.extend_from_slice(&bytes[skip..]);
    }
    der.extend_from_slice(subject);
    let mut names = Vec::new();
    let parsed = yasna::parse_der(&der, |r| {
        r.read_sequence_of(|r| {
            r.read_set_of(|r| {
                r.read_sequence(|r| {
                    let oid = r.next().read_oid()?;
                    let value = r.next().read_tagged_der()?;
                    // UTF8String, PrintableString or IA5String only.
                    if oid.components().as_slice() == COMMON_NAME
                        && let Some(name) = value.as_str()
                    {
                        names.push(name.to_string());
                    }
                    Ok(())
                })
            })
        })
    });
    if parsed.is_err() {
        return Vec::new();
    }
    names
}

impl Connected for Conn {
    type ConnectInfo = crate::api::auth::PeerInfo;

    fn connect_info(&self) -> crate::api::auth::PeerInfo {
        let tcp: TcpConnectInfo = self.inner.tcp().connect_info();
        crate::api::auth::PeerInfo {
            remote: tcp.remote_addr(),
            client_names: self.client_names.clone(),
        }
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

impl Conn {
    /// Follows the `n` bytes just written; charges the client's address
    /// once if they complete a GOAWAY with an error code.
    fn written<'a>(&mut self, bufs: impl Iterator<Item = &'a [u8]>, mut n: usize) {
        let Some((penalties, key)) = &self.charged else {
            return;
        };
        if self.frames.failed {
            return;
        }
        for buf in bufs {
            if n == 0 {
                break;
            }
            let part = &buf[..n.min(buf.len())];
            n -= part.len();
            if self.frames.feed(part) {
                metrics::counter!("kinbar_connections_protocol_errors_total").increment(1);
                penalties.charge(*key);
                return;
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.written(std::iter::once(buf), n);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.written(bufs.iter().map(|b| &**b), n);
        }
        r
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

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(t) => t.is_write_vectored(),
            Io::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_flush(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Io::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}
