//! The listeners: an accept loop that serves a poem [`Endpoint`] over hyper's own HTTP/1
//! connection machinery, with a connection cap, and the stop sequence of one listener.
//!
//! # Why not `poem::Server`
//!
//! poem's server builds hyper without a timer, so hyper cannot enforce a header read timeout and
//! a client that trickles a request head one byte a minute holds a connection forever. Scanning
//! the bytes for the end of a head ourselves gets HTTP wrong (a leading blank line, a second
//! pipelined request, `Expect: 100-continue`, bare-LF heads). Here hyper is given a timer and a
//! `header_read_timeout`, and it times every head itself, including the wait for the next request
//! on a kept-alive connection (hyper starts that timer as soon as a response is written, so an
//! idle keep-alive connection lives at most the header read timeout, or the idle timeout if that
//! is shorter). poem's `Request` converts from `http::Request<hyper::body::Incoming>`, so the
//! same endpoint serves as before.
//!
//! # The connection cap
//!
//! A permit is taken before each accept: at `max_connections` open connections the loop stops
//! accepting and new clients wait in the kernel's backlog. A cap full of idle keep-alive
//! connections must not make a new client wait for an idle timeout, so while the cap is reached
//! the loop closes idle connections (no request in flight, at least one served), oldest first
//! and gracefully, whenever one is or becomes idle. Connections still sending their first head
//! are not idle: the header read timeout bounds them.
//!
//! # HTTP/2
//!
//! Off. The public port speaks HTTP/1.1 only (the original's clients do); an HTTP/2
//! prior-knowledge preface is a malformed HTTP/1 request and the connection is closed.
//!
//! # Stopping
//!
//! When `shutdown` is cancelled the loop stops accepting, asks every connection to finish its
//! in-flight request and close, waits up to `shutdown_timeout`, then drops whatever is left.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, Request};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The response body type poem converts its responses into for hyper.
type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;

/// Which listener, as the `listener` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerName {
    /// The public API port.
    Public,
    /// The operators' port.
    Admin,
}

impl ListenerName {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Admin => "admin",
        }
    }
}

/// Why a connection closed: the `reason` label of `shout_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, or the exchange ended without keep-alive.
    Done,
    /// A request head did not arrive within the header read timeout (hyper's own timer).
    HeaderTimeout,
    /// No request for the idle timeout.
    Idle,
    /// Closed while idle to make room at the connection cap.
    EvictedIdle,
    /// Closed by the listener's stop sequence.
    Shutdown,
    /// A request head hyper could not parse (an HTTP/2 preface included); hyper answers 400.
    Malformed,
    /// A request head over hyper's size limit; hyper answers 431.
    TooLarge,
    /// The client went away in the middle of a request.
    Incomplete,
    /// Any other error of the connection (resets, write failures).
    IoError,
    /// Still open when the shutdown timeout ran out, and dropped.
    Aborted,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 10] = [
        Self::Done,
        Self::HeaderTimeout,
        Self::Idle,
        Self::EvictedIdle,
        Self::Shutdown,
        Self::Malformed,
        Self::TooLarge,
        Self::Incomplete,
        Self::IoError,
        Self::Aborted,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::HeaderTimeout => "header_timeout",
            Self::Idle => "idle",
            Self::EvictedIdle => "evicted_idle",
            Self::Shutdown => "shutdown",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::Incomplete => "incomplete",
            Self::IoError => "io_error",
            Self::Aborted => "aborted",
        }
    }

    /// Classifies how hyper's connection future ended.
    fn from_hyper(result: &Result<(), hyper::Error>) -> Self {
        match result {
            Ok(()) => Self::Done,
            Err(e) if e.is_timeout() => Self::HeaderTimeout,
            Err(e) if e.is_parse_too_large() => Self::TooLarge,
            Err(e) if e.is_parse() || e.is_parse_version_h2() => Self::Malformed,
            Err(e) if e.is_incomplete_message() => Self::Incomplete,
            Err(_) => Self::IoError,
        }
    }
}

/// The connection metric families, registered once on the shared registry.
#[derive(Debug, Clone)]
pub struct ConnectionMetricFamilies {
    open: IntGaugeVec,
    max: IntGaugeVec,
    closed: IntCounterVec,
}

