//! Handlers: probes, `/metrics` and the JSON API (`/api/v1/...`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::json;

use crate::engine::Dimension;
use crate::engine::acc::Acc;
use crate::event::{Millis, RejectReason};
use crate::kpi::{self, KPI_COLUMNS};

use super::state::{AppState, LiveSnapshot};

/// Content type of the Prometheus text exposition format 0.0.4. Label values are
/// agent/queue names and may be non-ASCII, hence the explicit charset.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A JSON error body `{"error": "..."}` with a status code.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }

    fn internal(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(st): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if st.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Run CPU-bound rendering off the async workers: with per-agent series or many
/// queues a render takes milliseconds, which would delay other connections.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "http render failed");
            Err(ApiError::internal(e))
        }
        Err(e) => {
            tracing::error!(error = %e, "http render task failed");
            Err(ApiError::internal("internal error"))
        }
    }
}

/// Chunks of the `/metrics` body in flight per scrape (see [`super::exposition`]).
const METRICS_CHUNKS_IN_FLIGHT: usize = 4;

/// `/metrics`, streamed: the body is written on a blocking thread from one snapshot
/// and sent in chunks as it is written. Rendering cannot fail on valid families; if it
/// ever does mid-body, the stream ends with an error, which aborts the response (the
/// scraper sees a failed scrape, never a truncated one taken as whole).
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    type Chunk = Result<axum::body::Bytes, std::io::Error>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(METRICS_CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let (snap, settings) = (st.snapshot(), st.settings());
        let block = st.agent_block(&snap, &settings);
        let mut send = |chunk: axum::body::Bytes| tx.blocking_send(Ok(chunk)).is_ok();
        if let Err(e) = super::exposition::render_chunks(st.registry(), &snap, &block, &mut send) {
            tracing::error!(error = %e, "encode metrics failed");
            let _ = tx.blocking_send(Err(std::io::Error::other(format!("encode metrics: {e}"))));
        }
    });
    let chunks =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

/// RFC 3339 UTC (`...Z`), or null.
fn ts(ms: Option<Millis>) -> serde_json::Value {
    ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.to_string().into())
        .unwrap_or_default()
}

/// The query of an endpoint that takes no parameters: only the optional `token` (the
/// guard's query form) is accepted, so a typo (`?dimension=queue` on `/status`) is a
/// `400` that says so rather than silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {
    #[serde(rename = "token")]
    _token: Option<String>,
}

/// Check a [`NoParams`] query, naming the endpoint in the error.
pub fn no_params(
    endpoint: &str,
    q: Result<Query<NoParams>, QueryRejection>,
) -> Result<(), ApiError> {
    q.map(|_| ()).map_err(|e| {
        ApiError::bad_request(format!(
            "{endpoint} takes no query parameters ({})",
            e.body_text()
        ))
    })
}

pub async fn status(
    State(st): State<Arc<AppState>>,
    q: Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    no_params("/api/v1/status", q)?;
    let snap = st.snapshot();
    let s = &snap.stats;
    let rejected: serde_json::Map<String, serde_json::Value> = RejectReason::ALL
        .iter()
        .map(|r| {
            (
                r.as_str().to_owned(),
                s.rejected.get(r).copied().unwrap_or(0).into(),
            )
        })
        .collect();
    Ok(Json(json!({
        "ready": st.is_ready(),
        "watermark": ts(snap.watermark),
        "clock": ts(snap.clock),
        "open_contacts": snap.open_contacts,
        "spilled_contacts": snap.spilled_contacts,
        "flushes": snap.flushes,
        "last_flush": ts(snap.last_flush_ms),
        "stats": {
            "read": s.read,
            "accepted": s.accepted,
            "duplicates": s.duplicates,
            "late_applied": s.late_applied,
            "expired": s.expired,
            "keys_overflowed": s.overflowed.iter().map(|(d, n)| (d.as_str(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
            "rejected_total": s.rejected_total(),
            "rejected": rejected,
        },
        "rolling_windows": st.settings().rolling.iter().map(|w| w.label.as_str()).collect::<Vec<_>>(),
        "partitions": snap.partitions,
        "memory": crate::alloc::memory_stats(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingParams {
    window: Option<String>,
    dimension: Option<String>,
    /// The guard's query form of the token (already checked by the guard).
    #[serde(rename = "token")]
    _token: Option<String>,
}

/// One JSON row: `dimension`, `key`, then the KPI columns in [`KPI_COLUMNS`] order
/// (a map serializer keeps that order; `serde_json::Map` would sort the keys).
struct Row<'a> {
    dimension: Dimension,
    key: &'a str,
    cells: Vec<kpi::Cell>,
}

impl serde::Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2 + self.cells.len()))?;
        m.serialize_entry("dimension", self.dimension.as_str())?;
        m.serialize_entry("key", self.key)?;
        for (name, cell) in KPI_COLUMNS.iter().zip(&self.cells) {
            m.serialize_entry(name, &cell.to_json())?;
        }
        m.end()
    }
}

#[derive(serde::Serialize)]
struct RollingDoc<'a> {
    window: &'a str,
    clock: serde_json::Value,
    rows: Vec<Row<'a>>,
}

pub async fn rolling(
    State(st): State<Arc<AppState>>,
    params: Result<Query<RollingParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let settings = st.settings();
    let Some(w) = p.window.as_deref() else {
        let known: Vec<&str> = settings.rolling.iter().map(|w| w.label.as_str()).collect();
        return Err(ApiError::bad_request(format!(
            "missing `window`; configured rolling windows: {}",
            known.join(", ")
        )));
    };
    let window = settings
        .find_window(w)
        .map_err(ApiError::bad_request)?
        .clone();
    let dimension = match p.dimension.as_deref() {
        None => None,
        Some(d) => Some(Dimension::parse(d).ok_or_else(|| {
            let known: Vec<&str> = Dimension::ALL.iter().map(|d| d.as_str()).collect();
            ApiError::bad_request(format!(
                "unknown dimension {d:?}; expected one of {}",
                known.join(", ")
            ))
        })?),
    };
    let formula = settings.sl_formula;
    let snap: Arc<LiveSnapshot> = st.snapshot();
    // Percentiles build an HDR histogram per cell: keep that off the async workers.
    let body = blocking(move || {
        let empty = super::state::SplitRows::default();
        let rows: Vec<Row<'_>> = snap
            .rolling_rows(window.minutes)
            .unwrap_or(&empty)
            .iter()
            .filter(|(d, _, _)| dimension.is_none_or(|f| f == *d))
            .map(|(d, k, a): &(Dimension, String, Acc)| Row {
                dimension: *d,
                key: k,
                cells: kpi::kpis(a, formula),
            })
            .collect();
        // Serialized straight from structs: going through `serde_json::Value` would
        // sort each row's keys and lose the column order.
        let doc = RollingDoc {
            window: &window.label,
            clock: ts(snap.clock),
            rows,
        };
        serde_json::to_vec(&doc).map_err(|e| format!("serialize rolling: {e}"))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
