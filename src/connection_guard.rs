//! Slow and greedy clients, stopped at the connection, before any request is parsed.
//!
//! Sits between pingora's accept loop and its HTTP server: [`GuardedApp`] wraps the proxy
//! application. Each accepted connection first takes a slot under the global and the
//! per-IP connection bounds (`listen.max_connections`, `listen.max_connections_per_ip`;
//! over either, the connection is closed at once), and its stream is wrapped in
//! [`GuardedStream`], which holds the slot until the connection closes and enforces
//! `listen.header_timeout`: a request head must be complete within that time of its first
//! byte (of accepting, for a connection's first request). pingora itself only bounds each
//! single read, so a client sending one header byte every few seconds would otherwise keep
//! a connection open forever.
//!
//! The stream sees bytes, not requests, so it tells heads apart the cheap way: a head ends
//! at the first blank line (`\r\n\r\n`) after the stream starts waiting for one, and it
//! starts waiting again once datagate writes a final (non-1xx) response. Body bytes are
//! never timed by it (only pingora's per-read timeout applies to them).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Open connections, globally and per client IP.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<OpenConnections>,
    refused: prometheus::IntCounterVec,
    open_gauge: prometheus::IntGauge,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl ConnectionLimits {
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        refused: prometheus::IntCounterVec,
        open_gauge: prometheus::IntGauge,
    ) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            open: Mutex::new(OpenConnections::default()),
            refused,
            open_gauge,
        })
    }

    /// A slot for one connection from `ip` (`None` for a peer without one), or `None`
    /// when a bound is reached.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<ConnectionSlot> {
        let mut open = self.open.lock();
        if open.total >= self.max_total {
            drop(open);
            self.refused.with_label_values(&["global"]).inc();
            return None;
        }
        if let Some(ip) = ip {
            let count = open.by_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                drop(open);
                self.refused.with_label_values(&["per_ip"]).inc();
                return None;
            }
            *count += 1;
        }
        open.total += 1;
        self.open_gauge.inc();
        Some(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; gives its slot back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    ip: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(count) = open.by_ip.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                open.by_ip.remove(&ip);
            }
        }
        self.limits.open_gauge.dec();
    }
}

/// The proxy application behind the connection bounds and the head deadline.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    limits: Arc<ConnectionLimits>,
    header_timeout: Duration,
}

impl<A> GuardedApp<A> {
    pub fn new(inner: A, limits: Arc<ConnectionLimits>, header_timeout: Duration) -> Self {
        GuardedApp {
            inner: Arc::new(inner),
            limits,
            header_timeout,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A kept-alive connection comes back already guarded.
        let session: Stream = if session.as_any().is::<GuardedStream>() {
            session
        } else {
            let ip = session.get_socket_digest().and_then(|digest| {
                digest
                    .peer_addr()
                    .and_then(|address| address.as_inet())
                    .map(|address| address.ip())
            });
            let slot = self.limits.admit(ip)?;
            Box::new(GuardedStream::new(session, slot, self.header_timeout))
        };
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        // pingora closes idle kept-alive connections here at shutdown.
        self.inner.cleanup().await;
    }
}

/// Where a stream is in the request/response exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head; `matched` bytes of `\r\n\r\n` seen.
    Head { matched: u8 },
    /// The head is complete; body bytes and the response follow, untimed.
    Exchange,
}

/// Where a head scan stands after a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadScan {
    /// The read held the head's terminating `\r\n\r\n`.
    Complete,
    /// Still in the head; the read ended with `matched` bytes of the terminator.
    Partial { matched: u8 },
}

const HEAD_END: &[u8; 4] = b"\r\n\r\n";

/// A searcher for [`HEAD_END`], built once: `memmem::find` builds one per call, which
/// cost more than the search itself on every read of a request head.
fn head_end_finder() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(HEAD_END));
    &FINDER
}

/// Scans `bytes` for the end of a request head, `matched` bytes of the terminator having
/// ended the previous read.
fn scan_head(matched: u8, bytes: &[u8]) -> HeadScan {
    // A terminator split across reads: continue its match byte by byte. Mismatching on
    // `\r` restarts the match at one byte (the terminator's only self-overlap).
    let mut matched = usize::from(matched);
    let mut consumed = 0;
    while matched > 0 && consumed < bytes.len() {
        let byte = bytes[consumed];
        consumed += 1;
        matched = if byte == HEAD_END[matched] {
            matched + 1
        } else {
            usize::from(byte == b'\r')
        };
        if matched == HEAD_END.len() {
            return HeadScan::Complete;
        }
    }
    if matched > 0 {
        // Every byte continued the match (`consumed == bytes.len()`); it is below 4.
        return HeadScan::Partial {
            matched: matched as u8,
        };
    }
    let rest = &bytes[consumed..];
    if head_end_finder().find(rest).is_some() {
        return HeadScan::Complete;
    }
    let matched = (1..HEAD_END.len())
        .rev()
        .find(|length| rest.ends_with(&HEAD_END[..*length]))
        .unwrap_or(0);
    HeadScan::Partial {
        matched: matched as u8,
    }
}