impl ConnectionMetricFamilies {
    /// Registers `shout_connections_open`, `shout_connections_max` and
    /// `shout_connections_closed_total` on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let open = IntGaugeVec::new(
            Opts::new("shout_connections_open", "Open connections by listener."),
            &["listener"],
        )?;
        let max = IntGaugeVec::new(
            Opts::new(
                "shout_connections_max",
                "The connection cap of each listener.",
            ),
            &["listener"],
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "shout_connections_closed_total",
                "Closed connections by listener and reason.",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(max.clone()))?;
        registry.register(Box::new(closed.clone()))?;
        Ok(Self { open, max, closed })
    }

    /// The series of one listener, every reason resolved up front.
    pub fn listener(&self, name: ListenerName) -> ConnectionMetrics {
        let label = name.as_str();
        ConnectionMetrics {
            open: self.open.with_label_values(&[label]),
            max: self.max.with_label_values(&[label]),
            closed: CloseReason::ALL.map(|r| self.closed.with_label_values(&[label, r.as_str()])),
        }
    }
}

/// One listener's connection series.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    open: IntGauge,
    /// The cap.
    max: IntGauge,
    /// Closed connections, indexed by [`CloseReason`].
    closed: [IntCounter; CloseReason::ALL.len()],
}

/// How one listener treats its connections.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// The `listener` label.
    pub name: ListenerName,
    /// Most open connections.
    pub max_connections: usize,
    /// Time allowed for a complete request head, including the wait for the next request on a
    /// kept-alive connection.
    pub header_read_timeout: Duration,
    /// Close a connection with no request in flight for this long.
    pub idle_timeout: Duration,
    /// Longest wait for in-flight requests once the listener stops.
    pub shutdown_timeout: Duration,
}

/// The shared state of one connection, seen by its task and by the accept loop.
#[derive(Debug)]
struct Connection {
    /// Requests being served on it now.
    in_flight: AtomicUsize,
    /// Whether it served a request, so that it counts as an idle keep-alive connection.
    served: AtomicBool,
    /// When it last went idle, in milliseconds since the listener started.
    idle_since_ms: AtomicU64,
    /// Cancelled to close it gracefully to make room at the cap.
    evict: CancellationToken,
}

/// Every open connection of a listener, for eviction at the cap.
#[derive(Debug)]
struct Connections {
    /// Open connections by id.
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Signalled when a connection becomes idle.
    became_idle: Notify,
    /// The origin of `idle_since_ms`.
    epoch: Instant,
}

