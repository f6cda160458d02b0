//! A bot under measurement, as a separate process: its CPU time from `/proc/<pid>/stat`
//! (utime + stime, every thread, dead ones included) and its resident memory from
//! `/proc/<pid>/status` (VmRSS now, VmHWM the peak).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::BenchError;

/// A running bot (ours, a baseline build, or the Python BDK's echo bot).
pub struct BotProcess {
    pub label: String,
    child: tokio::process::Child,
    pid: u32,
    /// Just before the process was spawned.
    pub spawned_at: Instant,
}

impl BotProcess {
    /// Starts `program args…` with its stdout and stderr appended to `log`.
    pub fn spawn(
        label: &str,
        program: &Path,
        args: &[&std::ffi::OsStr],
        log: &Path,
        envs: &[(&str, &str)],
    ) -> Result<Self, BenchError> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| BenchError::Io(format!("{}: {e}", log.display())))
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(open()?))
            .stderr(Stdio::from(open()?))
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let spawned_at = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::Io(format!("cannot start {}: {e}", program.display())))?;
        let pid = child.id().ok_or_else(|| BenchError::Io("the bot exited at once".into()))?;
        Ok(Self { label: label.to_owned(), child, pid, spawned_at })
    }

    /// Whether it has exited (with its status).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// CPU time used so far (user + system), every thread's (ended ones too), to the
    /// nanosecond from the process's CPU-time clock; `/proc/<pid>/stat` counts 10 ms ticks,
    /// ±10 µs a command over a 1,000-command burst, and is read only when that clock is not.
    pub fn cpu(&self) -> Result<Duration, BenchError> {
        if let Some(cpu) = process_cpu_clock(self.pid) {
            return Ok(cpu);
        }
        let stat = read_proc(self.pid, "stat")?;
        cpu_of_stat(&stat, clock_ticks())
            .ok_or_else(|| BenchError::Io(format!("unreadable /proc/{}/stat", self.pid)))
    }

    /// (current, peak) resident set size, in KiB.
    pub fn rss_kib(&self) -> Result<(u64, u64), BenchError> {
        let status = read_proc(self.pid, "status")?;
        let field = |name: &str| status_field_kib(&status, name);
        match (field("VmRSS:"), field("VmHWM:")) {
            (Some(now), Some(peak)) => Ok((now, peak)),
            _ => Err(BenchError::Io(format!("no VmRSS/VmHWM in /proc/{}/status", self.pid))),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills it at once (SIGKILL: nothing cleaned up, as when a node is lost) and waits until
    /// it is gone.
    pub async fn kill(mut self) -> Result<(), BenchError> {
        self.child
            .kill()
            .await
            .map_err(|e| BenchError::Io(format!("cannot kill {} ({}): {e}", self.label, self.pid)))
    }

    /// Asks it to stop (SIGTERM, as a service manager would), then kills it if it has not
    /// within 5 s.
    pub async fn stop(mut self) {
        let asked = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if asked && tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_ok() {
            return;
        }
        let _ = self.child.kill().await;
    }
}

fn read_proc(pid: u32, file: &str) -> Result<String, BenchError> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|e| BenchError::Io(format!("/proc/{pid}/{file}: {e} (Linux only)")))
}

/// Process `pid`'s CPU-time clock (`clock_getcpuclockid`, `clock_gettime`).
fn process_cpu_clock(pid: u32) -> Option<Duration> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out-parameter for the call's duration.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut at = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `at` is a valid out-parameter for the call's duration.
    if unsafe { libc::clock_gettime(clock, &mut at) } != 0 {
        return None;
    }
    Some(Duration::new(u64::try_from(at.tv_sec).ok()?, u32::try_from(at.tv_nsec).ok()?))
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15, in clock ticks).
pub(crate) fn cpu_of_stat(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_second.max(1)))
}

/// `VmRSS:   1234 kB` → 1234.
pub(crate) fn status_field_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `getconf CLK_TCK` (100 on every usual Linux), read once.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_clock_agrees_with_its_clock_ticks() {
        let me = std::process::id();
        let ticks = cpu_of_stat(&read_proc(me, "stat").expect("stat"), clock_ticks()).expect("cpu");
        let clock = process_cpu_clock(me).expect("this process's CPU clock");
        let tick = Duration::from_millis(10);
        assert!(clock + tick >= ticks && clock <= ticks + 2 * tick, "{clock:?} vs {ticks:?}");
        assert_eq!(process_cpu_clock(u32::MAX), None, "no such process");
    }

    #[test]
    fn cpu_is_read_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4";
        assert_eq!(cpu_of_stat(stat, 100), Some(Duration::from_secs(3)));
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tbot\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(10_240));
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(20_480));
    }
}
