//! The checks of the cargo-fuzz targets in `fuzz/` (each file is included there with
//! `#[path]`), and [`mutate`], the deterministic mutations the replay test runs them over on
//! stable Rust.

pub mod manifest;
pub mod membership;
pub mod mutate;
pub mod transcoder;
