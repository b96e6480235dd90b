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
//! - `GET /api/v1/status` → input stats, watermark, clock, open contacts, readiness.
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
//! `ccmetrics_open_contacts`, `ccmetrics_snapshot_flushes_total`,
//! `ccmetrics_last_flush_timestamp_seconds` (timestamps absent until known),
//! `ccmetrics_contacts_expired_total`, `ccmetrics_keys_overflowed_total{kind}`
//! (`agent`, `team`, `queue`, `customer`; always present).
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
pub mod floor;
pub mod metrics;
pub mod state;
mod wallboard;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;

pub use self::api::METRICS_CONTENT_TYPE;
pub use self::state::{AppState, HttpSettings, LiveSnapshot, PartitionStatus, RollingWindow};

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

/// Serve on `listener` until `shutdown` completes, then stop accepting connections
/// and wait for in-flight requests to finish (graceful shutdown).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "http listening"),
        Err(e) => tracing::warn!(error = %e, "http listening (address unknown)"),
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("http stopped");
    Ok(())
}
