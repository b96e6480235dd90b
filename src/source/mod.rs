//! Where events come from: files (JSONL, .gz), stdin, the simulator.
