//! Connection hygiene on the public listeners: caps on open connections
//! (in total and per client address), a deadline for a request's header,
//! the keep-alive idle timeout, and the HTTP/2 limits.
//!
//! Pingora 0.9 offers some knobs and not others, so this module fills the
//! gaps at the layers it does expose:
//!
//! - **Caps** are decided in a [`ConnectionFilter`], right after `accept()`
//!   and before any TLS work: a connection over a cap is closed at once.
//!   The filter has no "closed" callback, so the count is kept by
//!   [`Guarded`], the `ServerApp` wrapping the proxy, which owns each
//!   connection for its whole life and releases its slot on drop. The filter
//!   counts a connection from accept; the wrapper adopts it after the TLS
//!   handshake. A handshake that fails never reaches the wrapper, so an
//!   unadopted entry is forgotten once Pingora's own handshake bound (a
//!   fixed 60 s in 0.9) has surely passed. Clients are counted by address
//!   (IPv4, or the /64 of an IPv6 address, so rotating inside one /64 does
//!   not multiply the cap); `TRUSTED_PROXIES` are exempt from the per-client
//!   cap (every request of a load balancer comes from its address) but not
//!   from the total.
//! - **Header deadline.** Pingora times out each *read* of a header, not the
//!   header as a whole, so a client sending a byte every few seconds keeps
//!   a connection for ever (slowloris). [`GatedStream`] wraps each
//!   connection's stream: from the first byte of a request (from accept for
//!   a new connection) the header must be complete — an empty line seen —
//!   within `header_timeout`. The bytes are held back until then, so when
//!   the deadline passes Pingora sees a connection closed before any byte
//!   and drops it quietly (no 4xx to a client that is not reading, no ERROR
//!   log line for an alert to page on). On an HTTP/2 connection the same
//!   deadline covers the client preface. [`HttpApp`] tells the stream where
//!   each HTTP/1 request starts (it runs right before Pingora reads one).
//! - **Keep-alive idle timeout** (HTTP/1, between requests) and the
//!   **HTTP/2** idle timeout, concurrent-stream and header-list limits are
//!   Pingora settings; [`HttpApp`] applies them to every connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::listeners::ConnectionFilter;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::{H2Options, default_h2_options};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use shortlink_runtime::metrics::Metrics;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long Pingora 0.9 lets a TLS handshake run (hard-coded there): after
/// this, a connection the filter admitted but the app never adopted is gone.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(61);

/// Header bytes held back while waiting for the end of a header. A longer
/// header is handed to Pingora (which rejects headers over 1 MiB) and the
/// deadline still applies.
const HOLD_MAX: usize = 64 * 1024;

