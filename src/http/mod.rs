//! HTTP: `/healthz`, `/readyz`, `/metrics` and the JSON API.
//!
//! The engine task publishes a [`LiveSnapshot`] into [`AppState`] about once a second;
//! every handler reads the latest one. Nothing here touches the engine or the store.
//!
//! # Endpoints
//!
//! - `GET /healthz` → `200 ok` while the process serves HTTP.
//! - `GET /readyz` → `200 ready` once [`AppState::set_ready`]`(true)`, else `503`.
//! - `GET /metrics` → Prometheus text format 0.0.4.
//! - `GET /api/v1/status` → input stats, watermark, clock, open contacts, readiness,
//!   memory (`crate::alloc::MemoryStats`).
//! - `GET /api/v1/rolling?window=15m[&dimension=queue]` → one row per dimension key
//!   with every [`crate::kpi::KPI_COLUMNS`] column. `window` must name a configured
//!   rolling window (any humantime spelling: `15m`, `900s`, `1h`); bad or unknown
//!   parameters give `400 {"error": "..."}`. Team and agent rows are always included
//!   here (the Prometheus cardinality guard does not apply to an on-demand query).
//!
//! # Metric names and labels
//!
//! Process-wide: `ccmetrics_events_read_total`, `ccmetrics_events_accepted_total`,
//! `ccmetrics_events_duplicate_total`, `ccmetrics_events_rejected_total{reason}` (every
//! reject reason is always present, zero when none), `ccmetrics_events_late_applied_total`,
//! `ccmetrics_watermark_timestamp_seconds`, `ccmetrics_clock_timestamp_seconds`,
//! `ccmetrics_open_contacts`, `ccmetrics_spilled_contacts`, `ccmetrics_snapshot_flushes_total`,
//! `ccmetrics_last_flush_timestamp_seconds` (timestamps absent until known),
//! `ccmetrics_contacts_expired_total`, `ccmetrics_keys_overflowed_total{kind}`
//! (`agent`, `team`, `queue`, `customer`; always present). Memory, read at the scrape
//! ([`memory`], registered by `serve`): `process_resident_memory_bytes` and
//! `ccmetrics_allocator_bytes{kind}` (`allocated`, `active`, `metadata`, `resident`,
//! `retained`: jemalloc's account, with the `alloc-stats` feature).
//!
//! Per dimension key, every series carries `dimension` (`all`, `channel`, `queue`,
//! `team`, `agent`) and, except for `all`, one more label named after the dimension
//! holding the key: `{dimension="all"}`, `{dimension="queue",queue="sales"}`,
//! `{dimension="agent",agent="a17"}`. Always filter on `dimension` before aggregating:
//! the `all`, `channel` and `queue` series count the same contacts three ways.
//!
//! - Counters (cumulative since process start, from `Engine::totals`):
//!   `ccmetrics_contacts_{offered,answered,abandoned,short_abandoned,answered_within_sl,abandoned_within_sl}_total`,
//!   `ccmetrics_handled_total`, `ccmetrics_resolved_total`, `ccmetrics_fcr_total`,
//!   `ccmetrics_csat_responses_total`, `ccmetrics_csat_positive_total`,
//!   `ccmetrics_converted_total`, `ccmetrics_revenue_total` (currency units).
//! - Histograms: `ccmetrics_wait_seconds`, `ccmetrics_handle_seconds`,
//!   `ccmetrics_first_response_seconds`, buckets (s) 1, 2, 5, 10, 15, 20, 30, 45, 60,
//!   90, 120, 180, 300, 600, 1800, 3600 plus the configured service-level threshold
//!   and short-abandon bound. Bucket counts come from HDR bins, so an observation
//!   within ~1 % of a bucket edge may land in the neighbouring bucket; the exact
//!   within-threshold counts are the `_within_sl_total` counters.
//! - Rolling gauges, with a `window` label (`5m`, `15m`, `1h`) before the dimension
//!   labels: `ccmetrics_rolling_offered`, `ccmetrics_rolling_answer_rate`,
//!   `ccmetrics_rolling_abandon_rate`, `ccmetrics_rolling_service_level` (configured
//!   formula), `ccmetrics_rolling_asa_seconds`, `ccmetrics_rolling_aht_seconds`. A
//!   ratio whose denominator is 0 is left out rather than exported as 0 or NaN.
//!
//! Team and agent series exist only with `http.per_agent_series = true`. Agents are
//! capped at `http.max_agent_series`: the first N agent names in byte order keep
//! their series and the rest are summed into `agent="__overflow__"`;
//! `ccmetrics_agent_series_dropped` says how many agents were folded.
//!
//! The counters are live operational signals, not the figures of record. A late
//! event can correct facts already counted (e.g. an abandon that turns out answered),
//! so a counter can, rarely, decrease; Prometheus reads that as a counter reset and
//! `rate()` over it is briefly off. Counters also restart at zero with the process.
//! The stored interval snapshots (`store/`, `export`) are the figures of record.

