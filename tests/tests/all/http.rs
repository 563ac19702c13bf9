//! The HTTP control plane of a running pipeline: `/metrics` parsed by a
//! Prometheus text parser equals what the pipeline handled; `/state/..`
//! returns exactly what the operator wrote as of the last checkpoint; the
//! TCP listener wants its token and a loopback address.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use eddy_runtime::control;
use eddy_runtime::{engine, load_operators, Overrides, Pipeline, Shutdown};
use eddy_tests::*;
use serde_json::{json, Value};

use crate::swap::{feed, Running};
use crate::util::*;

/// `GET path` on `conn`, sent as a whole request that closes the
/// connection: the status and the body.
fn get_on(mut conn: impl Read + Write, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: eddy\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (status, body.to_string())
}

/// `GET path` on the control socket `socket`.
pub(crate) fn get(socket: &Path, path: &str) -> (u16, String) {
    let c = UnixStream::connect(socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    get_on(c, path, None)
}

/// `GET path` on the control socket, answered 200: its JSON.
fn get_json(socket: &Path, path: &str) -> Value {
    let (status, body) = get(socket, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The samples of a `/metrics` answer, parsed by a Prometheus text-format
/// parser, by `(name, operator label, worker label)`.
pub(crate) fn scrape(socket: &Path) -> HashMap<(String, String, String), f64> {
    let (status, text) = get(socket, "/metrics");
    assert_eq!(status, 200, "{text}");
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    // The parser skips lines it cannot read: every sample line must have
    // been read (a histogram's bucket lines make one sample).
    let sample_lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let read: usize = parsed
        .samples
        .iter()
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(read, sample_lines, "{text}");
    // Every family has its HELP and TYPE.
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = l.split(' ').nth(2).unwrap();
        assert!(parsed.docs.contains_key(name), "no HELP for {name}");
    }
    let mut out = HashMap::new();
    for s in parsed.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v) => {
                assert!(s.metric.ends_with("_total"), "{} is a counter", s.metric);
                v
            }
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                // Each bucket as `NAME_bucket/LE`, counts cumulative.
                let mut last = 0.0;
                for b in &buckets {
                    assert!(b.count >= last, "{}: buckets not cumulative", s.metric);
                    last = b.count;
                    let key = (
                        format!("{}_bucket/{}", s.metric, b.less_than),
                        s.labels.get("operator").unwrap_or("").to_string(),
                        s.labels.get("worker").unwrap_or("").to_string(),
                    );
                    assert!(out.insert(key, b.count).is_none(), "{} twice", s.metric);
                }
                continue;
            }
            other => panic!("{}: {other:?}", s.metric),
        };
        let label = |k: &str| s.labels.get(k).unwrap_or("").to_string();
        let key = (s.metric.clone(), label("operator"), label("worker"));
        assert!(out.insert(key, value).is_none(), "{} twice", s.metric);
    }
    out
}

