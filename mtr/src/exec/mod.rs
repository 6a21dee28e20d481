//! Running the user's command on the server: the command line (quoting, working directory,
//! `pre_cmd`) and the two ways to run it — [`interactive`] (a PTY, the local terminal in raw
//! mode) and [`batch`] (no PTY, stdout/stderr byte for byte, supervised by the agent so signals
//! reach the remote process group and nothing outlives a lost connection).

pub mod batch;
pub mod interactive;
pub mod pump;
mod terminal;

/// What to run remotely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCommand {
    /// Directory to run in: `remote_dir` joined with the local cwd's path under the project root.
    pub workdir: String,
    /// Shell code run first, in the same shell (so `conda activate` takes effect).
    pub pre_cmd: Option<String>,
    /// The command and its arguments, exactly as typed locally. Empty: the login shell.
    pub argv: Vec<String>,
}

impl RemoteCommand {
    /// The script the remote login shell runs: `cd DIR && PRE && exec ARGV...`, every argument
    /// quoted so it arrives byte for byte. `~/` in `workdir` is left for the remote shell to
    /// expand.
    pub fn script(&self) -> String {
        let dir = match self.workdir.strip_prefix("~/") {
            Some("") => "~".to_string(),
            Some(rest) => format!("~/{}", shell_words::quote(rest)),
            None if self.workdir == "~" => "~".to_string(),
            None => shell_words::quote(&self.workdir).into_owned(),
        };
        let mut s = format!("cd {dir} && ");
        if let Some(pre) = self.pre_cmd.as_deref().filter(|p| !p.trim().is_empty()) {
            s.push_str(pre.trim());
            s.push_str(" && ");
        }
        if self.argv.is_empty() {
            s.push_str("exec \"${SHELL:-/bin/sh}\" -l");
        } else {
            s.push_str("exec ");
            s.push_str(&shell_words::join(&self.argv));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(argv: &[&str]) -> RemoteCommand {
        RemoteCommand {
            workdir: "~/proj/sub dir".into(),
            pre_cmd: Some("conda activate torch".into()),
            argv: argv.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_script_quotes_every_argument_and_keeps_the_tilde() {
        assert_eq!(
            cmd(&["python", "-c", "print('a b')"]).script(),
            "cd ~/'proj/sub dir' && conda activate torch && exec python -c 'print('\\''a b'\\'')'"
        );
    }

    #[test]
    fn arguments_arrive_exactly_as_sh_sees_them() {
        let tricky = [
            "a b",
            "$HOME",
            "x;y",
            "*",
            "line\nbreak",
            "",
            "ünï",
            "'\"",
            "-s",
        ];
        let c = RemoteCommand {
            workdir: "/".into(),
            pre_cmd: None,
            argv: std::iter::once("printf".to_string())
                .chain(std::iter::once("[%s]".to_string()))
                .chain(tricky.iter().map(|s| s.to_string()))
                .collect(),
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(c.script())
            .output()
            .unwrap();
        let expected: String = tricky.iter().map(|t| format!("[{t}]")).collect();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    }

    #[test]
    fn no_command_means_the_login_shell() {
        assert!(cmd(&[]).script().ends_with("exec \"${SHELL:-/bin/sh}\" -l"));
    }
}
