use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use eddy_runtime::{
    engine, load_operators, Entity, Input, OperatorSpec, Output, Pipeline, Shutdown, Store, Summary,
};

/// A pipeline over `input` with one operator per `(name, component)`,
/// writing to `dir/out.jsonl` with state in `dir/state`.
pub fn pipeline(dir: &Path, input: &Path, ops: &[(&str, &str)], workers: usize) -> Pipeline {
    let state_dir = dir.join("state");
    Pipeline {
        input: Input::File(input.to_path_buf()),
        key_field: "key".into(),
        time_field: None,
        max_line_bytes: 1 << 20,
        operators: ops
            .iter()
            .map(|(name, path)| OperatorSpec {
                name: name.to_string(),
                component: PathBuf::from(path),
                config: serde_json::json!({}),
                limits: Default::default(),
                ttl: Vec::new(),
                window: None,
            })
            .collect(),
        output: Output::File(dir.join("out.jsonl")),
        dead_letter: dir.join("dead-letter.jsonl"),
        state_dir,
        workers,
        checkpoint_interval: Duration::from_millis(200),
        checkpoint_events: None,
        follow: false,
        watch: false,
        control: true,
        http: None,
        verify_state: false,
        cache_bytes: None,
        compact: Some(eddy_runtime::CompactPolicy::AUTO),
        watermark: Default::default(),
    }
}

/// Compiles the pipeline's operators and runs it to the end of its input.
pub fn run(p: &Pipeline) -> Summary {
    run_with(p, &Shutdown::new())
}

/// Like [`run`], stoppable through `shutdown`.
pub fn run_with(p: &Pipeline, shutdown: &Shutdown) -> Summary {
    let engine = engine().unwrap();
    let ops = load_operators(&engine, p).unwrap();
    eddy_runtime::run(p, ops, shutdown).unwrap()
}

/// JSON lines of a file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Input line numbers of `p`'s dead letters, in ascending order.
pub fn dead_letter_lines(p: &Pipeline) -> Vec<u64> {
    let mut lines: Vec<u64> = read_jsonl(&p.dead_letter)
        .iter()
        .map(|d| d["line"].as_u64().expect("a dead letter names its line"))
        .collect();
    lines.sort_unstable();
    lines
}

/// Committed state of `operator`: key -> value name -> JSON value.
pub fn state_values(
    state_dir: &Path,
    operator: &str,
    names: &[&str],
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let store = Store::open(state_dir).unwrap();
    store
        .scan(operator)
        .unwrap()
        .into_iter()
        .map(|(key, rec)| (key, record_values(&rec, names)))
        .collect()
}

/// The values `names` of one stored state record (JSON; `null` when
/// missing).
pub fn record_values(rec: &[u8], names: &[&str]) -> Vec<serde_json::Value> {
    let mut table: Vec<String> = Vec::new();
    let e = Entity::decode(rec, &mut |n| match table.iter().position(|t| t == n) {
        Some(i) => i as u32,
        None => {
            table.push(n.to_string());
            (table.len() - 1) as u32
        }
    })
    .unwrap();
    names
        .iter()
        .map(|n| {
            table
                .iter()
                .position(|t| t == n)
                .and_then(|i| e.get(i as u32))
                .map(|b| serde_json::from_slice(b).unwrap())
                .unwrap_or(serde_json::Value::Null)
        })
        .collect()
}

/// Deterministic pseudo-random numbers (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` counter events over `keys` keys: `(key, amount)` and the JSON lines.
pub fn counter_events(n: usize, keys: u64, seed: u64) -> (Vec<(String, u64)>, String) {
    let mut rng = Rng(seed);
    let mut events = Vec::with_capacity(n);
    let mut text = String::new();
    for _ in 0..n {
        let k = format!("user-{}", rng.next() % keys);
        let amount = rng.next() % 100;
        text += &format!("{{\"key\":\"{k}\",\"amount\":{amount},\"note\":\"x\"}}\n");
        events.push((k, amount));
    }
    (events, text)
}

