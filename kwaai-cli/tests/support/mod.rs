//! Running the `kwaainet` binary in a temporary HOME.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary HOME; kwaainet's files go to `<home>/.kwaainet`. Dropping it stops any node
/// started from it, then removes it.
pub struct TestHome {
    dir: tempfile::TempDir,
}

/// What a kwaainet run printed and how it exited.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with the output unless the run exited 0.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "kwaainet failed:\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// The value after `prefix` on the first stdout line that starts with it.
    pub fn line(&self, prefix: &str) -> Option<String> {
        self.stdout.lines().find_map(|l| l.strip_prefix(prefix)).map(str::to_owned)
    }
}

impl TestHome {
    pub fn new() -> TestHome {
        TestHome { dir: tempfile::tempdir().expect("a temporary HOME") }
    }

    /// The HOME directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// kwaainet's own directory, `<home>/.kwaainet`.
    pub fn kwaainet_dir(&self) -> PathBuf {
        self.dir.path().join(".kwaainet")
    }

    /// A `kwaainet` command with this HOME.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kwaainet"));
        command
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KWAAINET_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env("RUST_LOG", "warn");
        command
    }

    /// Runs `kwaainet args...` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("running kwaainet"))
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        if self.kwaainet_dir().join("kwaainet.lock").exists() {
            let _ = self.command(&["stop", "--timeout", "10"]).output();
        }
    }
}

/// Whether process `pid` exists.
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}
