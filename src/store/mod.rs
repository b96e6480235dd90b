//! Snapshot persistence: only this module writes to the database.