/// The sum of `name` over the workers of operator `op`.
fn total(m: &HashMap<(String, String, String), f64>, name: &str, op: &str) -> f64 {
    m.iter()
        .filter(|((n, o, _), _)| n == name && o == op)
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_scraped_during_a_run_parse_as_prometheus_text_and_equal_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let r = Running::start(pipeline(dir.path(), &input, &[("counter", COUNTER)], 2));
    let socket = control::socket_path(&dir.path().join("state"));
    let (_, mut text) = counter_events(300, 20, 11);
    // Seven events the counter refuses (their amount is not a number).
    for i in 0..7 {
        text += &format!("{{\"key\":\"bad-{i}\",\"amount\":\"x\"}}\n");
    }
    feed(&input, &text, 50);
    r.wait_handled(0, 307);

    let m = scrape(&socket);
    let status = r.status();
    let op = &status.operators[0];
    // Per worker, exactly what the workers counted.
    for (w, s) in op.workers.iter().enumerate() {
        let at = |name: &str| m[&(name.to_string(), "counter".into(), w.to_string())];
        assert_eq!(
            at("eddy_events_handled_total"),
            s.handled as f64,
            "worker {w}"
        );
        assert_eq!(
            at("eddy_events_failed_total"),
            s.failed as f64,
            "worker {w}"
        );
        assert_eq!(
            at("eddy_events_emitted_total"),
            s.emitted as f64,
            "worker {w}"
        );
        assert_eq!(
            at("eddy_events_read_total"),
            (s.handled + s.failed) as f64,
            "worker {w}"
        );
    }
    // And in total, what was fed.
    assert_eq!(total(&m, "eddy_events_handled_total", "counter"), 300.0);
    assert_eq!(total(&m, "eddy_events_emitted_total", "counter"), 300.0);
    assert_eq!(total(&m, "eddy_events_failed_total", "counter"), 7.0);
    assert_eq!(total(&m, "eddy_events_dead_lettered_total", "counter"), 7.0);
    assert_eq!(total(&m, "eddy_events_read_total", "counter"), 307.0);
    // The state cache: 20 counter keys and 7 bad ones, each looked up
    // at least once per event, none evicted (no budget is set).
    assert_eq!(total(&m, "eddy_state_cache_keys", "counter"), 27.0);
    assert!(total(&m, "eddy_state_cache_bytes", "counter") > 27.0 * 100.0);
    assert_eq!(total(&m, "eddy_state_cache_misses_total", "counter"), 27.0);
    let lookups = total(&m, "eddy_state_cache_hits_total", "counter")
        + total(&m, "eddy_state_cache_misses_total", "counter");
    assert!(lookups >= 307.0, "{lookups}");
    assert_eq!(
        total(&m, "eddy_state_cache_evictions_total", "counter"),
        0.0
    );
    let one = |name: &str| m[&(name.to_string(), String::new(), String::new())];
    assert_eq!(one("eddy_workers"), 2.0);
    assert_eq!(one("eddy_source_position_lines"), 307.0);
    let size = std::fs::metadata(&input).unwrap().len() as f64;
    assert_eq!(one("eddy_source_position_bytes"), size);
    assert_eq!(one("eddy_source_size_bytes"), size);
    assert_eq!(one("eddy_source_lag_bytes"), 0.0);
    assert_eq!(total(&m, "eddy_swaps_total", "counter"), 0.0);
    assert_eq!(total(&m, "eddy_operator_generation", "counter"), 0.0);

    // A swap and a rollback, each durable (so checkpoints were made).
    r.swap("counter", COUNTER_V2);
    r.rollback("counter");
    let m = scrape(&socket);
    let one = |name: &str| m[&(name.to_string(), String::new(), String::new())];
    assert_eq!(total(&m, "eddy_swaps_total", "counter"), 1.0);
    assert_eq!(total(&m, "eddy_rollbacks_total", "counter"), 1.0);
    assert_eq!(total(&m, "eddy_operator_generation", "counter"), 2.0);
    let checkpoints = one("eddy_checkpoint_duration_seconds_count");
    assert!(checkpoints >= 2.0, "{checkpoints} checkpoints");
    assert!(one("eddy_checkpoint_duration_seconds_sum") > 0.0);
    assert!(one("eddy_checkpoint_duration_max_seconds") > 0.0);
    // 20 counter keys and 7 with an empty state at most were written.
    assert!(one("eddy_checkpoint_writes_total") >= 20.0);
    assert!(one("eddy_checkpoint_written_bytes_total") > 0.0);
    assert_eq!(one("eddy_checkpoint_failures_total"), 0.0);
    let summary = r.stop();
    assert_eq!(summary.operators[0].handled, 300);
}

