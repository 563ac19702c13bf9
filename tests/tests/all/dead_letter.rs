use crate::util::*;

/// Bad lines go to the dead-letter file with their line number and the
/// reason; every good line is handled.
#[test]
fn bad_lines_are_dead_lettered_with_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = Vec::new();
    let lines: Vec<&[u8]> = vec![
        br#"{"key":"a","amount":1}"#,
        b"this is not json",
        br#"{"id":"no key field","amount":1}"#,
        br#"{"key":"b","amount":2}"#,
        b"",
        br#"{"key":true,"amount":1}"#,
        b"{\"key\":\"\xff\xfe\",\"amount\":1}",
        br#"{"key":"a","amount":3}"#,
        br#"{"key":"a","amount":4,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        br#"{"key":"b","amount":5"#,
        br#"{"key":7,"amount":6}"#,
    ];
    for l in &lines {
        input.extend_from_slice(l);
        input.push(b'\n');
    }
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, &input).unwrap();
    let mut p = pipeline(dir.path(), &path, &[("counter", eddy_tests::COUNTER)], 2);
    p.max_line_bytes = 100;
    let s = run(&p);
    assert_eq!(s.lines, 11);
    assert_eq!(s.bad_lines, 6);
    assert_eq!(s.operators[0].handled, 4);

    let dead = read_jsonl(&p.dead_letter);
    let got: Vec<(u64, String)> = dead
        .iter()
        .map(|d| {
            (
                d["line"].as_u64().unwrap(),
                d["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        (
            2,
            "line is not a JSON object: expected ident at line 1 column 2",
        ),
        (3, "missing key field `key`"),
        (6, "key field `key` is not a string or a number"),
        (7, "line is not UTF-8 (invalid byte at offset 8)"),
        (9, "line is 117 bytes, longer than max_line_bytes = 100"),
        (
            10,
            "line is not a JSON object: EOF while parsing an object at line 1 column 21",
        ),
    ];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((gl, ge), (wl, we)) in got.iter().zip(want) {
        assert_eq!((*gl, ge.as_str()), (wl, we));
    }
    assert_eq!(dead[0]["payload"], "this is not json");

    let mut expected = std::collections::BTreeMap::new();
    expected.insert("a".to_string(), (2, 4));
    expected.insert("b".to_string(), (1, 2));
    expected.insert("7".to_string(), (1, 6));
    assert_counter_state(&p.state_dir, &expected);
}
