//! The background node: its lock and PID files, detaching, and stopping it.
//!
//! The running node holds an exclusive `flock` on `kwaainet.lock` for its whole life, so "is a node
//! running?" is answered by the lock, never by a PID that may be stale or reused; `kwaainet.pid`
//! only says which process to signal.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::failure::Failure;
use crate::paths::Home;
use crate::status::StatusFile;

/// How long `start --daemon` waits for the background node to report itself.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `stop` waits after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The running node's lock; dropping it removes the PID, status and lock files.
pub struct Lock {
    _file: File,
    home: Home,
}

fn try_flock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is shared with the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

impl Lock {
    /// Takes the lock and writes our PID, or says which node already runs.
    pub fn acquire(home: &Home) -> Result<Lock, Failure> {
        home.create()?;
        let path = home.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Failure::io(format!("opening {}", path.display()), e))?;
        if !try_flock(&file).map_err(|e| Failure::io(format!("locking {}", path.display()), e))? {
            let pid = read_pid(home).map_or_else(|| "unknown pid".to_owned(), |p| format!("pid {p}"));
            return Err(Failure::new(format!(
                "a node is already running from {} ({pid}); stop it with `kwaainet stop`",
                home.root().display()
            )));
        }
        let pid = std::process::id();
        let pid_file = home.pid_file();
        std::fs::write(&pid_file, format!("{pid}\n"))
            .map_err(|e| Failure::io(format!("writing {}", pid_file.display()), e))?;
        Ok(Lock { _file: file, home: home.clone() })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        remove_run_files(&self.home);
    }
}

/// Removes the PID, status and lock files (ignoring those already gone).
fn remove_run_files(home: &Home) {
    for path in [home.status_file(), home.pid_file(), home.lock_file()] {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether a node holds the lock of `home`.
pub fn is_running(home: &Home) -> bool {
    let Ok(file) = OpenOptions::new().read(true).write(true).open(home.lock_file()) else { return false };
    // Taking the lock ourselves means nobody holds it; closing the file releases it again.
    matches!(try_flock(&file), Ok(false))
}

/// The PID in the PID file, if it holds one.
pub fn read_pid(home: &Home) -> Option<i32> {
    std::fs::read_to_string(home.pid_file()).ok()?.trim().parse().ok().filter(|p| *p > 0)
}

/// Whether process `pid` is alive (a zombie, dead but not yet reaped by its parent, is not).
fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists =
        unsafe { libc::kill(pid, 0) == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) };
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')));
    exists && !zombie
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: sends a signal; pid was read from the PID file while its owner held the lock.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Starts `kwaainet <args> --daemon-child` detached (its own session, stdin closed, output to the
/// log file) and waits until it reports itself in the status file. Returns what it reported.
pub fn spawn(home: &Home, args: &[String]) -> Result<StatusFile, Failure> {
    home.create()?;
    if is_running(home) {
        let pid = read_pid(home).map_or_else(|| "unknown pid".to_owned(), |p| format!("pid {p}"));
        return Err(Failure::new(format!("a node is already running ({pid}); stop it with `kwaainet stop`")));
    }
    let log_path = home.log_file();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Failure::io(format!("opening {}", log_path.display()), e))?;
    let log_len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe().map_err(|e| Failure::io("finding the kwaainet executable", e))?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .arg("--daemon-child")
        .env(crate::paths::HOME_ENV, home.root())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| Failure::io("duplicating the log file", e))?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| Failure::io("starting the background node", e))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| Failure::io("waiting for the background node", e))? {
            let reason = last_error_line(&log_path, log_len)
                .unwrap_or_else(|| format!("the background node exited ({status}); see {}", log_path.display()));
            return Err(Failure { code: status.code().map_or(1, |c| c.clamp(1, 255) as u8), message: reason });
        }
        if let Ok(status) = StatusFile::read(home) {
            if status.pid == child.id() {
                return Ok(status);
            }
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Failure::new(format!(
                "the background node did not come up in {START_TIMEOUT:?}; see {}",
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `kwaainet: ...` error line the background node wrote after `offset`.
fn last_error_line(log_path: &Path, offset: u64) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(log_path).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("kwaainet: ").map(str::to_owned))
        .last()
}

/// What `stop` found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// No node was running (stale files, if any, were removed).
    NotRunning,
    /// The node exited after SIGTERM.
    Gracefully(i32),
    /// The node ignored SIGTERM for the whole timeout and was killed.
    Killed(i32),
}

/// Stops the node of `home`: SIGTERM, wait up to `timeout`, then SIGKILL; removes its files.
pub fn stop(home: &Home, timeout: Duration) -> Result<Stopped, Failure> {
    if !is_running(home) {
        remove_run_files(home);
        return Ok(Stopped::NotRunning);
    }
    let pid = read_pid(home).ok_or_else(|| {
        Failure::new(format!(
            "a node holds {} but {} has no PID",
            home.lock_file().display(),
            home.pid_file().display()
        ))
    })?;
    tracing::info!(pid, "sending SIGTERM");
    signal(pid, libc::SIGTERM);
    let outcome = if wait_for_exit(home, pid, timeout) {
        Stopped::Gracefully(pid)
    } else {
        tracing::warn!(pid, ?timeout, "the node did not stop in time: sending SIGKILL");
        signal(pid, libc::SIGKILL);
        if !wait_for_exit(home, pid, KILL_WAIT) {
            return Err(Failure::new(format!("process {pid} survived SIGKILL")));
        }
        Stopped::Killed(pid)
    };
    remove_run_files(home);
    Ok(outcome)
}

/// Waits until `pid` is gone and the lock is free; false on timeout.
fn wait_for_exit(home: &Home, pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !process_exists(pid) && !is_running(home) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