/// CPU-limit and memory-limit hits are counted apart (exactly the events
/// that broke each limit), the handling-latency histogram and the input
/// stalls show where time went, and the state directory's size is its
/// files'.
#[test]
fn metrics_count_limit_hits_and_show_handling_latency_input_stalls_and_state_size() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let mut p = pipeline(dir.path(), &input, &[("faulty", eddy_tests::FAULTY)], 2);
    p.operators[0].limits.max_call_ms = 200;
    p.operators[0].limits.max_memory = 16 << 20;
    let state = p.state_dir.clone();
    let r = Running::start(p);
    let socket = control::socket_path(&state);
    // 300 events: 6 loop forever, 6 allocate without bound, 6 trap.
    let mut text = String::new();
    for i in 0..300 {
        let action = match i % 50 {
            7 => ",\"action\":\"loop\"",
            31 => ",\"action\":\"alloc\"",
            40 => ",\"action\":\"trap\"",
            _ => "",
        };
        text += &format!("{{\"key\":\"k{}\"{action}}}\n", i % 13);
    }
    feed(&input, &text, 50);
    r.wait_handled(0, 300);
    // A checkpoint since.
    let deadline = Instant::now() + Duration::from_secs(60);
    while scrape(&socket)[&(
        "eddy_checkpoint_duration_seconds_count".to_string(),
        String::new(),
        String::new(),
    )] < 1.0
    {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }

    let size = || {
        let len = |p: &Path| std::fs::metadata(p).unwrap().len();
        let components: u64 = std::fs::read_dir(state.join("components"))
            .unwrap()
            .map(|e| len(&e.unwrap().path()))
            .sum();
        len(&state.join("state.redb")) + components
    };
    let before = size();
    let m = scrape(&socket);
    let after = size();
    let one = |name: &str| m[&(name.to_string(), String::new(), String::new())];
    assert_eq!(total(&m, "eddy_cpu_limit_hits_total", "faulty"), 6.0);
    assert_eq!(total(&m, "eddy_memory_limit_hits_total", "faulty"), 6.0);
    assert_eq!(total(&m, "eddy_events_failed_total", "faulty"), 18.0);
    assert_eq!(total(&m, "eddy_events_handled_total", "faulty"), 282.0);

    // Every loop costs its 200 ms budget inside some run of events.
    let op = |name: &str| m[&(name.to_string(), "faulty".to_string(), String::new())];
    let runs = op("eddy_handling_duration_seconds_count");
    assert!((1.0..=300.0).contains(&runs), "{runs} runs");
    assert_eq!(op("eddy_handling_duration_seconds_bucket/inf"), runs);
    assert!(op("eddy_handling_duration_seconds_sum") >= 1.2);
    assert!(op("eddy_handling_duration_seconds_bucket/0.1") < runs);
    assert!(op("eddy_handling_duration_seconds_bucket/0.00001") <= runs);

    // Every checkpoint stalled the input for a while, the longest no
    // longer than all of them.
    let stalls = one("eddy_input_stall_seconds_count");
    assert!(stalls >= one("eddy_checkpoint_duration_seconds_count"));
    assert!(stalls >= 1.0);
    let max = one("eddy_input_stall_max_seconds");
    assert!(max > 0.0 && max <= one("eddy_input_stall_seconds_sum"));

    let state_size = one("eddy_state_directory_size_bytes");
    assert!(
        before as f64 <= state_size && state_size <= after as f64,
        "{before} <= {state_size} <= {after}"
    );
    r.stop();
}

/// The counter's state of `key` as `/state` shows it.
fn totals(count: u64, sum: u64) -> Value {
    json!({"values": {"totals": {"count": count, "sum": sum as f64}}, "maps": {}, "lists": {}})
}

