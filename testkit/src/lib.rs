//! Support for mtr's integration tests and benchmarks: a real OpenSSH server started on a free
//! loopback port with its own host key, user and authorized key ([`sshd`]), deterministic
//! generators of project trees ([`gen`]), and test-only programs built on demand ([`bins`]):
//! `mtr-hostile-agent`, an agent that speaks the real protocol but sends unsafe paths.

pub mod bins;
pub mod gen;
pub mod sshd;
