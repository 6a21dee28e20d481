//! Support for mtr's integration tests and benchmarks: a real OpenSSH server started on a free
//! loopback port with its own host key, user and authorized key ([`sshd`]), and deterministic
//! generators of project trees ([`gen`]).

pub mod gen;
pub mod sshd;
