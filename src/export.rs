//! Merged snapshot export (rows, CSV / JSONL). See the store module.
