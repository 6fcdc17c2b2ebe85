//! The process's life around the request path: when it is ready, how it drains.
//!
//! Sits beside the proxy, not in it. `/readyz` answers 200 only once the proxy port has
//! accepted a connection (a probe connects to it after start-up: a bound port that answers
//! is the only proof the listener is up) — the snapshot and the store are loaded before
//! the state exists at all. On SIGTERM the process turns "draining" (`/readyz` 503 with the
//! reason, so load balancers stop sending), optionally keeps accepting for
//! `shutdown.drain_delay` while they notice, then pingora stops accepting and in-flight
//! requests get up to `shutdown.grace_period` to finish; the process exits as soon as none
//! is left. SIGQUIT is pingora's graceful upgrade: the listening socket is handed to a new
//! process started with `datagate run --upgrade`, and this one drains the same way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use serde::Deserialize;

use crate::metrics::Metrics;

/// `shutdown` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take to finish after SIGTERM (or SIGQUIT) before
    /// the process exits anyway.
    #[serde(
        default = "default_grace_period",
        with = "crate::config::duration_text"
    )]
    pub grace_period: Duration,
    /// After SIGTERM, keep accepting (while `/readyz` says draining) for this long, so a
    /// load balancer can take the replica out of rotation first.
    #[serde(default, with = "crate::config::duration_text")]
    pub drain_delay: Duration,
    /// The Unix socket the old and the new process hand the listening socket over in a
    /// graceful upgrade (`datagate run --upgrade`, then SIGQUIT to the old one).
    #[serde(default = "default_upgrade_socket")]
    pub upgrade_socket: String,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace_period: default_grace_period(),
            drain_delay: Duration::ZERO,
            upgrade_socket: default_upgrade_socket(),
        }
    }
}

fn default_grace_period() -> Duration {
    Duration::from_secs(30)
}

fn default_upgrade_socket() -> String {
    "/tmp/datagate-upgrade.sock".to_string()
}

/// Why `/readyz` says no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The proxy port has not accepted a connection yet.
    Starting,
    /// A shutdown or an upgrade began; `reason` says which.
    Draining { reason: &'static str },
}

/// Readiness and drain state, shared by the admin listener and the signal handling.
#[derive(Debug, Default)]
pub struct Lifecycle {
    proxy_accepting: AtomicBool,
    draining: Mutex<Option<&'static str>>,
}

impl Lifecycle {
    /// `None` when ready to take traffic.
    pub fn not_ready(&self) -> Option<NotReady> {
        if let Some(reason) = *self.draining.lock() {
            return Some(NotReady::Draining { reason });
        }
        if !self.proxy_accepting.load(Ordering::SeqCst) {
            return Some(NotReady::Starting);
        }
        None
    }

    pub fn mark_proxy_accepting(&self) {
        self.proxy_accepting.store(true, Ordering::SeqCst);
    }

    pub fn begin_draining(&self, reason: &'static str) {
        let mut draining = self.draining.lock();
        if draining.is_none() {
            tracing::info!(reason, "draining: /readyz now answers 503");
            *draining = Some(reason);
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.lock().is_some()
    }
}

/// Where to connect to prove the proxy listens: its address, with an unspecified IP
/// (`0.0.0.0`, `::`) replaced by loopback.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Connects to the proxy port until it answers, then marks the proxy accepting (on a
/// thread of its own; pingora binds the port on its own runtime, after `run` starts).
pub fn probe_until_accepting(lifecycle: Arc<crate::state::AppState>, listen: SocketAddr) {
    let address = probe_address(listen);
    let spawned = std::thread::Builder::new()
        .name("datagate-ready-probe".to_string())
        .spawn(move || {
            let started = Instant::now();
            loop {
                if TcpStream::connect_timeout(&address, Duration::from_millis(250)).is_ok() {
                    lifecycle.lifecycle.mark_proxy_accepting();
                    tracing::info!(
                        %address,
                        after_ms = started.elapsed().as_millis() as u64,
                        "proxy accepting; ready"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the readiness probe; /readyz stays 503");
    }
}

/// pingora's signal handling with a drain state in front: SIGTERM drains then stops
/// gracefully, SIGQUIT hands the sockets over (graceful upgrade), SIGINT stops at once
/// (after flushing queued traces).
pub struct DrainingSignals {
    pub state: Arc<crate::state::AppState>,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut quit), Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install the shutdown signal handlers");
            return std::future::pending().await;
        };
        let lifecycle = &self.state.lifecycle;
        tokio::select! {
            _ = quit.recv() => {
                lifecycle.begin_draining("upgrading: the listening socket goes to a new process");
                // pingora hands the socket over, then keeps accepting for 5 s beside the
                // new process before it stops; draining starts after that.
                wait_for_drain(self.state.clone(), Duration::from_secs(6));
                ShutdownSignal::GracefulUpgrade
            }
            _ = terminate.recv() => {
                lifecycle.begin_draining("shutting down");
                let delay = self.state.config.shutdown.drain_delay;
                if !delay.is_zero() {
                    tracing::info!(delay_ms = delay.as_millis() as u64, "still accepting while load balancers notice");
                    tokio::time::sleep(delay).await;
                }
                wait_for_drain(self.state.clone(), Duration::from_millis(200));
                ShutdownSignal::GracefulTerminate
            }
            _ = interrupt.recv() => {
                // Stopping at once still sends the spans already queued (at most
                // TRACE_FLUSH_TIMEOUT): they are the last requests' traces.
                let state = self.state.clone();
                let flushed = tokio::task::spawn_blocking(move || {
                    if let Some(telemetry) = state.telemetry.get() {
                        telemetry.shutdown(TRACE_FLUSH_TIMEOUT);
                    }
                })
                .await;
                if flushed.is_err() {
                    tracing::warn!("queued traces were not flushed before stopping");
                }
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// How long an exiting process waits for its queued spans to reach the collector.
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// pingora waits the whole grace period after it stops accepting; this ends the process
/// as soon as no request is in flight (after the listener has let go of its socket), and
/// at the latest when the grace period ends.
fn wait_for_drain(state: Arc<crate::state::AppState>, accepting_for: Duration) {
    let grace = state.config.shutdown.grace_period + accepting_for;
    let spawned = std::thread::Builder::new()
        .name("datagate-drain".to_string())
        .spawn(move || {
            let started = Instant::now();
            // Until pingora's accept loops have stopped and idle keep-alive connections
            // are closed, a new request can still arrive.
            std::thread::sleep(accepting_for);
            while started.elapsed() < grace {
                if state.metrics.in_flight.get() <= 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            finish(&state, started);
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot watch the drain; exiting after the whole grace period");
    }
}

fn finish(state: &crate::state::AppState, started: Instant) {
    let metrics: &Metrics = &state.metrics;
    tracing::info!(
        after_ms = started.elapsed().as_millis() as u64,
        left_in_flight = metrics.in_flight.get(),
        "drained; exiting"
    );
    // The last requests' spans are still queued for export.
    if let Some(telemetry) = state.telemetry.get() {
        telemetry.shutdown(TRACE_FLUSH_TIMEOUT);
    }
    // Give the audit writer a moment to write what the last requests queued.
    std::thread::sleep(Duration::from_millis(50));
    std::process::exit(0);
}