#[test]
fn state_queries_on_a_running_pipeline_return_the_last_checkpoint_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let mut p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    // A checkpoint after every 400 input events, and none by time.
    p.checkpoint_events = Some(400);
    p.checkpoint_interval = Duration::from_secs(3600);
    let r = Running::start(p);
    let socket = control::socket_path(&dir.path().join("state"));
    let (events, text) = counter_events(600, 30, 3);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();

    // Before any checkpoint: nothing is committed, whatever was handled.
    feed(&input, &lines[..200].concat(), 50);
    r.wait_handled(0, 200);
    let (status, body) = get(&socket, "/state/counter/user-1");
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "operator \"counter\" has no committed state for key \"user-1\""})
    );

    // The checkpoint after event 400, then 200 more events that no
    // checkpoint covers yet: readers see the first 400 exactly.
    feed(&input, &lines[200..].concat(), 50);
    r.wait_handled(0, 600);
    let committed = reference(&events[..400]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (k0, (c0, s0)) = committed.iter().next().unwrap();
    while get(&socket, &format!("/state/counter/{k0}")).0 != 200 {
        assert!(Instant::now() < deadline, "no checkpoint after 400 events");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get_json(&socket, &format!("/state/counter/{k0}")),
        totals(*c0, *s0)
    );
    for (key, (count, sum)) in &committed {
        assert_eq!(
            get_json(&socket, &format!("/state/counter/{key}/totals")),
            json!({"count": count, "sum": *sum as f64}),
            "{key}"
        );
    }
    // A scan: keys in key order, with a limit and a prefix.
    let all = get_json(&socket, "/state/counter?limit=1000");
    let got: BTreeMap<String, Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key"].as_str().unwrap().to_string(), k["state"].clone()))
        .collect();
    let want: BTreeMap<String, Value> = committed
        .iter()
        .map(|(k, (c, s))| (k.clone(), totals(*c, *s)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(all["more"], json!(false));
    let some = get_json(&socket, "/state/counter?prefix=user-1&limit=3");
    let keys: Vec<&str> = some["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["user-1", "user-10", "user-11"]);
    assert_eq!(some["more"], json!(true));

    // `eddy state` asks the running pipeline: the same answer.
    let state = dir.path().join("state");
    let o = eddy_in(
        &[
            "state",
            "get",
            "counter",
            k0,
            "--state",
            state.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap(),
        totals(*c0, *s0)
    );

    // Unknown operator, key or name, and bad requests: the reason, as JSON.
    for (path, status, error) in [
        (
            "/state/nobody/user-1",
            404,
            "no operator named `nobody` in this pipeline (it runs: counter)",
        ),
        (
            "/state/counter/user-999",
            404,
            "operator \"counter\" has no committed state for key \"user-999\"",
        ),
        (
            "/state/counter/user-1/nope",
            404,
            "key \"user-1\" of operator \"counter\" has no value, map or list named \"nope\" (it has: totals)",
        ),
        (
            "/state/counter/a%2Fb%20c",
            404,
            "operator \"counter\" has no committed state for key \"a/b c\"",
        ),
        (
            "/state/counter?limit=10001",
            400,
            "limit 10001 is more than 10000; narrow the prefix, or scan in steps",
        ),
    ] {
        let (got, body) = get(&socket, path);
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({ "error": error }),
            "{path}"
        );
    }
    // A bounded flood of reads on loopback: every one answered, and the
    // pipeline goes on.
    let started = Instant::now();
    for i in 0..500 {
        let (status, _) = get(&socket, &format!("/state/counter/user-{}", i % 30));
        assert_eq!(status, 200);
    }
    let per_sec = 500.0 / started.elapsed().as_secs_f64();
    println!("{per_sec:.0} state reads/s, one connection each");
    feed(&input, "{\"key\":\"user-1\",\"amount\":1}\n", 1);
    r.wait_handled(0, 601);
    r.stop();
}

#[test]
fn the_tcp_listener_needs_the_token_and_a_loopback_address_unless_opted_in() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let (_, text) = counter_events(50, 5, 1);
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 1);
    p.follow = true;
    p.http = Some(eddy_runtime::HttpListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        public: false,
        token_file: None,
    });
    let engine = engine().unwrap();
    let ops = load_operators(&engine, &p).unwrap();
    let running = eddy_runtime::start(&p, ops, &Shutdown::new()).unwrap();
    let addr = running.started().http.expect("a TCP address");
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let token_file = dir.path().join("state").join(control::TOKEN_FILE);
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64);

    let tcp = |path: &str, token: Option<&str>| {
        let c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        get_on(c, path, token)
    };
    let (status, body) = tcp("/status", None);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("no token: send the header `Authorization: Bearer TOKEN`"),
        "{body}"
    );
    let (status, body) = tcp(
        "/metrics",
        Some("0000000000000000000000000000000000000000000000000000000000000000"),
    );
    assert_eq!(
        (status, body.as_str()),
        (403, "{\"error\":\"wrong token\"}")
    );
    // A swap without the token changes nothing.
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let body = format!("{{\"operator\":\"counter\",\"component\":{COUNTER_V2:?}}}");
    write!(
        c,
        "POST /swap HTTP/1.1\r\nHost: eddy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let (code, body) = tcp("/status", Some(token));
        assert_eq!(code, 200, "{body}");
        let s: control::Status = serde_json::from_str(&body).unwrap();
        if s.operators[0].handled == 50 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.operators[0].handled, 50);
    assert_eq!(
        status.operators[0].versions.len(),
        1,
        "the refused swap changed nothing"
    );
    let (code, metrics) = tcp("/metrics", Some(token));
    assert_eq!(code, 200);
    assert!(metrics.contains("eddy_events_handled_total{operator=\"counter\",worker=\"0\"} 50\n"));
    // A second pipeline asking for the same address fails to start, naming
    // it, and leaves no socket behind.
    let other = tempfile::tempdir().unwrap();
    let mut q = pipeline(other.path(), &input, &[("counter", COUNTER)], 1);
    q.http = Some(eddy_runtime::HttpListen {
        addr,
        public: false,
        token_file: None,
    });
    let ops = load_operators(&engine, &q).unwrap();
    let e = eddy_runtime::start(&q, ops, &Shutdown::new())
        .err()
        .expect("the address is taken")
        .to_string();
    assert!(
        e.contains(&format!(
            "cannot serve the control plane on {addr}: cannot listen there"
        )),
        "{e}"
    );
    assert!(!control::socket_path(&other.path().join("state")).exists());
    running.stop();
    running.wait().unwrap();

    // Addresses: loopback only unless opted in; an address, not a name.
    let file = |control: &str| {
        Pipeline::from_toml(
            &format!("{control}\n[[operator]]\nname = \"c\"\ncomponent = \"c.wasm\"\n"),
            Path::new("p.toml"),
            Overrides::default(),
        )
        .map_err(|e| e.to_string())
    };
    let e = file("[control]\nhttp = \"0.0.0.0:9100\"").unwrap_err();
    assert!(
        e.contains("control http = \"0.0.0.0:9100\" is not a loopback address")
            && e.contains("http_public = true"),
        "{e}"
    );
    let p = file("[control]\nhttp = \"0.0.0.0:9100\"\nhttp_public = true").unwrap();
    assert!(p.control);
    assert_eq!(p.http.unwrap().addr, "0.0.0.0:9100".parse().unwrap());
    let e = file("[control]\nhttp = \"localhost:9100\"").unwrap_err();
    assert!(
        e.contains("control http = \"localhost:9100\": not an address"),
        "{e}"
    );
    let p = file("[control]\nhttp = \"[::1]:9100\"\nhttp_token_file = \"tok\"").unwrap();
    assert_eq!(
        p.http.as_ref().unwrap().token_file.as_deref(),
        Some(Path::new("tok"))
    );
    let p = file("control = false\n").unwrap();
    assert!(!p.control && p.http.is_none());
}