/// Per key: (count, sum) of `events`.
pub fn reference(events: &[(String, u64)]) -> BTreeMap<String, (u64, u64)> {
    let mut r = BTreeMap::new();
    for (k, a) in events {
        let e = r.entry(k.clone()).or_insert((0, 0));
        e.0 += 1;
        e.1 += a;
    }
    r
}

/// Asserts the counter's committed state equals `expected` exactly.
pub fn assert_counter_state(state_dir: &Path, expected: &BTreeMap<String, (u64, u64)>) {
    let got = state_values(state_dir, "counter", &["totals"]);
    assert_eq!(got.len(), expected.len(), "number of keys with state");
    for (k, (count, sum)) in expected {
        let v = &got[k][0];
        assert_eq!(v["count"].as_u64(), Some(*count), "count of {k}");
        assert_eq!(v["sum"].as_f64(), Some(*sum as f64), "sum of {k}");
    }
}

/// The `eddy` binary (this package's copy of the CLI, built by `cargo test`).
pub fn eddy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_eddy-cli"))
}

/// Runs `eddy ARGS` in `dir` with no stdin, to the end.
pub fn eddy_in(args: &[&str], dir: &Path) -> std::process::Output {
    std::process::Command::new(eddy_bin())
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// What a finished command wrote to stderr.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `seed` with up to 5 random byte changes, insertions or truncations (an
/// always-on cousin of the fuzz targets).
pub fn mutated(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut input = seed.to_vec();
    for _ in 0..(rng.next() % 6) {
        let at = (rng.next() as usize) % (input.len() + 1);
        match rng.next() % 3 {
            0 if at < input.len() => input[at] = rng.next() as u8,
            1 => input.insert(at, rng.next() as u8),
            _ => input.truncate(at),
        }
    }
    input
}

/// Checks that `out.jsonl` holds exactly one output per event, with per-key
/// counts 1, 2, 3, ... (no event lost or repeated across restarts).
pub fn assert_outputs_once(dir: &std::path::Path, events: &[(String, u64)]) {
    let out = read_jsonl(&dir.join("out.jsonl"));
    assert_eq!(
        out.len(),
        events.len(),
        "exactly one output per input event"
    );
    let mut counts = std::collections::HashMap::new();
    for line in &out {
        let c = counts
            .entry(line["key"].as_str().unwrap().to_string())
            .or_insert(0u64);
        *c += 1;
        assert_eq!(line["value"]["count"].as_u64(), Some(*c), "{line}");
    }
}

/// The account the local-user attack tests act as (`nobody`).
pub const OTHER_UID: u32 = 65534;

/// Whether this run can act as another local user: it runs as root and
/// `setpriv` exists. Otherwise says "SKIPPED" with the reason, and fails
/// under CI (`CI` set), where these tests must run.
pub fn can_act_as_other_user(test: &str) -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if root && setpriv {
        return true;
    }
    let why = if root {
        "`setpriv` (util-linux) is missing"
    } else {
        "it must run as root to act as a second local user (uid 65534)"
    };
    if std::env::var_os("CI").is_some() {
        panic!("CI must run {test}, but {why}");
    }
    skipped(&format!("{test}: {why}"));
    false
}

/// Where skipped tests are listed for the summary `tests/run-tests.sh`
/// prints after the run.
pub const SKIPPED_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/eddy-skipped.txt");

/// Records that a test could not run its subject: says "SKIPPED" on stderr
/// and lists it in [`SKIPPED_FILE`], so the run's summary shows it.
pub fn skipped(what: &str) {
    eprintln!("SKIPPED: {what}");
    let line = format!("SKIPPED: {what}\n");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIPPED_FILE)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
}

/// A command that runs `program` as uid/gid 65534 (via `setpriv`).
pub fn as_other_user(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = std::process::Command::new("setpriv");
    c.args([
        &format!("--reuid={OTHER_UID}"),
        &format!("--regid={OTHER_UID}"),
        "--clear-groups",
        "--",
    ])
    .arg(program);
    c
}