/// The hygiene settings (from `EdgeConfig`).
#[derive(Clone, Debug)]
pub struct ConnSettings {
    /// Time allowed for a whole request header (and an HTTP/2 preface).
    pub header_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection (and
    /// on an HTTP/2 connection with no stream open).
    pub keepalive: Duration,
    /// Open connections allowed on the public listeners together.
    pub max_total: usize,
    /// Open connections allowed per client address (IPv6: per /64).
    pub max_per_client: usize,
    /// Peers exempt from the per-client cap (the trusted proxies).
    pub exempt: Vec<IpNet>,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub h2_max_streams: u32,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE, in bytes.
    pub h2_max_header_list: u32,
}

/// The key a client is counted under.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Clone)]
struct ConnMetrics {
    open: IntGauge,
    rejected: IntCounterVec,
    header_timeouts: IntCounter,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
    /// Admitted by the filter, not yet adopted by the app: peer address ->
    /// (when admitted, counted per client).
    pending: HashMap<SocketAddr, (Instant, bool)>,
    last_sweep: Option<Instant>,
}

/// Open-connection accounting shared by the accept filter and the app.
pub struct ConnTable {
    settings: ConnSettings,
    counts: Mutex<Counts>,
    metrics: ConnMetrics,
}

impl std::fmt::Debug for ConnTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnTable")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ConnTable {
    pub fn new(settings: ConnSettings, registry: &Metrics) -> Arc<Self> {
        let metrics = ConnMetrics {
            open: registry.register(
                IntGauge::new(
                    "edge_connections_open",
                    "Client connections open on the public listeners.",
                )
                .expect("valid metric"),
            ),
            rejected: registry.register(
                IntCounterVec::new(
                    Opts::new(
                        "edge_connections_rejected_total",
                        "Client connections closed at accept, by cap (per_client, total).",
                    ),
                    &["cap"],
                )
                .expect("valid metric"),
            ),
            header_timeouts: registry.register(
                IntCounter::new(
                    "edge_header_timeouts_total",
                    "Connections closed because a request header (or HTTP/2 preface) was not complete in time.",
                )
                .expect("valid metric"),
            ),
        };
        for cap in ["per_client", "total"] {
            metrics.rejected.with_label_values(&[cap]).inc_by(0);
        }
        Arc::new(Self {
            settings,
            counts: Mutex::new(Counts::default()),
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.settings.exempt.iter().any(|n| n.contains(&ip))
    }

    /// Decides at accept; an admitted connection is counted from now on.
    pub fn admit(&self, peer: SocketAddr) -> bool {
        let now = Instant::now();
        let per_client = !self.exempt(peer.ip());
        let key = client_key(peer.ip());
        let mut c = self.lock();
        if c.last_sweep
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            c.last_sweep = Some(now);
            Self::sweep(&mut c, now);
        }
        if c.total >= self.settings.max_total {
            drop(c);
            self.metrics.rejected.with_label_values(&["total"]).inc();
            tracing::debug!(peer = %peer, "connection refused: total cap");
            return false;
        }
        if per_client
            && c.per_client.get(&key).copied().unwrap_or(0) >= self.settings.max_per_client
        {
            drop(c);
            self.metrics
                .rejected
                .with_label_values(&["per_client"])
                .inc();
            tracing::debug!(peer = %peer, "connection refused: per-client cap");
            return false;
        }
        c.total += 1;
        if per_client {
            *c.per_client.entry(key).or_insert(0) += 1;
        }
        // A peer address repeating while still pending means the earlier
        // connection died in its handshake: release that one.
        if let Some((_, counted)) = c.pending.insert(peer, (now, per_client)) {
            Self::release_locked(&mut c, key, counted);
        }
        drop(c);
        self.metrics.open.inc();
        true
    }

    /// Forgets admitted connections whose handshake can no longer be
    /// running.
    fn sweep(c: &mut Counts, now: Instant) {
        let stale: Vec<(SocketAddr, bool)> = c
            .pending
            .iter()
            .filter(|(_, (t, _))| now.duration_since(*t) > HANDSHAKE_BOUND)
            .map(|(a, (_, counted))| (*a, *counted))
            .collect();
        for (addr, counted) in stale {
            c.pending.remove(&addr);
            Self::release_locked(c, client_key(addr.ip()), counted);
        }
    }

    fn release_locked(c: &mut Counts, key: IpAddr, counted: bool) {
        c.total = c.total.saturating_sub(1);
        if counted && let Some(n) = c.per_client.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&key);
            }
        }
    }

    /// Takes over the count of a connection the filter admitted (or counts
    /// one that did not pass the filter); released when the slot drops.
    fn adopt(self: &Arc<Self>, peer: Option<SocketAddr>) -> Slot {
        let Some(peer) = peer else {
            return Slot {
                table: None,
                key: None,
                counted: false,
            };
        };
        let key = client_key(peer.ip());
        let mut c = self.lock();
        let counted = match c.pending.remove(&peer) {
            Some((_, counted)) => counted,
            None => {
                // Not seen by the filter (or swept): count it now, without
                // refusing it, so the release below stays balanced.
                let counted = !self.exempt(peer.ip());
                c.total += 1;
                if counted {
                    *c.per_client.entry(key).or_insert(0) += 1;
                }
                self.metrics.open.inc();
                counted
            }
        };
        drop(c);
        Slot {
            table: Some(self.clone()),
            key: Some(key),
            counted,
        }
    }

    /// Connections counted now (for tests and health).
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

/// One counted connection; releases its count when dropped.
struct Slot {
    table: Option<Arc<ConnTable>>,
    key: Option<IpAddr>,
    counted: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let (Some(t), Some(key)) = (&self.table, self.key) {
            ConnTable::release_locked(&mut t.lock(), key, self.counted);
            t.metrics.open.dec();
        }
    }
}

/// The accept-time half of the caps.
#[derive(Debug)]
pub struct CapFilter(pub Arc<ConnTable>);

#[async_trait]
impl ConnectionFilter for CapFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        // No address (not TCP): nothing to count by; the app counts it.
        addr.is_none_or(|a| self.0.admit(*a))
    }
}

/// Where the next HTTP/1 request on a connection starts; shared by the
/// connection's [`GatedStream`] and, through a task-local, [`HttpApp`].
#[derive(Debug, Default)]
struct Gate {
    next_request: AtomicBool,
}

tokio::task_local! {
    static GATE: Arc<Gate>;
}

