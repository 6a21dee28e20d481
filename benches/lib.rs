//! Shared helpers for the benchmarks (data generators).
