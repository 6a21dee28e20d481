//! Shared helpers for the benchmarks: seeded in-memory inputs for the micro benchmarks
//! ([`inputs`]); for the end-to-end ones, the project tree and the edits its scenarios make
//! ([`project`], its checkpoint in [`checkpoint`], fp16 values from [`fp16`]), the trees of the
//! scale bench ([`trees`]), the shaped link to the bench's sshd ([`net`]), what is sampled from
//! `/proc` ([`probe`]) and how a tool is run and measured ([`run`]).
//!
//! Everything generated is a pure function of its seed (through [`testkit::gen::Rng`]), so two
//! runs, or two machines, measure the same bytes.

pub mod checkpoint;
pub mod fp16;
pub mod inputs;
pub mod net;
pub mod probe;
pub mod project;
pub mod run;
pub mod trees;