/// The `ServerApp` around the proxy: owns each connection's slot and wraps
/// its stream in a [`GatedStream`].
pub struct Guarded<A> {
    inner: Arc<A>,
    table: Arc<ConnTable>,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, table: Arc<ConnTable>) -> Self {
        Self {
            inner: Arc::new(inner),
            table,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()));
        let _slot = self.table.adopt(peer);
        let gate = Arc::new(Gate::default());
        let stream: Stream = Box::new(GatedStream::new(
            stream,
            gate.clone(),
            self.table.settings.header_timeout,
            self.table.metrics.header_timeouts.clone(),
        ));
        GATE.scope(gate, self.inner.process_new(stream, shutdown))
            .await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// The `HttpServerApp` around the proxy: keep-alive and HTTP/2 settings,
/// and the start of each HTTP/1 request for the header deadline.
pub struct HttpApp<A> {
    inner: Arc<A>,
    keepalive_s: u64,
    options: HttpServerOptions,
    h2_max_streams: u32,
    h2_max_header_list: u32,
}

impl<A> HttpApp<A> {
    pub fn new(inner: A, s: &ConnSettings) -> Self {
        let mut options = HttpServerOptions::default();
        options.h2_idle_timeout = Some(s.keepalive);
        Self {
            inner: Arc::new(inner),
            // Pingora counts keep-alive in whole seconds; 0 would mean "no
            // timeout".
            keepalive_s: s.keepalive.as_secs().max(1),
            options,
            h2_max_streams: s.h2_max_streams,
            h2_max_header_list: s.h2_max_header_list,
        }
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for HttpApp<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // HTTP/1 only (HTTP/2 streams run in tasks of their own, outside
        // the scope): Pingora is about to read this request's header.
        let _ = GATE.try_with(|g| g.next_request.store(true, Ordering::Relaxed));
        // Keep-alive stays off where Pingora turned it off (shutting down).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.keepalive_s));
        }
        self.inner.process_new_http(session, shutdown).await
    }

    fn h2_options(&self) -> Option<H2Options> {
        let mut o = default_h2_options();
        o.max_concurrent_streams(self.h2_max_streams);
        o.max_header_list_size(self.h2_max_header_list);
        Some(o)
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

/// Finds the empty line that ends an HTTP/1 header ("\n\n" or
/// "\n\r\n", as the parser accepts) across reads. The HTTP/2 client
/// preface ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") ends the same way.
#[derive(Clone, Copy, Debug, Default)]
struct HeaderEnd {
    tail: [u8; 2],
}

impl HeaderEnd {
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            let [p2, p1] = self.tail;
            if b == b'\n' && (p1 == b'\n' || (p1 == b'\r' && p2 == b'\n')) {
                return true;
            }
            self.tail = [p1, b];
        }
        false
    }
}

/// A connection's stream with the header deadline (see the module docs).
/// Writes and everything but reads pass straight through.
pub struct GatedStream {
    inner: Stream,
    gate: Arc<Gate>,
    limit: Duration,
    timeouts: IntCounter,
    /// Waiting for the end of a header.
    scanning: bool,
    /// Some bytes of the header being waited for were handed over already
    /// (it is longer than `HOLD_MAX`).
    released_any: bool,
    /// The client was cut off: reads see end of stream.
    closed: bool,
    held: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    end: HeaderEnd,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for GatedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedStream")
            .field("inner", &self.inner)
            .field("scanning", &self.scanning)
            .finish_non_exhaustive()
    }
}

impl GatedStream {
    /// A new connection: its first header (or preface) is due within
    /// `limit` from now.
    fn new(inner: Stream, gate: Arc<Gate>, limit: Duration, timeouts: IntCounter) -> Self {
        Self {
            inner,
            gate,
            limit,
            timeouts,
            scanning: true,
            released_any: false,
            closed: false,
            held: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            end: HeaderEnd::default(),
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
        }
    }

    fn hand_over(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.out.len() - self.out_pos);
        buf.put_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    fn release_held(&mut self) {
        if self.out.is_empty() {
            std::mem::swap(&mut self.out, &mut self.held);
        } else {
            self.out.append(&mut self.held);
        }
    }
}

