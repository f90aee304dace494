//! emlab-data: the datasets side of emlab.
//!
//! Three small modules with one job each:
//!
//! - [`chat`]: load and validate chat JSONL (the `{"messages":[...]}` format used for
//!   fine-tuning), with `file:line: problem` reports, opt-in skipping of bad rows, a seeded
//!   shuffle and a held-out split.
//! - [`questions`]: load evaluation questions in the published YAML schema (anchors, aliases
//!   and `<<` merge keys resolved; `system` prompts kept) and expand them into prompts.
//! - [`stats`]: dataset statistics (duplicates, near duplicates, diversity, lengths) as text
//!   or JSON.
//!
//! ```
//! use emlab_data::chat::{parse_jsonl, LoadOptions};
//! let text = br#"{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"}]}"#;
//! let (rows, report) = parse_jsonl(text, "mem.jsonl", &LoadOptions::default()).unwrap();
//! assert_eq!(rows.len(), 1);
//! assert_eq!(report.skipped, 0);
//! ```

pub mod chat;
mod error;
pub mod questions;
mod rng;
pub mod stats;

pub use error::{Error, Result, RowError};
