//! Unit tests of the host context.

use super::*;

#[test]
fn the_number_of_distinct_state_names_is_bounded() {
    let mut ctx = OpCtx::new("op".into(), None, Limits::default());
    let mut out = Emits::default();
    for i in 0..MAX_STATE_NAMES {
        ctx.begin(&format!("k{i}")).unwrap();
        ctx.set(&format!("name-{i}"), b"1").unwrap();
        ctx.finish(true, &mut out);
    }
    ctx.begin("k").unwrap();
    let err = ctx.set("one-too-many", b"1").unwrap_err();
    assert!(matches!(
        err,
        HostError::TooManyNames {
            limit: MAX_STATE_NAMES
        }
    ));
    assert!(
        err.to_string()
            .contains("more than 1024 distinct state names"),
        "{err}"
    );
    // Names already in use still work, on the batch path too.
    ctx.set("name-7", b"2").unwrap();
    ctx.finish(true, &mut out);
    let slot = {
        let mut v = Vec::new();
        ctx.slots(std::iter::once("k2"), &mut v).unwrap();
        v[0]
    };
    let mut emitted = Emits::default();
    assert!(matches!(
        ctx.apply(
            slot,
            &[(&b"another-new-name"[..], Some(&b"1"[..]))],
            &[],
            &mut emitted
        ),
        Err(HostError::TooManyNames { .. })
    ));
    ctx.apply(
        slot,
        &[(&b"name-3"[..], Some(&b"1"[..]))],
        &[],
        &mut emitted,
    )
    .unwrap();
}

#[test]
fn same_compares_every_byte_of_every_length() {
    for n in 0..40usize {
        let a: Vec<u8> = (0..n as u8).map(|i| b'a' + i % 26).collect();
        assert!(same(&a, &a.clone()));
        for i in 0..n {
            let mut b = a.clone();
            b[i] ^= 1;
            assert!(!same(&a, &b), "length {n}, byte {i}");
        }
        assert!(!same(&a, &a[..n.saturating_sub(1)]) || n == 0);
    }
}

#[test]
fn failed_event_leaves_no_trace_and_ok_event_is_dirty() {
    let mut ctx = OpCtx::new("op".into(), None, Limits::default());
    let mut out = Emits::default();
    ctx.begin("k").unwrap();
    ctx.set("n", b"1").unwrap();
    ctx.emit("k", b"1").unwrap();
    ctx.finish(true, &mut out);
    assert_eq!(out.len(), 1);

    ctx.begin("k").unwrap();
    ctx.set("n", b"2").unwrap();
    ctx.list_push("l", b"x".to_vec()).unwrap();
    ctx.emit("k", b"2").unwrap();
    ctx.finish(false, &mut out);
    assert_eq!(out.len(), 1, "emits of a failed event are dropped");

    ctx.begin("k").unwrap();
    assert_eq!(ctx.get("n").unwrap(), Some(&b"1"[..]));
    assert_eq!(ctx.list_len("l").unwrap(), 0);
    ctx.finish(true, &mut out);

    let mut writes = Vec::new();
    ctx.take_dirty(1, &mut writes);
    assert_eq!(writes.len(), 1);
    assert_eq!(&*writes[0].key, "k");
}

#[test]
fn calls_outside_an_event_and_oversized_values_are_refused() {
    let mut ctx = OpCtx::new(
        "op".into(),
        None,
        Limits {
            max_state_value: 4,
            max_emit: 4,
            ..Limits::default()
        },
    );
    assert!(matches!(ctx.get("n"), Err(HostError::NoKey)));
    ctx.begin("k").unwrap();
    let err = ctx.set("n", &[0; 5]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "state value of 5 bytes exceeds the limit max_state_value = 4 bytes"
    );
    assert!(matches!(
        ctx.emit("k", &[0; 5]),
        Err(HostError::EmitTooLarge { .. })
    ));
}

/// The size of slot `i`'s state as `Entity::encode_tagged` stores it.
fn stored_len(ctx: &OpCtx, i: usize) -> usize {
    let mut buf = Vec::new();
    ctx.slots[i].entity.encode_tagged(0, &ctx.names, &mut buf);
    buf.len()
}

