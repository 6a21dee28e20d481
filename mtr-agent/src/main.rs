//! `mtr-agent`: the remote helper. `mtr` uploads it (static musl) and runs `mtr-agent serve`
//! over an SSH exec channel; it greets with [`protocol::wire::MAGIC`] and then serves one sync
//! session as the sink on stdin/stdout. It never prompts and never prints to stdout outside
//! the protocol; diagnostics go to stderr.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some("--version") | Some("-V") => {
            println!(
                "mtr-agent {VERSION} (protocol {})",
                protocol::PROTOCOL_VERSION
            );
            0
        }
        _ => {
            eprintln!("usage: mtr-agent serve | --version\n(mtr-agent is started by mtr over SSH; it is not meant to be run by hand)");
            2
        }
    };
    std::process::exit(code);
}

fn serve() -> i32 {
    // SAFETY: fds 0 and 1 are open for the life of the process and used only here.
    let stdin = unsafe { File::from_raw_fd(0) };
    let mut stdout = unsafe { File::from_raw_fd(1) };
    if stdout.write_all(protocol::wire::MAGIC).is_err() {
        return 1;
    }
    match protocol::sink::serve(stdin, stdout, VERSION) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mtr-agent: {e}");
            1
        }
    }
}
