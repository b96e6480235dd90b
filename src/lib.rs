//! ccmetrics: event-time contact-centre KPIs. See `ARCHITECTURE.md` for the map.
//!
//! Data flow: `source/` reads messages → `event/` decodes and validates them →
//! `engine/` joins contacts and accumulates windows (pure, no I/O) → `store/` merges
//! flushed snapshot deltas → `export` and `http/` derive KPIs (`kpi`) at read time.

pub mod alloc;
pub mod config;
pub mod engine;
pub mod event;
pub mod export;
pub mod http;
pub mod kpi;
pub mod pipeline;
pub mod scoring;
pub mod source;
pub mod store;