/// Headless Chromium, if it is installed (`tests/run-tests.sh` installs
/// it); under CI its absence fails the test.
fn chromium(test: &str) -> Option<&'static str> {
    let found = std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("chromium");
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI must run {test}, but `chromium` is not installed (apt-get install chromium)");
    }
    skipped(&format!(
        "{test}: `chromium` is not installed (apt-get install chromium)"
    ));
    None
}

/// The text of the element `data-field="field"` in the node of operator
/// `op`, in the page's DOM as Chromium dumped it.
fn shown(dom: &str, op: &str, field: &str) -> String {
    let node = dom
        .find(&format!("data-operator=\"{op}\""))
        .unwrap_or_else(|| panic!("no node for operator {op}: {dom}"));
    let at = node
        + dom[node..]
            .find(&format!("data-field=\"{field}\""))
            .unwrap_or_else(|| panic!("no {field} for {op}: {dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].to_string()
}

/// The text of the element `id="id"` in the DOM.
fn by_id(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}: {dom}"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].to_string()
}

#[test]
fn the_live_page_shows_a_running_pipelines_real_numbers_in_chromium() {
    let test = "the_live_page_shows_a_running_pipelines_real_numbers_in_chromium";
    let Some(chromium) = chromium(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let (_, mut text) = counter_events(120, 9, 4);
    for i in 0..3 {
        text += &format!("{{\"key\":\"bad-{i}\",\"amount\":\"x\"}}\n");
    }
    std::fs::write(&input, text).unwrap();
    let mut p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    p.follow = true;
    p.http = Some(eddy_runtime::HttpListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        public: false,
        token_file: None,
    });
    let engine = engine().unwrap();
    let ops = load_operators(&engine, &p).unwrap();
    let running = eddy_runtime::start(&p, ops, &Shutdown::new()).unwrap();
    let addr = running.started().http.unwrap();
    let socket = running.started().control.clone().unwrap();
    let token =
        std::fs::read_to_string(dir.path().join("state").join(control::TOKEN_FILE)).unwrap();
    let token = token.trim();
    let status =
        || match control::request(&socket, &control::Request::Status, control::DEFAULT_WAIT)
            .unwrap()
        {
            control::Response::Status(s) => *s,
            other => panic!("{other:?}"),
        };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status().operators[0].handled + status().operators[0].failed < 123 {
        assert!(Instant::now() < deadline, "stuck");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A swap, so that the page shows a second generation.
    let swapped = control::request(
        &socket,
        &control::Request::Swap {
            operator: "counter".into(),
            component: COUNTER_V2.into(),
        },
        control::DEFAULT_WAIT,
    )
    .unwrap();
    assert!(
        matches!(swapped, control::Response::Swapped(_)),
        "{swapped:?}"
    );
    let s = status();

    let url = format!("http://{addr}/#token={token}");
    let browser = |extra: &[&str]| {
        let o = std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--virtual-time-budget=5000",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        o
    };
    let dom = String::from_utf8(browser(&["--dump-dom"]).stdout).unwrap();
    assert_eq!(shown(&dom, "counter", "handled"), "120", "{dom}");
    assert_eq!(shown(&dom, "counter", "dead-letters"), "3");
    assert_eq!(shown(&dom, "counter", "emitted"), "120");
    assert_eq!(shown(&dom, "counter", "generation"), "1");
    assert_eq!(shown(&dom, "counter", "versions"), "2");
    assert_eq!(
        shown(&dom, "counter", "version"),
        s.operators[0].version.hash[..12]
    );
    assert_eq!(by_id(&dom, "lines"), "123");
    assert_eq!(by_id(&dom, "workers"), "2");
    assert!(by_id(&dom, "checkpoint-age").ends_with(" s ago"), "{dom}");
    assert_eq!(by_id(&dom, "error"), "");

    // A screenshot, kept for a person to look at.
    let shot = dir.path().join("page.png");
    browser(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1100,520",
    ]);
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "a blank page? {} bytes", png.len());
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    let _ = std::fs::copy(&shot, &keep);
    running.stop();
    running.wait().unwrap();
}

