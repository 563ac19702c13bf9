//! The codec on its own: what is built reads back exactly (unit and
//! property tests), and a result or batch of arbitrary contents is either
//! refused with an error or accepted and read back consistently, never a
//! panic.

use eddy_codec::wit::{Batch, BatchResult, Strings};
use eddy_codec::{
    BatchBuilder, BatchView, BuildError, CheckedResult, Handled, Limits, ResultBuilder, ResultError,
};
use proptest::prelude::*;

// ---- models: what a batch or a result says, in plain Rust ------------------

/// One event's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok {
        emits: Vec<(String, Vec<u8>)>,
        writes: Vec<(String, Option<Vec<u8>>)>,
    },
    Failed(String),
}

/// A result: the outcomes of the events handled, and whether it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResultModel {
    outcomes: Vec<Outcome>,
    stop: bool,
}

impl ResultModel {
    /// Events of the batch this result answers.
    fn events(&self) -> usize {
        self.outcomes.len() + self.stop as usize
    }
}

/// Builds `m` with a [`ResultBuilder`]. `noise` adds emits and writes to
/// failed and stopped events before they end (which must be dropped).
fn build_result(b: &mut ResultBuilder, m: &ResultModel, noise: bool) -> BatchResult {
    b.begin();
    for o in &m.outcomes {
        match o {
            Outcome::Ok { emits, writes } => {
                for (k, p) in emits {
                    b.emit(k, p);
                }
                for (n, v) in writes {
                    b.write(n.as_bytes(), v.as_deref());
                }
                b.ok();
            }
            Outcome::Failed(reason) => {
                if noise {
                    b.emit("dropped", b"dropped");
                    b.write(b"dropped", None);
                }
                b.failed(reason);
            }
        }
    }
    if m.stop {
        if noise {
            b.emit("dropped", b"dropped");
            b.write(b"dropped", Some(b"dropped"));
        }
        b.stop();
    }
    b.finish()
}

/// Reads a checked result back into a model.
fn read_result(c: CheckedResult<'_>) -> ResultModel {
    let mut m = ResultModel {
        outcomes: Vec::new(),
        stop: false,
    };
    for h in c.iter() {
        assert!(!m.stop, "nothing after stop");
        match h {
            Handled::Ok { emits, writes } => m.outcomes.push(Outcome::Ok {
                emits: emits.map(|(k, p)| (k.to_string(), p.to_vec())).collect(),
                writes: writes
                    .map(|(n, v)| (n.to_string(), v.map(<[u8]>::to_vec)))
                    .collect(),
            }),
            Handled::Failed { reason } => m.outcomes.push(Outcome::Failed(reason.to_string())),
            Handled::Stop => m.stop = true,
        }
    }
    assert_eq!(m.outcomes.len(), c.handled());
    assert_eq!(m.stop, c.stops());
    m
}

/// A key's single values: (name, bytes).
type Values = Vec<(String, Vec<u8>)>;

/// A batch: keys with their values, and events (key index, time, payload).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BatchModel {
    keys: Vec<(String, Values)>,
    events: Vec<(u32, Option<i64>, Vec<u8>)>,
}

fn build_batch(b: &mut BatchBuilder, m: &BatchModel) -> Batch {
    b.clear();
    for (key, values) in &m.keys {
        b.key(key, values.iter().map(|(n, v)| (n.as_str(), v.as_slice())))
            .unwrap();
    }
    for (k, t, p) in &m.events {
        b.event(*k, *t, p).unwrap();
    }
    b.batch().clone()
}

fn read_batch(v: BatchView<'_>) -> BatchModel {
    let keys = v
        .keys()
        .map(|k| {
            let values = k
                .values
                .map(|i| {
                    let (n, b) = v.value(i);
                    (n.to_string(), b.to_vec())
                })
                .collect();
            (k.key.to_string(), values)
        })
        .collect();
    let events = v
        .events()
        .map(|e| (e.key, e.time, e.payload.to_vec()))
        .collect();
    BatchModel { keys, events }
}

// ---- unit tests ----------------------------------------------------------------

fn ok(emits: &[(&str, &str)], writes: &[(&str, Option<&str>)]) -> Outcome {
    Outcome::Ok {
        emits: emits
            .iter()
            .map(|(k, p)| (k.to_string(), p.as_bytes().to_vec()))
            .collect(),
        writes: writes
            .iter()
            .map(|(n, v)| (n.to_string(), v.map(|v| v.as_bytes().to_vec())))
            .collect(),
    }
}

