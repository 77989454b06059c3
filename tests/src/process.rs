//! A child process that never outlives its owner.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::process::{Child, Command};

use crate::util::tail;

/// A child process in its own process group, with stdout and stderr captured to files
/// (`<log_dir>/<name>.stdout` / `.stderr`).
///
/// Dropping it SIGKILLs the whole process group and reaps the child. The child also gets
/// `KITSUNE_EXIT_WITH_PARENT=1`: the harness's peers (kubo_node.py, the Node scripts) exit by
/// themselves when the test process dies, so even an aborted test run leaks nothing.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    pid: u32,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawn `cmd` (stdin closed, stdout/stderr to files in `log_dir`, own process group).
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let out = std::fs::File::create(&stdout_path)?;
        let err = std::fs::File::create(&stderr_path)?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true)
            .env("KITSUNE_EXIT_WITH_PARENT", "1");
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let pid = child.id().context("child has no pid")?;
        tracing::debug!(name, pid, "spawned");
        Ok(Self {
            name: name.to_string(),
            child,
            pid,
            stdout_path,
            stderr_path,
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's PID (also its process group ID).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of stdout and stderr, labelled, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- {name} (pid {pid}) stdout tail [{o}] ---\n{}\n--- {name} stderr tail [{e}] ---\n{}\n---",
            tail(&self.stdout(), lines),
            tail(&self.stderr(), lines),
            name = self.name,
            pid = self.pid,
            o = self.stdout_path.display(),
            e = self.stderr_path.display(),
        )
    }

    /// Send `sig` to the child's whole process group (no-op once the child has been reaped).
    pub fn signal(&mut self, sig: i32) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: plain kill(2) on the process group we created; the child is running or a
        // zombie (not reaped yet), so its pid (= pgid) cannot have been reused.
        let rc = unsafe { libc::kill(-(self.pid as i32), sig) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e).with_context(|| format!("kill(-{}, {sig})", self.pid));
            }
        }
        Ok(())
    }

    /// Exit status if the child has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(s)) = self.child.try_wait()
        {
            self.status = Some(s);
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Wait for the child to exit.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.child.wait().await?;
        self.status = Some(s);
        Ok(s)
    }

    /// Wait at most `timeout` for the child to exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.wait())
            .await
            .ok()
            .and_then(|r| r.ok())
    }

    /// For the harness's Node clients, which end by printing `RESULT {json}`: wait at most
    /// `limit` for the child to exit (else kill it), then parse the last such line. Errors
    /// carry the last `log_lines` lines of its output.
    pub async fn result_line<T: DeserializeOwned>(
        &mut self,
        limit: Duration,
        log_lines: usize,
    ) -> Result<T> {
        if self.wait_timeout(limit).await.is_none() {
            let logs = self.log_tail(log_lines);
            self.kill();
            bail!(
                "{} still running after {limit:?}; killed\n{logs}",
                self.name
            );
        }
        let log = self.log_tail(log_lines);
        let stdout = self.stdout();
        let line = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("RESULT "))
            .with_context(|| format!("{} printed no RESULT line\n{log}", self.name))?;
        serde_json::from_str(line).with_context(|| format!("bad RESULT line {line:?}\n{log}"))
    }

    /// SIGKILL the process group now and reap the child (waits at most ~1 s, synchronously).
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        // the group first: also ends anything the child started
        let _ = self.signal(libc::SIGKILL);
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGTERM the process group, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(s) = self.wait_timeout(grace).await {
            return Ok(s);
        }
        self.signal(libc::SIGKILL)?;
        self.wait().await
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Node client's `RESULT` line: the fields every client prints, then its own (`T`).
#[derive(Deserialize)]
pub(crate) struct ResultLine<T> {
    pub ok: bool,
    /// Why it failed, when `ok` is false.
    pub error: Option<String>,
    /// Length of what it wrote to `--out` (see [`read_reported`]).
    pub bytes: Option<u64>,
    /// Fetch time, ms.
    pub ms: Option<u64>,
    #[serde(flatten)]
    pub own: T,
}

/// Outcome of one Node client run: what every client reports (its `RESULT` line, the
/// bytes it fetched), then the client's own fields (`T`).
#[derive(Clone, Debug, Default)]
pub struct ClientRun<T> {
    pub ok: bool,
    /// Error reported by the client when `ok` is false.
    pub error: Option<String>,
    /// What the client fetched; empty on failure.
    pub bytes: Vec<u8>,
    /// Fetch time in the client, ms.
    pub ms: u64,
    /// Wall time of the whole client process (Node start-up included).
    pub wall: Duration,
    /// Tail of the client's stdout/stderr.
    pub log: String,
    pub own: T,
}

impl<T> ClientRun<T> {
    /// The run, or (with the client's log) an error naming `what` unless it succeeded.
    pub fn succeeded(self, what: impl std::fmt::Display) -> Result<Self> {
        if !self.ok {
            bail!(
                "{what} failed: {}\n{}",
                self.error.as_deref().unwrap_or("?"),
                self.log
            );
        }
        Ok(self)
    }
}

/// Runs a Node client in `dir` to its `RESULT` line, with the bytes it wrote to `out`
/// when it succeeded (checked against the length it reported) and its log tail.
/// `timeout` is the client's own budget; its start-up gets 90 s more (module loading
/// takes ~2 s, far more on a busy 2-core machine).
pub(crate) async fn run_client<T: DeserializeOwned>(
    name: &str,
    cmd: Command,
    dir: &Path,
    out: &Path,
    timeout: Duration,
) -> Result<ClientRun<T>> {
    let t0 = Instant::now();
    let mut proc = ChildProcess::spawn(name, cmd, dir)?;
    let r: ResultLine<T> = proc
        .result_line(timeout + Duration::from_secs(90), 30)
        .await?;
    let log = proc.log_tail(30);
    let bytes = if r.ok {
        read_reported(out, r.bytes, &log)?
    } else {
        Vec::new()
    };
    Ok(ClientRun {
        ok: r.ok,
        error: r.error,
        bytes,
        ms: r.ms.unwrap_or(0),
        wall: t0.elapsed(),
        log,
        own: r.own,
    })
}

/// The file a Node client wrote its fetched bytes to, checked against the length it reported
/// in its `RESULT` line. `log` goes into the errors.
pub(crate) fn read_reported(out: &Path, reported: Option<u64>, log: &str) -> Result<Vec<u8>> {
    let b = std::fs::read(out).with_context(|| format!("reading {}\n{log}", out.display()))?;
    if Some(b.len() as u64) != reported {
        bail!(
            "client reported {reported:?} bytes but wrote {}\n{log}",
            b.len()
        );
    }
    Ok(b)
}