#[test]
fn key_state_size_follows_every_write_and_undo() {
    let mut ctx = OpCtx::new("op".into(), None, Limits::default());
    let mut out = Emits::default();
    ctx.begin("k").unwrap();
    assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));
    ctx.set("a", b"12345").unwrap();
    ctx.set("a", b"1").unwrap();
    ctx.set("bb", b"xyz").unwrap();
    ctx.map_set("m", "f".into(), b"1".to_vec()).unwrap();
    ctx.map_set("m", "f".into(), b"123".to_vec()).unwrap();
    ctx.map_set("m", "gg".into(), b"4".to_vec()).unwrap();
    assert!(ctx.map_delete("m", "f").unwrap());
    for item in [&b"x"[..], b"yy", b"zzz"] {
        ctx.list_push("l", item.to_vec()).unwrap();
    }
    assert_eq!(ctx.list_trim("l", 1).unwrap(), 2);
    assert!(ctx.delete("a").unwrap());
    assert!(!ctx.delete("never").unwrap());
    assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));
    ctx.finish(true, &mut out);
    let kept = ctx.slots[0].size;

    // A failed event's writes are undone, and so is the count.
    ctx.begin("k").unwrap();
    ctx.set("c", b"1").unwrap();
    ctx.clear().unwrap();
    assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));
    ctx.list_push("l2", b"1".to_vec()).unwrap();
    ctx.finish(false, &mut out);
    assert_eq!(ctx.slots[0].size, kept);
    assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));

    // The batched path: a name written twice counts once (its last write).
    let slot = {
        let mut v = Vec::new();
        ctx.slots(std::iter::once("k"), &mut v).unwrap();
        v[0]
    };
    let writes: Vec<(&[u8], Option<&[u8]>)> = vec![
        (b"bb", Some(b"1")),
        (b"new", Some(b"1234")),
        (b"bb", None),
        (b"gone", None),
    ];
    ctx.apply(slot, &writes, &[], &mut out).unwrap();
    assert_eq!(ctx.slots[0].size, stored_len(&ctx, 0));
    assert!(
        ctx.lookup("gone").is_none(),
        "deleting a name never written adds no name"
    );

    // Reads never add names.
    ctx.begin("k").unwrap();
    let names = ctx.names.len();
    assert_eq!(ctx.get("unknown").unwrap(), None);
    assert_eq!(ctx.map_len("unknown").unwrap(), 0);
    assert_eq!(ctx.list_range("unknown", 0, 9).unwrap().len(), 0);
    assert_eq!(ctx.names.len(), names);
    ctx.finish(true, &mut out);
}

#[test]
fn names_keys_emits_and_key_state_are_limited_on_both_paths() {
    let limits = Limits {
        max_name: 8,
        max_emit_key: 8,
        max_emit_per_event: 100,
        max_key_state: 200,
        ..Limits::default()
    };
    let mut ctx = OpCtx::new("op".into(), None, limits);
    let mut out = Emits::default();
    ctx.begin("k").unwrap();
    let err = ctx.set("123456789", b"1").unwrap_err();
    assert_eq!(
        err.to_string(),
        "state name of 9 bytes exceeds the limit max_name_bytes = 8 bytes"
    );
    assert!(
        ctx.lookup("123456789").is_none(),
        "a refused name is not kept"
    );
    let err = ctx.map_set("m", "f".repeat(9), b"1".to_vec()).unwrap_err();
    assert!(err.to_string().starts_with("map field of 9 bytes"), "{err}");
    let err = ctx.emit("123456789", b"1").unwrap_err();
    assert!(err.to_string().contains("max_emit_key_bytes = 8"), "{err}");
    ctx.emit("k", &[0; 50]).unwrap();
    let err = ctx.emit("k", &[0; 50]).unwrap_err();
    assert!(
        err.to_string().contains("max_emit_bytes_per_event = 100"),
        "{err}"
    );
    // State may pass the limit during the event, not at its end.
    ctx.set("v", &[0; 300]).unwrap();
    let err = ctx.check_event().unwrap_err();
    assert!(
        err.to_string().contains("max_key_state_bytes = 200"),
        "{err}"
    );
    ctx.set("v", &[0; 10]).unwrap();
    ctx.check_event().unwrap();
    ctx.finish(false, &mut out);

    let slot = {
        let mut v = Vec::new();
        ctx.slots(std::iter::once("k"), &mut v).unwrap();
        v[0]
    };
    let before = stored_len(&ctx, slot as usize);
    let long: &[u8] = b"123456789";
    for (writes, emits, limit) in [
        (vec![(long, Some(&b"1"[..]))], vec![], "max_name_bytes"),
        (vec![(long, None)], vec![], "max_name_bytes"),
        (
            vec![(&b"v"[..], Some(&[0u8; 300][..]))],
            vec![],
            "max_key_state_bytes",
        ),
        (vec![], vec![(long, &b"1"[..])], "max_emit_key_bytes"),
        (
            vec![],
            vec![(&b"k"[..], &[0u8; 60][..]), (&b"k"[..], &[0u8; 60][..])],
            "max_emit_bytes_per_event",
        ),
    ] {
        let err = ctx.apply(slot, &writes, &emits, &mut out).unwrap_err();
        assert!(err.to_string().contains(limit), "{err}");
        assert!(out.is_empty());
        assert_eq!(stored_len(&ctx, slot as usize), before);
        assert_eq!(ctx.slots[slot as usize].size, before);
    }
}

#[test]
fn what_an_event_holds_in_the_host_is_bounded_by_max_memory() {
    let limits = Limits {
        max_memory: 1000,
        ..Limits::default()
    };
    let mut ctx = OpCtx::new("op".into(), None, limits);
    let mut out = Emits::default();
    ctx.begin("k").unwrap();
    // Each rewrite keeps the old value in the undo journal.
    let err = (0..100)
        .try_for_each(|_| ctx.set("v", &[0; 100]))
        .unwrap_err();
    assert!(err.to_string().contains("max_memory_bytes = 1000"), "{err}");
    ctx.finish(false, &mut out);
    assert_eq!(ctx.slots[0].size, RECORD_HEADER);
}

#[test]
fn long_reasons_are_cut_with_a_note() {
    assert_eq!(cap_reason("short", 10), "short");
    let cut = cap_reason(&"é".repeat(10), 5);
    assert_eq!(cut, "éé... [16 more bytes cut: max_reason_bytes = 5]");
}