impl AsyncRead for GatedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.gate.next_request.swap(false, Ordering::Relaxed) && !this.scanning {
            // A request on a kept-alive connection: its deadline starts
            // with its first byte (the idle wait is keep-alive's business).
            this.scanning = true;
            this.released_any = false;
            this.end = HeaderEnd::default();
            this.deadline = None;
        }
        if this.out_pos < this.out.len() {
            this.hand_over(buf);
            return Poll::Ready(Ok(()));
        }
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        if !this.scanning {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        loop {
            if let Some(d) = this.deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                this.timeouts.inc();
                this.scanning = false;
                this.deadline = None;
                this.held.clear();
                if this.released_any {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request header not complete in time",
                    )));
                }
                // Pingora has seen nothing of this request: to it, the
                // client left; it closes the connection without a word.
                this.closed = true;
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.held.clear();
                    this.scanning = false;
                    this.deadline = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        // The client left mid-header: nothing worth handing
                        // over.
                        this.held.clear();
                        this.scanning = false;
                        this.deadline = None;
                        this.closed = !this.released_any;
                        return Poll::Ready(Ok(()));
                    }
                    if this.deadline.is_none() {
                        this.deadline = Some(Box::pin(tokio::time::sleep(this.limit)));
                    }
                    let complete = this.end.feed(&tmp[..n]);
                    this.held.extend_from_slice(&tmp[..n]);
                    if complete {
                        this.scanning = false;
                        this.deadline = None;
                        this.release_held();
                    } else if this.held.len() >= HOLD_MAX {
                        this.released_any = true;
                        this.release_held();
                    }
                    if this.out_pos < this.out.len() {
                        this.hand_over(buf);
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for GatedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GatedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for GatedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GatedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GatedStream {
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

impl GetProxyDigest for GatedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for GatedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for GatedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        // Held bytes are invisible to a peek on the inner stream; peeking
        // only happens before the first read (h2c detection), when nothing
        // is held yet.
        if !self.held.is_empty() || self.out_pos < self.out.len() {
            return Ok(false);
        }
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_total: usize, max_per_client: usize, exempt: &[&str]) -> Arc<ConnTable> {
        ConnTable::new(
            ConnSettings {
                header_timeout: Duration::from_secs(10),
                keepalive: Duration::from_secs(60),
                max_total,
                max_per_client,
                exempt: exempt.iter().map(|n| n.parse().unwrap()).collect(),
                h2_max_streams: 100,
                h2_max_header_list: 65536,
            },
            &Metrics::new("edge", "conn-test"),
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn clients_are_keyed_by_address_and_ipv6_by_slash_64() {
        assert_eq!(
            client_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            client_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_ne!(
            client_key("2001:db8:1:2::1".parse().unwrap()),
            client_key("2001:db8:1:3::1".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn caps_count_from_accept_to_close() {
        let t = table(4, 2, &["10.9.9.9/32"]);
        assert!(t.admit(addr("10.0.0.1:1000")));
        assert!(t.admit(addr("10.0.0.1:1001")));
        assert!(!t.admit(addr("10.0.0.1:1002")), "per-client cap");
        // The app adopts one; closing it frees a slot for that client.
        let slot = t.adopt(Some(addr("10.0.0.1:1000")));
        assert_eq!(t.open(), 2);
        drop(slot);
        assert_eq!(t.open(), 1);
        assert!(t.admit(addr("10.0.0.1:1003")));
        // The trusted proxy is not capped per client, only in total.
        assert!(t.admit(addr("10.9.9.9:1")));
        assert!(t.admit(addr("10.9.9.9:2")));
        assert!(!t.admit(addr("10.9.9.9:3")), "total cap");
        assert!(!t.admit(addr("10.0.0.2:1")), "total cap for everyone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_handshake_that_never_finished_is_forgotten() {
        let t = table(10, 1, &[]);
        assert!(t.admit(addr("10.0.0.1:1000")));
        assert!(!t.admit(addr("10.0.0.1:1001")));
        tokio::time::advance(HANDSHAKE_BOUND + Duration::from_secs(2)).await;
        assert!(t.admit(addr("10.0.0.1:1002")), "stale entry swept");
        assert_eq!(t.open(), 1);
    }

    #[test]
    fn the_end_of_a_header_is_found_across_reads() {
        let mut e = HeaderEnd::default();
        assert!(!e.feed(b"GET / HTTP/1.1\r\nHost: a\r"));
        assert!(!e.feed(b"\n"));
        assert!(e.feed(b"\r\n"));
        assert!(HeaderEnd::default().feed(b"GET / HTTP/1.0\n\n"));
        assert!(!HeaderEnd::default().feed(b"X: a\r\nY: b\r\n"));
        assert!(HeaderEnd::default().feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        // One byte at a time, as a slowloris sends it.
        let mut e = HeaderEnd::default();
        let req = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n";
        let ends: Vec<bool> = req.iter().map(|b| e.feed(&[*b])).collect();
        assert_eq!(ends.iter().position(|x| *x), Some(req.len() - 1));
    }
}
