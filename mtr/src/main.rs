//! `mtr`: sync a project to a remote node and run commands there.

mod agent_install;
mod cli;
mod config;
mod embedded;
mod exit;
mod ssh;
mod sync;
mod ui;

fn main() {
    std::process::exit(0)
}
