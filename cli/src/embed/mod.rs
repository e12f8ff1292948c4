//! `photon embed`: read texts from Parquet, embed them, write the vectors back
//! to Parquet. This module owns the I/O around the model: resolving input and
//! output URLs, validating inputs before any expensive work, and publishing
//! output all-or-nothing.

pub mod corpus;
pub mod input;
pub mod output;
mod store;
