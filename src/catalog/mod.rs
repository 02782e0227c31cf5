//! The endpoint catalog: `functions/<name>/` folders read from disk, cross-checked, and held
//! immutable for the life of the process.

pub mod param;
pub mod types;
