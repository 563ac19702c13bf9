//! The Apache Kafka broker that tests run against: `tests/kafka/broker.sh`
//! (a single KRaft node on 127.0.0.1, jars from Maven Central, cached).
//!
//! Most tests share one broker: [`shared_bootstrap`] takes
//! `$EDDY_KAFKA_BOOTSTRAP` (which `.ci/run` sets after starting it), or else
//! starts the broker in the repository's `target/kafka` (and leaves it
//! running for the next test run: `tests/kafka/broker.sh stop` ends it).
//! A test that restarts or kills its broker starts its own in a folder of
//! its own with [`OwnBroker`], so that the others are not disturbed.
//!
//! Errors are strings that say what failed, for the test to report as a
//! failure (in CI) or as skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The broker script.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/kafka/broker.sh");

/// The environment variable that names a running broker
/// (`host:port[,host:port...]`).
pub const BOOTSTRAP_ENV: &str = "EDDY_KAFKA_BOOTSTRAP";

/// The shared broker's bootstrap address, or why there is none.
pub fn shared_bootstrap() -> Result<String, String> {
    static SHARED: OnceLock<Result<String, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var(BOOTSTRAP_ENV) {
            Ok(address) if !address.trim().is_empty() => Ok(address.trim().to_string()),
            _ => script(&["start"], None),
        })
        .clone()
}

/// A broker of one test's own, in a folder of its own; stopped when
/// dropped.
#[derive(Debug)]
pub struct OwnBroker {
    dir: PathBuf,
    bootstrap: String,
}

impl OwnBroker {
    /// Formats a fresh broker in `dir` (config, data and log go there) on a
    /// free port and starts it.
    pub fn start(dir: &Path) -> Result<OwnBroker, String> {
        let bootstrap = script(&["start"], Some(dir))?;
        Ok(OwnBroker {
            dir: dir.to_path_buf(),
            bootstrap,
        })
    }

    /// `127.0.0.1:PORT`; the same across restarts.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The folder with its config, data, and log (`broker.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Controlled shutdown, then a start on the same data and port.
    pub fn restart(&self) -> Result<(), String> {
        self.expect_same(script(&["restart"], Some(&self.dir))?)
    }

    /// SIGKILL: the broker crashes.
    pub fn kill(&self) -> Result<(), String> {
        script(&["kill"], Some(&self.dir)).map(drop)
    }

    /// Controlled shutdown.
    pub fn stop(&self) -> Result<(), String> {
        script(&["stop"], Some(&self.dir)).map(drop)
    }

    /// Starts again on the same data and port after [`kill`](Self::kill)
    /// or [`stop`](Self::stop).
    pub fn resume(&self) -> Result<(), String> {
        self.expect_same(script(&["resume"], Some(&self.dir))?)
    }

    fn expect_same(&self, bootstrap: String) -> Result<(), String> {
        if bootstrap == self.bootstrap {
            Ok(())
        } else {
            Err(format!(
                "the broker came back on {bootstrap}, not {}",
                self.bootstrap
            ))
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Err(why) = self.stop() {
            eprintln!("stopping the test broker in {}: {why}", self.dir.display());
        }
    }
}

/// Runs the broker script; its last line of output (the bootstrap address
/// for start, restart and resume) or why it failed.
fn script(args: &[&str], dir: Option<&Path>) -> Result<String, String> {
    let mut command = Command::new("bash");
    command.arg(SCRIPT).args(args);
    if let Some(dir) = dir {
        command.arg("--dir").arg(dir);
    }
    let what = format!("`tests/kafka/broker.sh {}`", args.join(" "));
    let output = command
        .output()
        .map_err(|e| format!("{what} could not run: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{what} failed ({}):\n{}",
            output.status,
            tail.join("\n")
        ));
    }
    // The script's progress lines, in the test's output.
    eprint!("{stderr}");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string())
}