/// A client stream with a connection slot and a head deadline.
pub struct GuardedStream {
    inner: Stream,
    _slot: ConnectionSlot,
    header_timeout: Duration,
    phase: Phase,
    /// Armed while a head is awaited; `None` between requests on a kept-alive connection
    /// until the next head's first byte (pingora's keep-alive timeout covers the idle wait).
    deadline: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl GuardedStream {
    fn new(inner: Stream, slot: ConnectionSlot, header_timeout: Duration) -> Self {
        GuardedStream {
            inner,
            _slot: slot,
            header_timeout,
            phase: Phase::Head { matched: 0 },
            deadline: Some(Box::pin(tokio::time::sleep(header_timeout))),
        }
    }

    /// Advances the head scan over bytes just read. The deadline is armed only when a
    /// read ends inside a head: a head that arrives whole in one read (nearly every
    /// request on a kept-alive connection) never registers a timer.
    fn scan(&mut self, bytes: &[u8]) {
        let Phase::Head { matched } = self.phase else {
            return;
        };
        if bytes.is_empty() {
            return;
        }
        match scan_head(matched, bytes) {
            HeadScan::Complete => {
                self.phase = Phase::Exchange;
                self.deadline = None;
            }
            HeadScan::Partial { matched } => {
                self.phase = Phase::Head { matched };
                if self.deadline.is_none() {
                    self.deadline = Some(Box::pin(tokio::time::sleep(self.header_timeout)));
                }
            }
        }
    }

    /// A write of a final response head re-arms the scan for the next request; interim
    /// `1xx` answers (`100 Continue`) do not, the body follows them.
    fn wrote(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Exchange
            && bytes.len() >= 10
            && bytes.starts_with(b"HTTP/1.")
            && bytes[9] != b'1'
        {
            self.phase = Phase::Head { matched: 0 };
            self.deadline = None;
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buffer.filled().len();
        match Pin::new(&mut this.inner).poll_read(context, buffer) {
            Poll::Ready(Ok(())) => {
                this.scan(&buffer.filled()[before..]);
                // A client trickling bytes keeps every read ready: check here too.
                if this
                    .deadline
                    .as_ref()
                    .is_some_and(|deadline| deadline.is_elapsed())
                {
                    return Poll::Ready(Err(head_timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut()
                    && deadline.as_mut().poll(context).is_ready()
                {
                    return Poll::Ready(Err(head_timed_out()));
                }
                Poll::Pending
            }
        }
    }
}

fn head_timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "request head not complete within listen.header_timeout",
    )
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(context, bytes);
        if let Poll::Ready(Ok(written)) = &result
            && *written > 0
        {
            this.wrote(bytes);
        }
        result
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(context, buffers);
        if let Poll::Ready(Ok(written)) = &result
            && *written > 0
            && let Some(first) = buffers.iter().find(|buffer| !buffer.is_empty())
        {
            this.wrote(first);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

/// Downstream connections are plain TCP (datagate terminates no TLS), so there is no TLS
/// state to pass through beyond the digest.
impl Ssl for GuardedStream {
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buffer: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buffer).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn limits(total: usize, per_ip: usize) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(
            total,
            per_ip,
            prometheus::IntCounterVec::new(prometheus::Opts::new("r", "r"), &["bound"]).unwrap(),
            prometheus::IntGauge::new("o", "o").unwrap(),
        )
    }

    /// The scan as a byte-at-a-time search over everything read so far.
    fn head_complete_naively(reads: &[&[u8]]) -> bool {
        reads.concat().windows(4).any(|window| window == HEAD_END)
    }

    #[test]
    fn the_head_scan_finds_the_terminator_however_reads_split_it() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\r\n\r";
        for first in 0..head.len() {
            for second in first..head.len() {
                let reads = [&head[..first], &head[first..second], &head[second..]];
                let mut state = HeadScan::Partial { matched: 0 };
                let mut seen: Vec<&[u8]> = Vec::new();
                for read in reads {
                    seen.push(read);
                    if let HeadScan::Partial { matched } = state
                        && !read.is_empty()
                    {
                        state = scan_head(matched, read);
                    }
                    assert_eq!(
                        state == HeadScan::Complete,
                        head_complete_naively(&seen),
                        "split at {first} and {second}"
                    );
                }
            }
        }
        assert_eq!(scan_head(0, b"a\r\n\r"), HeadScan::Partial { matched: 3 });
        assert_eq!(scan_head(3, b"\r\r\n"), HeadScan::Partial { matched: 2 });
        assert_eq!(scan_head(3, b"\r\r\n\r\n"), HeadScan::Complete);
        assert_eq!(scan_head(2, b"x\r\n\r\n"), HeadScan::Complete);
        assert_eq!(scan_head(1, b"\n"), HeadScan::Partial { matched: 2 });
    }

    #[test]
    fn per_ip_and_global_bounds_hold_and_slots_come_back() {
        let limits = limits(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(Some(a)).unwrap();
        let _second = limits.admit(Some(a)).unwrap();
        assert!(limits.admit(Some(a)).is_none(), "per-IP bound");
        let _third = limits.admit(Some(b)).unwrap();
        assert!(limits.admit(Some(b)).is_none(), "global bound");
        assert_eq!(limits.refused.with_label_values(&["per_ip"]).get(), 1);
        assert_eq!(limits.refused.with_label_values(&["global"]).get(), 1);
        drop(first);
        assert_eq!(limits.open_gauge.get(), 2);
        let _again = limits.admit(Some(a)).unwrap();
        assert_eq!(limits.open_gauge.get(), 3);
    }
}
