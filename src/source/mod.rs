//! Where events come from: Kafka ([`kafka`], the daemon's production source), JSONL files (plain or gzip) and stdin
//! ([`file`](mod@file)), and the deterministic contact-centre simulator ([`sim`]).
//! [`ahead`] reads files and decodes them on a second thread for `replay` (decoding
//! there is the only exception to the rule below: it uses the same decoder).
//!
//! Sources hand out raw records (one message as bytes) and never validate them:
//! decoding and rejection happen in `event/`, so every source counts bad input the
//! same way.

pub mod ahead;
pub mod file;
pub mod kafka;
pub mod sim;