/// The bytes of `component` with the version of every `eddy:operator/...`
/// import changed from 0.3.0 to `version` (five characters, so the
/// binary stays valid): the component as one built against that contract
/// would look.
pub fn with_contract(component: &str, version: &str) -> Vec<u8> {
    assert_eq!(version.len(), 5, "{version}: the same length as 0.3.0");
    let mut bytes = std::fs::read(component).unwrap();
    let prefix = b"eddy:operator/";
    let mut relabelled = 0;
    for i in 0..bytes.len() {
        if !bytes[i..].starts_with(prefix) {
            continue;
        }
        // `eddy:operator/<interface>@0.3.0`: an interface name is short.
        let from = i + prefix.len();
        let name = &bytes[from..(from + 16).min(bytes.len())];
        if let Some(at) = name.iter().position(|&b| b == b'@') {
            let v = from + at + 1;
            if bytes[v..].starts_with(b"0.3.0") {
                bytes[v..v + 5].copy_from_slice(version.as_bytes());
                relabelled += 1;
            }
        }
    }
    assert!(relabelled > 0, "no contract import in {component}");
    bytes
}

/// A version record as `eddy` keeps it, loaded at time 0.
pub fn version(generation: u32, hash: &str, source: &str) -> eddy_runtime::Version {
    eddy_runtime::Version {
        generation,
        hash: hash.into(),
        source: source.into(),
        loaded_at_ms: 0,
    }
}

/// Waits until `output` is longer than it was on entry (or, without an
/// output file, not at all), `child` has exited, or `limit` has passed.
fn wait_for_progress(child: &mut std::process::Child, output: Option<&Path>, limit: Duration) {
    let Some(output) = output else { return };
    let len = || std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    let start = len();
    let until = std::time::Instant::now() + limit;
    while len() <= start && std::time::Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `eddy ARGS` in `dir` `runs` times, each killed with SIGKILL
/// `min_ms` plus up to `spread_ms` more (pseudo-random from `seed`) after
/// it has made progress, unless it finished first, then once more to the
/// end. Progress is the `--output` file growing (a checkpoint, or the
/// sink writing): timed from the start instead, a machine faster or
/// slower than expected finishes the whole input in the first run and
/// leaves nothing to kill. Asserts no run printed an error, at least
/// `min_killed` were killed mid-stream, and the last succeeded.
pub fn kill_9_runs_then_finish(
    dir: &Path,
    args: &[&str],
    runs: usize,
    (min_ms, spread_ms): (u64, u64),
    seed: u64,
    min_killed: usize,
) {
    use std::process::{Command, Stdio};
    let mut rng = Rng(seed);
    let mut killed = 0;
    let output = args
        .iter()
        .position(|a| *a == "--output")
        .and_then(|i| args.get(i + 1))
        .map(|o| dir.join(o));
    for _ in 0..runs {
        let mut child = Command::new(eddy_bin())
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_progress(&mut child, output.as_deref(), Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(min_ms + rng.next() % spread_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("error"), "{stderr}");
    }
    eprintln!("killed {killed} of {runs} runs");
    assert!(
        killed >= min_killed,
        "only {killed} runs were killed mid-stream: make the input larger"
    );
    let o = Command::new(eddy_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Every thread's stack of the process `pid`, for the message of a test
/// that gave up waiting on it (where it hangs); gdb when the machine has
/// it, else a line saying why there are none.
pub fn stacks(pid: u32) -> String {
    let o = std::process::Command::new("timeout")
        .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
        .stdin(std::process::Stdio::null())
        .output();
    match o {
        Ok(o) if o.status.success() => {
            let all = String::from_utf8_lossy(&o.stdout);
            // The frames, without gdb's chatter about symbols.
            let frames: Vec<&str> = all
                .lines()
                .filter(|l| l.starts_with("Thread ") || l.starts_with('#'))
                .collect();
            format!("stacks of process {pid}:\n{}", frames.join("\n"))
        }
        Ok(o) => format!(
            "(no stacks of process {pid}: gdb failed: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("(no stacks of process {pid}: {e})"),
    }
}

/// Waits until `child` exits, at most `within`; past that, fails with its
/// stacks and `log` (say, its stderr file's text).
pub fn wait_within(
    child: &mut std::process::Child,
    within: Duration,
    log: impl Fn() -> String,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let stacks = stacks(child.id());
            let _ = child.kill();
            panic!(
                "process {} did not exit within {within:?}; its log:\n{}\n{stacks}",
                child.id(),
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