mod api;
mod exposition;
pub mod floor;
pub mod memory;
pub mod metrics;
pub mod state;
mod wallboard;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::HttpConfig;

pub use self::api::METRICS_CONTENT_TYPE;
pub use self::exposition::{AgentBlock, render_chunks};
pub use self::state::{
    AGENTS_EVERY, AppState, HttpSettings, LiveSnapshot, PartitionStatus, RollingWindow, SplitRows,
    next_agent_part,
};

/// All routes over the shared state.
pub fn router(state: Arc<AppState>) -> Router {
    // The JSON API and the wallboard sit behind the optional bearer token; probes and
    // /metrics stay open (scrapers and orchestrators).
    let guarded = Router::new()
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/rolling", get(api::rolling))
        .route("/api/v1/floor", get(wallboard::floor_json))
        .route("/api/v1/floor/stream", get(wallboard::floor_stream))
        .route("/wallboard", get(wallboard::page))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            wallboard::require_token,
        ));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .merge(guarded)
        .with_state(state)
}

/// [`router`] with the server's protective limits: a response that has not started
/// within `request_timeout` becomes `503 {"error": ...}`. Only the response head is
/// timed, so the SSE stream (whose head comes at once) is not cut.
pub fn app(state: Arc<AppState>, request_timeout: Duration) -> Router {
    with_timeout(router(state), request_timeout)
}

fn with_timeout(r: Router, request_timeout: Duration) -> Router {
    r.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| async move {
            let path = req.uri().path().to_owned();
            match tokio::time::timeout(request_timeout, next.run(req)).await {
                Ok(resp) => resp,
                Err(_) => {
                    tracing::warn!(%path, timeout = ?request_timeout, "http request timed out");
                    timed_out(request_timeout)
                }
            }
        },
    ))
}

fn timed_out(after: Duration) -> Response {
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({
            "error": format!("request timed out after {after:?}")
        })),
    )
        .into_response()
}

/// Serve on `listener` until `shutdown` completes, then stop accepting connections
/// and wait for in-flight requests to finish (graceful shutdown). At most
/// `[http] max_connections` connections are served at once; more wait in the listen
/// backlog (not refused: a scraper retrying is worse than one waiting briefly).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    cfg: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, max_connections = cfg.max_connections, "http listening"),
        Err(e) => tracing::warn!(error = %e, "http listening (address unknown)"),
    }
    let listener = LimitedListener::new(listener, cfg.max_connections);
    axum::serve(listener, app(state, cfg.request_timeout.0))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("http stopped");
    Ok(())
}

/// A TCP listener that holds one semaphore permit per open connection: at the limit
/// it stops accepting until a connection closes (its permit drops with it).
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    limit: usize,
    warned: bool,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, max_connections: usize) -> LimitedListener {
        let limit = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            warned: false,
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (LimitedIo, std::net::SocketAddr) {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !self.warned {
                    // Once per process: a flood would otherwise flood the log too.
                    tracing::warn!(
                        limit = self.limit,
                        "http connection limit reached; new connections wait"
                    );
                    self.warned = true;
                }
                match self.slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (
            LimitedIo {
                io,
                _permit: permit,
            },
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that gives its slot back when it is dropped.
pub struct LimitedIo {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for LimitedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
