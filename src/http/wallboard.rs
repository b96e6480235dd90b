//! `/wallboard` (an HTML page embedded in the binary: no build step, no external
//! assets), `/api/v1/floor` (the floor as JSON) and `/api/v1/floor/stream` (the same
//! JSON pushed by Server-Sent Events on every published snapshot), plus the bearer
//! token guard of the JSON API and the wallboard.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures_util::Stream;

use super::api::{ApiError, NoParams, no_params};
use super::floor;
use super::state::AppState;

const PAGE: &str = include_str!("wallboard/index.html");

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

pub async fn floor_json(
    State(st): State<Arc<AppState>>,
    q: Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    no_params("/api/v1/floor", q)?;
    let snap = st.snapshot();
    Ok(Json(floor::view(
        &snap,
        &st.settings(),
        st.input_down_since(),
    )))
}

/// One message per published snapshot (the Kafka source publishes every 250 ms while
/// input flows, the other sources about once a second), the current view first, so a
/// (re)connecting page is up to date at once. The browser's EventSource reconnects by
/// itself when the connection drops.
pub async fn floor_stream(
    State(st): State<Arc<AppState>>,
    q: Result<Query<NoParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    no_params("/api/v1/floor/stream", q)?;
    let rx = st.subscribe();
    let stream = futures_util::stream::unfold((rx, st, true), |(mut rx, st, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None; // the daemon is shutting down
        }
        let snap = rx.borrow_and_update().clone();
        let data = floor::view(&snap, &st.settings(), st.input_down_since()).to_string();
        Some((
            Ok(Event::default().event("floor").data(data)),
            (rx, st, false),
        ))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Guard of the JSON API and the wallboard when `[http] token` is set: the token is
/// accepted as `Authorization: Bearer TOKEN`, or as `?token=TOKEN` (the wallboard's
/// page and its EventSource cannot send headers). Compared in constant time.
pub async fn require_token(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let settings = st.settings();
    let want = settings.token.as_bytes();
    if want.is_empty() {
        return next.run(req).await;
    }
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let from_query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let ok = [from_header, from_query]
        .into_iter()
        .flatten()
        .any(|got| constant_time_eq(got.as_bytes(), want));
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({"error": "missing or wrong bearer token ([http] token)"})),
        )
            .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