impl Connections {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Closes the connection idle the longest, if any is idle; returns whether one was.
    fn evict_one_idle(&self) -> bool {
        let Ok(open) = self.open.lock() else {
            return false;
        };
        let oldest = open
            .values()
            .filter(|c| {
                c.served.load(Ordering::Acquire)
                    && c.in_flight.load(Ordering::Acquire) == 0
                    && !c.evict.is_cancelled()
            })
            .min_by_key(|c| c.idle_since_ms.load(Ordering::Acquire));
        match oldest {
            Some(connection) => {
                connection.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Counts a request in flight on a connection for as long as it lives (also when cancelled).
struct InFlight {
    connection: Arc<Connection>,
    connections: Arc<Connections>,
}

impl InFlight {
    fn start(connection: &Arc<Connection>, connections: &Arc<Connections>) -> Self {
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            connection: connection.clone(),
            connections: connections.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.connection.served.store(true, Ordering::Release);
        self.connection
            .idle_since_ms
            .store(self.connections.now_ms(), Ordering::Release);
        if self.connection.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.connections.became_idle.notify_one();
        }
    }
}

/// Serves `endpoint` on `listener` until `shutdown` is cancelled, then stops (see the module
/// docs). Returns once every connection closed or the shutdown timeout ran out.
pub async fn run<E>(
    listener: TcpListener,
    endpoint: E,
    config: ListenerConfig,
    metrics: ConnectionMetrics,
    shutdown: CancellationToken,
) where
    E: Endpoint + 'static,
{
    let endpoint = Arc::new(endpoint);
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let permits = Arc::new(Semaphore::new(config.max_connections));
    metrics
        .max
        .set(i64::try_from(config.max_connections).unwrap_or(i64::MAX));
    let connections = Arc::new(Connections {
        open: Mutex::new(HashMap::new()),
        became_idle: Notify::new(),
        epoch: Instant::now(),
    });
    let tasks = TaskTracker::new();
    // Cancelled when the shutdown timeout runs out: connections still open are dropped.
    let abort = CancellationToken::new();
    let mut next_id: u64 = 0;

    loop {
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = acquire(&permits, &connections) => permit,
        };
        let Some(permit) = permit else { break };
        let (stream, remote) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically out of file descriptors: wait a little rather than spin, which
                    // also bounds this log line's rate.
                    tracing::warn!(listener = config.name.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small answers go out at once rather than waiting for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        next_id = next_id.wrapping_add(1);
        let connection = Arc::new(Connection {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(connections.now_ms()),
            evict: shutdown.child_token(),
        });
        if let Ok(mut open) = connections.open.lock() {
            open.insert(next_id, connection.clone());
        }
        let task = ConnectionTask {
            id: next_id,
            stream,
            local,
            remote,
            connection,
            connections: connections.clone(),
            endpoint: endpoint.clone(),
            config: config.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            abort: abort.clone(),
            _permit: permit,
        };
        tasks.spawn(task.serve());
    }

    drop(listener);
    tasks.close();
    if tokio::time::timeout(config.shutdown_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = config.name.as_str(),
            open = tasks.len(),
            "shutdown timeout: dropping connections still open"
        );
        abort.cancel();
        tasks.wait().await;
    }
}

/// A connection slot; at the cap, closes idle connections until one frees up. `None` only if
/// the semaphore was closed, which never happens.
async fn acquire(
    permits: &Arc<Semaphore>,
    connections: &Connections,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    loop {
        connections.evict_one_idle();
        tokio::select! {
            permit = permits.clone().acquire_owned() => return permit.ok(),
            () = connections.became_idle.notified() => {}
        }
    }
}

/// Everything one connection's task owns.
struct ConnectionTask<E> {
    id: u64,
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    connection: Arc<Connection>,
    connections: Arc<Connections>,
    endpoint: Arc<E>,
    config: ListenerConfig,
    metrics: ConnectionMetrics,
    shutdown: CancellationToken,
    abort: CancellationToken,
    /// The connection's share of the cap, released when the task ends.
    _permit: OwnedSemaphorePermit,
}

impl<E: Endpoint + 'static> ConnectionTask<E> {
    async fn serve(self) {
        let ConnectionTask {
            id,
            stream,
            local,
            remote,
            connection,
            connections,
            endpoint,
            config,
            metrics,
            shutdown,
            abort,
            _permit,
        } = self;
        metrics.open.inc();
        let service = {
            let (connection, connections) = (connection.clone(), connections.clone());
            hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let in_flight = InFlight::start(&connection, &connections);
                let endpoint = endpoint.clone();
                async move {
                    let request: Request = (
                        request,
                        LocalAddr(Addr::SocketAddr(local)),
                        RemoteAddr(Addr::SocketAddr(remote)),
                        http::uri::Scheme::HTTP,
                    )
                        .into();
                    let response = endpoint.get_response(request).await;
                    drop(in_flight);
                    Ok::<_, Infallible>(http::Response::<BoxBody>::from(response))
                }
            })
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);

        let stop = tokio::select! {
            result = conn.as_mut() => Stop::Closed(CloseReason::from_hyper(&result)),
            () = connection.evict.cancelled() => Stop::Asked,
            () = idle(&connection, &connections, config.idle_timeout) => Stop::Idle,
        };
        let reason = match stop {
            Stop::Closed(reason) => reason,
            Stop::Idle | Stop::Asked => {
                let planned = if matches!(stop, Stop::Idle) {
                    CloseReason::Idle
                } else if shutdown.is_cancelled() {
                    CloseReason::Shutdown
                } else {
                    CloseReason::EvictedIdle
                };
                // Finish what is in flight, then close.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => planned,
                    () = abort.cancelled() => CloseReason::Aborted,
                }
            }
        };
        metrics.closed[CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0)]
        .inc();
        metrics.open.dec();
        if let Ok(mut open) = connections.open.lock() {
            open.remove(&id);
        }
    }
}

/// Why a connection's serving stopped.
enum Stop {
    /// hyper's connection ended by itself.
    Closed(CloseReason),
    /// Evicted at the cap, or the listener is stopping.
    Asked,
    /// No request for the idle timeout.
    Idle,
}

/// Resolves once `connection` has had no request in flight for `timeout`.
async fn idle(connection: &Connection, connections: &Connections, timeout: Duration) {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    loop {
        let idle_for = connections
            .now_ms()
            .saturating_sub(connection.idle_since_ms.load(Ordering::Acquire));
        let busy = connection.in_flight.load(Ordering::Acquire) > 0;
        if !busy && idle_for >= timeout_ms {
            return;
        }
        // Busy: look again a whole timeout later (the request's end restarts the idle clock).
        let wait = if busy {
            timeout_ms
        } else {
            timeout_ms.saturating_sub(idle_for).max(1)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}