/// A result of three events: ok with emits and writes (one a delete),
/// failed, ok with nothing; then a stop.
fn sample() -> ResultModel {
    ResultModel {
        outcomes: vec![
            ok(
                &[("user-1", r#"{"n":1}"#), ("user-2", "")],
                &[("count", Some("1")), ("old", None)],
            ),
            Outcome::Failed("payload is not JSON".into()),
            ok(&[], &[]),
        ],
        stop: true,
    }
}

#[test]
fn a_result_reads_back_as_built() {
    let m = sample();
    let mut b = ResultBuilder::new();
    let r = build_result(&mut b, &m, true);
    assert_eq!(r.emit_counts, [2, 0, 0]);
    assert_eq!(r.write_counts, [2, 0, 0]);
    assert_eq!(r.failed, [1]);
    assert_eq!(r.deletes, [1]);
    assert!(r.stop);
    let c = CheckedResult::new(&r, 4, &Limits::NONE).unwrap();
    assert_eq!(read_result(c), m);
    // The builder is reused: the next result is built from empty buffers.
    let m2 = ResultModel {
        outcomes: vec![ok(&[("k", "v")], &[])],
        stop: false,
    };
    let r2 = build_result(&mut b, &m2, false);
    assert_eq!(
        read_result(CheckedResult::new(&r2, 1, &Limits::NONE).unwrap()),
        m2
    );
}

#[test]
fn an_empty_result_answers_an_empty_batch() {
    let r = ResultBuilder::new().finish();
    let c = CheckedResult::new(&r, 0, &Limits::NONE).unwrap();
    assert_eq!(c.iter().count(), 0);
    assert_eq!(
        CheckedResult::new(&r, 2, &Limits::NONE).unwrap_err(),
        ResultError::MissingEvents {
            handled: 0,
            events: 2
        }
    );
}

#[test]
fn an_emit_written_by_a_serializer_reads_back() {
    let mut b = ResultBuilder::new();
    b.emit_with("k", |buf| {
        buf.extend_from_slice(b"{}");
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(
        b.emit_with("k", |buf| {
            buf.extend_from_slice(b"half");
            Err("no")
        }),
        Err("no")
    );
    assert_eq!(b.pending_emits(), 1);
    b.ok();
    let r = b.finish();
    let m = read_result(CheckedResult::new(&r, 1, &Limits::NONE).unwrap());
    assert_eq!(m.outcomes, [ok(&[("k", "{}")], &[])]);
}

#[test]
fn a_batch_reads_back_as_built() {
    let m = BatchModel {
        keys: vec![
            (
                "user-1".into(),
                vec![
                    ("count".into(), b"41".to_vec()),
                    ("sum".into(), b"2.5".to_vec()),
                ],
            ),
            ("user-2".into(), vec![]),
            ("".into(), vec![("".into(), vec![])]),
        ],
        events: vec![
            (0, Some(7), br#"{"amount":3}"#.to_vec()),
            (1, None, vec![]),
            (0, Some(-1), b"x".to_vec()),
            (2, None, vec![0xff]),
        ],
    };
    let mut b = BatchBuilder::new();
    let batch = build_batch(&mut b, &m);
    assert_eq!(batch.value_counts, [2, 0, 1]);
    assert_eq!(read_batch(BatchView::new(&batch).unwrap()), m);
    // Reused: cleared, then built again.
    assert_eq!(build_batch(&mut b, &m), batch);
}

#[test]
fn a_batch_stays_within_its_cap() {
    let mut b = BatchBuilder::new();
    b.set_cap(100);
    let k = b.key("k", [("n", &b"1"[..])]).unwrap();
    let size = b.size();
    assert!(matches!(
        b.key("big", [("n", &[0u8; 100][..])]),
        Err(BuildError::Full { cap: 100, .. })
    ));
    assert_eq!(b.size(), size, "a refused key leaves the batch as it was");
    assert!(matches!(
        b.event(k, None, &[0u8; 100]),
        Err(BuildError::Full { .. })
    ));
    b.event(k, None, b"{}").unwrap();
    assert!(b.size() <= 100);
    assert_eq!(
        b.event(5, None, b""),
        Err(BuildError::NoSuchKey { key: 5, keys: 1 })
    );
    assert_eq!(b.event_count(), 1);
    assert_eq!(read_batch(BatchView::new(b.batch()).unwrap()).keys.len(), 1);
}

/// Each way a result can be wrong, with the message that names it.
#[test]
fn a_malformed_result_is_refused_naming_the_field() {
    let m = sample();
    let base = build_result(&mut ResultBuilder::new(), &m, false);
    let check = |r: &BatchResult, events: usize, limits: &Limits| {
        CheckedResult::new(r, events, limits)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    type Corrupt = Box<dyn Fn(&mut BatchResult)>;
    let cases: Vec<(&str, Corrupt, &str)> = vec![
        (
            "an end past the bytes",
            Box::new(|r| r.emit_keys.ends[1] = 90),
            "emit-keys: string 1 ends at 90, past its 12 bytes",
        ),
        (
            "ends that go back",
            Box::new(|r| r.emit_payloads.ends[1] = 3),
            "emit-payloads: string 1 ends at 3, before the string before it (7)",
        ),
        (
            "bytes after the last string",
            Box::new(|r| r.write_values.bytes.push(b'x')),
            "write-values: 2 bytes, but its strings end at 1",
        ),
        (
            "more handled than events",
            Box::new(|r| {
                r.emit_counts.extend([0, 0]);
                r.write_counts.extend([0, 0]);
            }),
            "5 events handled (emit-counts) for a batch of 4 events",
        ),
        (
            "counts of different lengths",
            Box::new(|r| {
                r.write_counts.pop();
            }),
            "write-counts has 2 entries, emit-counts 3: one each per event handled",
        ),
        (
            "an emit counted twice",
            Box::new(|r| r.emit_counts[2] = 1),
            "event 2: 1 emit-keys counted, but only 0 of the 2 in emit-keys are left",
        ),
        (
            "an emit not counted",
            Box::new(|r| r.emit_counts[0] = 1),
            "the events handled count 1 of the 2 strings in emit-keys",
        ),
        (
            "a key without its payload",
            Box::new(|r| r.emit_payloads.truncate(1)),
            "emit-keys holds 2 strings but emit-payloads holds 1: one each per item",
        ),
        (
            "a failed event with emits",
            Box::new(|r| r.failed[0] = 0),
            "event 0: failed, but with 2 emits and 2 writes",
        ),
        (
            "failed past the events handled",
            Box::new(|r| r.failed[0] = 3),
            "failed: entry 0 is 3, but it must be above the one before and below 3",
        ),
        (
            "a reason missing",
            Box::new(|r| r.reasons.truncate(0)),
            "reasons holds 0 strings for 1 failed events",
        ),
        (
            "a delete with a value",
            Box::new(|r| r.deletes[0] = 0),
            "event 0: write 0 deletes its value, but has 1 value bytes",
        ),
        (
            "deletes out of order",
            Box::new(|r| r.deletes = vec![1, 1]),
            "deletes: entry 1 is 1, but it must be above the one before and below 2",
        ),
        (
            "a key that is not UTF-8",
            Box::new(|r| r.emit_keys.bytes[7] = 0xff),
            "event 0: emit 1 key is not UTF-8 (invalid from byte 1)",
        ),
        (
            "a name that is not UTF-8",
            Box::new(|r| r.write_names.bytes[0] = 0xc3),
            "event 0: write 0 name is not UTF-8 (invalid from byte 0)",
        ),
        (
            "a reason that is not UTF-8",
            Box::new(|r| r.reasons.bytes[0] = 0x80),
            "event 1: reason is not UTF-8 (invalid from byte 0)",
        ),
        (
            "no stop with events left",
            Box::new(|r| r.stop = false),
            "3 of the batch's 4 events handled, without `stop`",
        ),
    ];
    for (what, corrupt, message) in &cases {
        let mut r = base.clone();
        corrupt(&mut r);
        assert_eq!(check(&r, 4, &Limits::NONE), *message, "{what}");
    }
    let mut all = base.clone();
    all.stop = true;
    assert_eq!(
        check(&all, 3, &Limits::NONE),
        "`stop` after all 3 events of the batch were handled"
    );
    let limits = [
        (
            Limits {
                max_emit_key: 5,
                ..Limits::NONE
            },
            "event 0: emit 0 key is 6 bytes, over the limit of 5 bytes",
        ),
        (
            Limits {
                max_emit: 6,
                ..Limits::NONE
            },
            "event 0: emit 0 payload is 7 bytes, over the limit of 6 bytes",
        ),
        (
            Limits {
                max_name: 4,
                ..Limits::NONE
            },
            "event 0: write 0 name is 5 bytes, over the limit of 4 bytes",
        ),
        (
            Limits {
                max_value: 0,
                ..Limits::NONE
            },
            "event 0: write 0 value is 1 bytes, over the limit of 0 bytes",
        ),
    ];
    for (limits, message) in &limits {
        assert_eq!(check(&base, 4, limits), *message);
    }
    // A delete has no value to hold to `max_value`.
    let deletes = ResultModel {
        outcomes: vec![ok(&[], &[("gone", None)])],
        stop: false,
    };
    let r = build_result(&mut ResultBuilder::new(), &deletes, false);
    let limits = Limits {
        max_value: 0,
        ..Limits::NONE
    };
    assert!(CheckedResult::new(&r, 1, &limits).is_ok());
}

#[test]
fn a_malformed_batch_is_refused_naming_the_field() {
    let m = BatchModel {
        keys: vec![("k".into(), vec![("n".into(), b"1".to_vec())])],
        events: vec![(0, None, b"{}".to_vec())],
    };
    let base = build_batch(&mut BatchBuilder::new(), &m);
    type Corrupt = Box<dyn Fn(&mut Batch)>;
    let cases: Vec<(Corrupt, &str)> = vec![
        (
            Box::new(|b| b.keys.ends[0] = 9),
            "keys: string 0 ends at 9, past its 1 bytes",
        ),
        (
            Box::new(|b| b.value_counts[0] = 2),
            "the keys' value-counts add up to 2, but value-names holds 1",
        ),
        (
            Box::new(|b| {
                b.value_counts.push(0);
            }),
            "keys has 1 entries but value-counts has 2: one each per key",
        ),
        (
            Box::new(|b| b.event_keys[0] = 1),
            "event 0: key index 1, but the batch has 1 keys",
        ),
        (
            Box::new(|b| {
                b.payloads.push(b"");
            }),
            "event-keys has 1 entries but payloads has 2: one each per event",
        ),
        (
            Box::new(|b| {
                b.timed.push(0);
            }),
            "timed has 1 entries but times has 0: one each per timed event",
        ),
        (
            Box::new(|b| {
                b.timed.push(1);
                b.times.push(5);
            }),
            "timed: entry 0 is 1, but it must be above the one before and below 1",
        ),
        (
            Box::new(|b| b.value_names.bytes[0] = 0xff),
            "value-names: string 0 is not UTF-8 (invalid from byte 0)",
        ),
        (
            Box::new(|b| b.payloads.ends.clear()),
            "payloads: 2 bytes, but its strings end at 0",
        ),
    ];
    for (corrupt, message) in &cases {
        let mut b = base.clone();
        corrupt(&mut b);
        assert_eq!(BatchView::new(&b).unwrap_err().to_string(), *message);
    }
}

#[test]
fn strings_columns_truncate_and_read_out_of_range_as_none() {
    let mut s = Strings::default();
    s.push(b"ab");
    s.push(b"");
    s.push(b"cde");
    assert_eq!(s.get(2), Some(&b"cde"[..]));
    assert_eq!(s.get(3), None);
    s.truncate(1);
    assert_eq!(
        s,
        Strings {
            bytes: b"ab".to_vec(),
            ends: vec![2]
        }
    );
    s.ends[0] = 5;
    assert_eq!(s.get(0), None, "a string past the bytes is not read");
}

// ---- property tests --------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9-]{0,8}",
        1 => ".{0,6}",
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..12)
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => (
            prop::collection::vec((text(), bytes()), 0..4),
            prop::collection::vec((text(), prop::option::of(bytes())), 0..4),
        )
            .prop_map(|(emits, writes)| Outcome::Ok { emits, writes }),
        1 => text().prop_map(Outcome::Failed),
    ]
}

fn result_model() -> impl Strategy<Value = ResultModel> {
    (prop::collection::vec(outcome(), 0..12), any::<bool>())
        .prop_map(|(outcomes, stop)| ResultModel { outcomes, stop })
}

fn batch_model() -> impl Strategy<Value = BatchModel> {
    prop::collection::vec(
        (text(), prop::collection::vec((text(), bytes()), 0..3)),
        1..6,
    )
    .prop_flat_map(|keys| {
        let n = keys.len() as u32;
        let events = prop::collection::vec((0..n, prop::option::of(any::<i64>()), bytes()), 0..16);
        (Just(keys), events)
    })
    .prop_map(|(keys, events)| BatchModel { keys, events })
}

/// A `strings` column: mostly well formed (of short strings, often
/// ASCII), sometimes arbitrary ends and bytes.
fn strings_column() -> impl Strategy<Value = Strings> {
    let string = prop_oneof![
        3 => "[a-c]{0,3}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop_oneof![
        4 => prop::collection::vec(string, 0..4).prop_map(|strings| {
            let mut s = Strings::default();
            for x in &strings {
                s.push(x);
            }
            s
        }),
        1 => (prop::collection::vec(any::<u8>(), 0..16), prop::collection::vec(0..20u32, 0..8))
            .prop_map(|(bytes, ends)| Strings { bytes, ends }),
    ]
}

/// A change to one number or byte of a result.
#[derive(Debug, Clone)]
enum Mutation {
    /// Sets list `list` (of the result's ten) at `index` (modulo its
    /// length) to `value`.
    Set { list: u8, index: usize, value: u32 },
    /// Appends `value` to list `list`.
    Push { list: u8, value: u32 },
    /// Removes the last entry of list `list`.
    Pop { list: u8 },
    /// Flips `stop`.
    FlipStop,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (
            0..14u8,
            any::<usize>(),
            prop_oneof![0..20u32, any::<u32>(), Just(0xff)]
        )
            .prop_map(|(list, index, value)| Mutation::Set { list, index, value }),
        (0..14u8, 0..20u32).prop_map(|(list, value)| Mutation::Push { list, value }),
        (0..14u8).prop_map(|list| Mutation::Pop { list }),
        Just(Mutation::FlipStop),
    ]
}

/// The number lists of a result (byte lists are set to `value as u8`).
enum List<'a> {
    Numbers(&'a mut Vec<u32>),
    Bytes(&'a mut Vec<u8>),
}

fn list(r: &mut BatchResult, i: u8) -> List<'_> {
    match i {
        0 => List::Numbers(&mut r.emit_counts),
        1 => List::Numbers(&mut r.write_counts),
        2 => List::Numbers(&mut r.emit_keys.ends),
        3 => List::Bytes(&mut r.emit_keys.bytes),
        4 => List::Numbers(&mut r.emit_payloads.ends),
        5 => List::Bytes(&mut r.emit_payloads.bytes),
        6 => List::Numbers(&mut r.write_names.ends),
        7 => List::Bytes(&mut r.write_names.bytes),
        8 => List::Numbers(&mut r.write_values.ends),
        9 => List::Bytes(&mut r.write_values.bytes),
        10 => List::Numbers(&mut r.deletes),
        11 => List::Numbers(&mut r.failed),
        12 => List::Numbers(&mut r.reasons.ends),
        _ => List::Bytes(&mut r.reasons.bytes),
    }
}

fn mutate(r: &mut BatchResult, m: &Mutation) {
    match *m {
        Mutation::Set {
            list: l,
            index,
            value,
        } => match list(r, l) {
            List::Numbers(v) if !v.is_empty() => {
                let i = index % v.len();
                v[i] = value;
            }
            List::Bytes(v) if !v.is_empty() => {
                let i = index % v.len();
                v[i] = value as u8;
            }
            _ => {}
        },
        Mutation::Push { list: l, value } => match list(r, l) {
            List::Numbers(v) => v.push(value),
            List::Bytes(v) => v.push(value as u8),
        },
        Mutation::Pop { list: l } => match list(r, l) {
            List::Numbers(v) => {
                v.pop();
            }
            List::Bytes(v) => {
                v.pop();
            }
        },
        Mutation::FlipStop => r.stop = !r.stop,
    }
}

/// What the host does with a result it did not build: check it, and when
/// it is accepted, read all of it; a second check agrees, and the result
/// is exactly what the builder makes of what was read (so nothing in an
/// accepted result goes unread).
fn decode_consistently(r: &BatchResult, events: usize, limits: &Limits) -> Result<(), ResultError> {
    let first = CheckedResult::new(r, events, limits).map(read_result);
    let second = CheckedResult::new(r, events, limits).map(read_result);
    assert_eq!(first, second, "the same answer twice");
    let m = first?;
    match m.stop {
        true => assert!(m.outcomes.len() < events, "a stop leaves events"),
        false => assert_eq!(m.outcomes.len(), events, "an outcome per event"),
    }
    let rebuilt = build_result(&mut ResultBuilder::new(), &m, false);
    assert_eq!(&rebuilt, r, "an accepted result is what its outcomes build");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("EDDY_PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_result_reads_back_as_built(m in result_model(), noise in any::<bool>()) {
        let r = build_result(&mut ResultBuilder::new(), &m, noise);
        let c = CheckedResult::new(&r, m.events(), &Limits::NONE).unwrap();
        prop_assert_eq!(read_result(c), m);
    }

    #[test]
    fn any_batch_reads_back_as_built(m in batch_model()) {
        let b = build_batch(&mut BatchBuilder::new(), &m);
        prop_assert_eq!(read_batch(BatchView::new(&b).unwrap()), m);
    }

    /// A built result with a few numbers or bytes changed: refused, or
    /// accepted and read back consistently; never a panic.
    #[test]
    fn a_changed_result_is_refused_or_read_consistently(
        m in result_model(),
        mutations in prop::collection::vec(mutation(), 1..4),
        extra in 0..3usize,
        limit in prop_oneof![Just(usize::MAX), 0..10usize],
    ) {
        let mut r = build_result(&mut ResultBuilder::new(), &m, false);
        for x in &mutations {
            mutate(&mut r, x);
        }
        let limits = Limits { max_name: limit, max_value: limit, max_emit_key: limit, max_emit: limit };
        let _ = decode_consistently(&r, m.events() + extra, &limits);
    }

    /// Columns of arbitrary numbers and bytes: never a panic.
    #[test]
    fn an_arbitrary_result_is_refused_or_read_consistently(
        counts in prop::collection::vec((0..3u32, 0..3u32), 0..5),
        strings in prop::collection::vec(strings_column(), 5),
        deletes in prop::collection::vec(0..4u32, 0..2),
        failed in prop::collection::vec(0..4u32, 0..2),
        stop in any::<bool>(),
        events in 0..6usize,
    ) {
        let mut s = strings.into_iter();
        let mut next = || s.next().unwrap_or_default();
        let r = BatchResult {
            emit_counts: counts.iter().map(|c| c.0).collect(),
            write_counts: counts.iter().map(|c| c.1).collect(),
            emit_keys: next(),
            emit_payloads: next(),
            write_names: next(),
            write_values: next(),
            deletes,
            failed,
            reasons: next(),
            stop,
        };
        let _ = decode_consistently(&r, events, &Limits::NONE);
    }

    /// A built batch with a few lists changed: refused, or read without a
    /// panic (and then as what the builder makes of it).
    #[test]
    fn a_changed_batch_is_refused_or_read_consistently(
        m in batch_model(),
        which in 0..11u8,
        index in any::<usize>(),
        value in prop_oneof![0..20u32, any::<u32>()],
    ) {
        let mut b = build_batch(&mut BatchBuilder::new(), &m);
        let numbers = match which {
            0 => Some(&mut b.keys.ends),
            1 => Some(&mut b.value_counts),
            2 => Some(&mut b.value_names.ends),
            3 => Some(&mut b.value_bytes.ends),
            4 => Some(&mut b.event_keys),
            5 => Some(&mut b.payloads.ends),
            10 => Some(&mut b.timed),
            _ => None,
        };
        match numbers {
            Some(numbers) if !numbers.is_empty() => {
                let i = index % numbers.len();
                numbers[i] = value;
            }
            Some(_) => {}
            None => {
                let bytes = match which {
                    6 => &mut b.keys.bytes,
                    7 => &mut b.value_names.bytes,
                    8 => &mut b.value_bytes.bytes,
                    _ => &mut b.payloads.bytes,
                };
                if !bytes.is_empty() {
                    let i = index % bytes.len();
                    bytes[i] = value as u8;
                }
            }
        }
        if let Ok(view) = BatchView::new(&b) {
            let read = read_batch(view);
            prop_assert_eq!(&build_batch(&mut BatchBuilder::new(), &read), &b);
        }
    }
}