#[test]
fn eddy_run_http_serves_the_control_plane_on_tcp_and_says_where() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, text) = counter_events(40, 4, 9);
    std::fs::write(d.join("in.jsonl"), text).unwrap();
    let operator = format!("counter={COUNTER}");
    let args = |http: &str| {
        vec![
            "run".to_string(),
            "--follow".into(),
            "--operator".into(),
            operator.clone(),
            "--input".into(),
            "in.jsonl".into(),
            "--output".into(),
            "out.jsonl".into(),
            "--state".into(),
            "st".into(),
            "--http".into(),
            http.into(),
        ]
    };
    // Not loopback: refused before anything starts, saying how to opt in.
    let o = eddy_in(
        &args("0.0.0.0:0")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        d,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("control http = \"0.0.0.0:0\" is not a loopback address")
            && stderr(&o).contains("(--http-public)"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("st").exists());

    let mut child = std::process::Command::new(eddy_bin())
        .args(args("127.0.0.1:0"))
        .arg("--progress-interval-ms")
        .arg("600000")
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.starts_with("eddy: control plane on http://"))
        .expect("eddy run says where the control plane is");
    let addr: std::net::SocketAddr = line["eddy: control plane on http://".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let token_file = d.join("st").join(control::TOKEN_FILE);
    assert!(
        line.contains(&format!(
            "(token in {}",
            Path::new("st").join(control::TOKEN_FILE).display()
        )),
        "{line}"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let handled = loop {
        let c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (status, body) = get_on(c, "/status", Some(token.trim()));
        assert_eq!(status, 200, "{body}");
        let s: control::Status = serde_json::from_str(&body).unwrap();
        if s.operators[0].handled == 40 || Instant::now() > deadline {
            break s.operators[0].handled;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    drop(lines);
    assert_eq!(handled, 40);
}

/// A bounded flood of control requests on loopback (four clients, each a
/// loop of 400 requests on new TCP connections: status, metrics, state
/// reads and scans, and requests that are refused) while the pipeline
/// reads a growing input: every request is answered with what it asked
/// for, the state a client sees never goes back, and the pipeline
/// finishes with exactly the counter's results. A snapshot over TCP needs
/// the token.
#[test]
fn a_flood_of_control_requests_on_loopback_is_answered_while_the_pipeline_finishes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "").unwrap();
    let mut p = pipeline(dir.path(), &input, &[("counter", COUNTER)], 2);
    p.follow = true;
    p.checkpoint_interval = Duration::from_millis(50);
    p.http = Some(eddy_runtime::HttpListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        public: false,
        token_file: None,
    });
    let engine = engine().unwrap();
    let ops = load_operators(&engine, &p).unwrap();
    let running = eddy_runtime::start(&p, ops, &Shutdown::new()).unwrap();
    let addr = running.started().http.expect("a TCP address");
    let token = std::fs::read_to_string(dir.path().join("state").join(control::TOKEN_FILE))
        .unwrap()
        .trim()
        .to_string();
    let (events, text) = counter_events(60_000, 50, 23);

    let feeder = {
        let input = input.clone();
        // 1,200 pieces, a millisecond apart: longer than the flood.
        std::thread::spawn(move || feed(&input, &text, 50))
    };
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let token = token.clone();
            std::thread::spawn(move || {
                let get = |path: &str| {
                    let conn = std::net::TcpStream::connect(addr).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    get_on(conn, path, Some(&token))
                };
                // Per key, the count last seen: a later checkpoint never
                // shows less.
                let mut seen: HashMap<String, u64> = HashMap::new();
                let mut answered = 0;
                // Answers of /status that came while events were still
                // arriving.
                let mut mid_stream = 0;
                for i in 0..400usize {
                    let key = format!("user-{}", (i * 7 + c) % 50);
                    let path = match i % 8 {
                        0 => "/status".to_string(),
                        1 => "/metrics".to_string(),
                        2 => "/state/counter?limit=100".to_string(),
                        3 => "/state/nobody/user-1".to_string(),
                        4 => "/state/counter?limit=x".to_string(),
                        _ => format!("/state/counter/{key}"),
                    };
                    let (status, body) = get(&path);
                    match i % 8 {
                        0 => {
                            assert_eq!(status, 200, "{path}: {body}");
                            let s: Value = serde_json::from_str(&body).unwrap();
                            assert_eq!(s["operators"][0]["name"], "counter");
                            if s["lines_read"].as_u64().unwrap() < 60_000 {
                                mid_stream += 1;
                            }
                        }
                        1 => {
                            assert_eq!(status, 200, "{path}: {body}");
                            assert!(body.contains("eddy_events_handled_total{"), "{body}");
                        }
                        2 => {
                            // Before the first checkpoint there is no state.
                            assert!(status == 200 || status == 404, "{path}: {body}");
                        }
                        3 => assert_eq!(
                            (status, serde_json::from_str::<Value>(&body).unwrap()),
                            (
                                404,
                                json!({"error": "no operator named `nobody` in this pipeline (it runs: counter)"})
                            ),
                            "{path}"
                        ),
                        4 => {
                            assert_eq!(status, 400, "{path}: {body}");
                            assert!(body.contains("malformed query"), "{body}");
                        }
                        _ => match status {
                            200 => {
                                let v: Value = serde_json::from_str(&body).unwrap();
                                let count = v["values"]["totals"]["count"].as_u64().unwrap();
                                let last = seen.entry(key.clone()).or_default();
                                assert!(count >= *last, "{key}: {count} after {last}");
                                *last = count;
                            }
                            404 => assert!(
                                !seen.contains_key(&key),
                                "{key} had state, then none: {body}"
                            ),
                            _ => panic!("{path}: {status} {body}"),
                        },
                    }
                    answered += 1;
                }
                (answered, mid_stream)
            })
        })
        .collect();
    let (answered, mid_stream) = clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .fold((0, 0), |(a, m), (b, n)| (a + b, m + n));
    assert_eq!(answered, 1600);
    println!("{mid_stream} of 200 status answers came while the input grew");
    assert!(mid_stream > 0, "the flood did not meet a running pipeline");
    feeder.join().unwrap();

    // The pipeline went on: it handles every event, and its state is
    // exactly the counter's.
    let socket = control::socket_path(&dir.path().join("state"));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = get_json(&socket, "/status");
        if s["operators"][0]["handled"].as_u64() == Some(events.len() as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "stuck: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A snapshot over TCP needs the token, like a swap.
    let post = |token: Option<&str>, body: &str| {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            c,
            "POST /snapshot HTTP/1.1\r\nHost: eddy\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    };
    let dest = dir.path().join("snap");
    let body = json!({ "dest": dest }).to_string();
    let (status, answer) = post(None, &body);
    assert_eq!(status, 403, "{answer}");
    assert!(!dest.exists());
    let (status, answer) = post(Some(&token), &body);
    assert_eq!(status, 200, "{answer}");
    let report: eddy_runtime::SnapshotReport = serde_json::from_str(&answer).unwrap();
    let at = report.sources[0].lines as usize;
    assert_counter_state(&dest, &reference(&events[..at]));

    running.stop();
    let summary = running.wait().unwrap();
    assert_eq!(summary.operators[0].handled, events.len() as u64);
    assert_counter_state(&dir.path().join("state"), &reference(&events));
    assert_eq!(
        read_jsonl(&dir.path().join("out.jsonl")).len(),
        events.len()
    );
}
