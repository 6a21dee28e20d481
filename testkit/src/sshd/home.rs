//! The client side of an sshd test: a temp `HOME` for the process under test (`mtr`, `ssh`),
//! with a `.ssh/` holding a copy of the server's client key and, when asked, a `known_hosts`
//! that trusts the server. Tests run the client with `HOME=<LocalHome::path()>`, so the real
//! user's `~/.ssh` and `~/.config` are never read or written.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::Server;
use crate::gen::set_mode;

pub struct LocalHome {
    dir: tempfile::TempDir,
}

impl LocalHome {
    /// An empty home with an empty `.ssh/` (mode 0700).
    pub fn new() -> LocalHome {
        let dir = tempfile::Builder::new()
            .prefix("mtr-home-")
            .tempdir()
            .expect("temp dir");
        fs::create_dir(dir.path().join(".ssh")).unwrap();
        set_mode(&dir.path().join(".ssh"), 0o700);
        LocalHome { dir }
    }

    /// A home that holds `server`'s client key as `~/.ssh/id_ed25519` and trusts its host key.
    pub fn for_server(server: &Server) -> LocalHome {
        let home = LocalHome::new();
        home.add_key(server);
        home.trust(server);
        home
    }

    /// Copies `server`'s client key pair to `~/.ssh/id_ed25519{,.pub}` (private key mode 0600).
    pub fn add_key(&self, server: &Server) {
        fs::copy(server.client_key(), self.key()).unwrap();
        set_mode(&self.key(), 0o600);
        fs::copy(
            server.client_key().with_extension("pub"),
            self.key().with_extension("pub"),
        )
        .unwrap();
    }

    /// Appends `server`'s host key line to `~/.ssh/known_hosts`.
    pub fn trust(&self, server: &Server) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.known_hosts())
            .unwrap();
        writeln!(f, "{}", server.known_hosts_line()).unwrap();
    }

    /// The directory to pass as `HOME`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `~/.ssh/id_ed25519` (exists after [`LocalHome::add_key`]).
    pub fn key(&self) -> PathBuf {
        self.path().join(".ssh/id_ed25519")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.path().join(".ssh/known_hosts")
    }

    /// The OpenSSH client set up to reach `server` as its user with this home's key and
    /// known_hosts, strict host key checking, and no prompts; add the remote command with `.arg`.
    pub fn ssh(&self, server: &Server) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.env("HOME", self.path())
            .args(["-F", "/dev/null", "-i"])
            .arg(self.key())
            .args(["-p", &server.port().to_string()])
            .arg(format!(
                "-oUserKnownHostsFile={}",
                self.known_hosts().display()
            ))
            .args([
                "-oStrictHostKeyChecking=yes",
                "-oBatchMode=yes",
                "-oIdentitiesOnly=yes",
            ])
            .arg(format!("{}@{}", server.user(), server.host()));
        cmd
    }
}

impl Default for LocalHome {
    fn default() -> Self {
        LocalHome::new()
    }
}
