//! Helpers shared by the tests that run real `seismo` processes: the process handle, its log, its address and its memory.
#![expect(
    clippy::disallowed_methods,
    reason = "tests time real runs and stamp live data with the wall clock"
)]
// Each test file uses a part of this module; what one file leaves unused is not dead.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    /// "running" lines the log held before this process started (the log is appended to
    /// across restarts).
    pub earlier_starts: usize,
}

/// Starts the `seismo` binary with `args` and `env`, listening on a free port, its stderr
/// appended to `log` (so restarts keep one log; the handle knows its own start line).
pub fn spawn(args: &[&str], env: &[(String, String)], log: &Path) -> Proc {
    let earlier_starts = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("running"))
        .count();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_seismo"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("SEISMO_HTTP__LISTEN", "127.0.0.1:0")
        .env("SEISMO_LOG", "warn,seismo=info,seismo_runtime=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc {
        child,
        log: log.to_path_buf(),
        earlier_starts,
    }
}

impl Proc {
    /// A process whose log holds only its own lines.
    pub fn new(child: Child, log: PathBuf) -> Proc {
        Proc {
            child,
            log,
            earlier_starts: 0,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        // SIGKILL: no shutdown path runs, exactly like a crash or an OOM kill.
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no exit on SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTP address the process logged.
    pub fn addr(&self) -> String {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            for key in ["addr=", "http="] {
                // This process's own start line, not an earlier process's.
                if let Some(a) = text
                    .lines()
                    .filter(|l| l.contains("running"))
                    .skip(self.earlier_starts)
                    .find_map(|l| l.split(key).nth(1))
                    .and_then(|r| r.split_whitespace().next())
                {
                    return a.to_string();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the process did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the process, from /proc.
    pub fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }

    /// Samples the resident memory every 10 ms until the returned flag is set; the handle
    /// gives the highest sample.
    pub fn peak_sampler(
        &self,
    ) -> (
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<u64>,
    ) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pid, flag) = (self.child.id(), stop.clone());
        let h = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Acquire) {
                peak = peak.max(rss_of(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        (stop, h)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid`, from /proc.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap()
}

/// A Prometheus remote-write body of one `cpu` sample now.
pub fn remote_write_body() -> Vec<u8> {
    use seismo_ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
    encode(&WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![Label {
                name: "__name__".into(),
                value: "cpu".into(),
            }],
            samples: vec![Sample {
                value: 0.5,
                timestamp: chrono::Utc::now().timestamp_millis(),
            }],
        }],
    })
}
