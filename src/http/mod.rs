//! HTTP: /metrics, /healthz, /readyz, JSON API.
