//! Unit tests.
use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// The smallest component: `(component)`.
const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";

#[test]
fn second_compile_comes_from_the_cache_and_a_corrupt_entry_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("c"));
    let engine = Engine::default();
    let (_, first) = cache.compile(&engine, EMPTY).unwrap();
    assert_eq!(first, Compiled::Fresh);
    let (_, second) = cache.compile(&engine, EMPTY).unwrap();
    assert_eq!(second, Compiled::Cached);

    // Another engine configuration has its own entry.
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    let other = Engine::new(&config).unwrap();
    assert_ne!(cache.entry(&engine, EMPTY), cache.entry(&other, EMPTY));
    assert_eq!(cache.compile(&other, EMPTY).unwrap().1, Compiled::Fresh);

    // A damaged entry is recompiled and rewritten.
    let entry = cache.entry(&engine, EMPTY);
    std::fs::write(&entry, b"garbage").unwrap();
    assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Fresh);
    assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Cached);
}

#[test]
fn directory_entries_and_key_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("a/b"));
    let engine = Engine::default();
    cache.compile(&engine, EMPTY).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(cache.dir()), 0o700);
    assert_eq!(mode(&cache.entry(&engine, EMPTY)), 0o600);
    assert_eq!(mode(&cache.dir().join(KEY_FILE)), 0o600);
    assert_eq!(
        std::fs::metadata(cache.dir().join(KEY_FILE)).unwrap().len(),
        KEY_LEN as u64
    );
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// Entries made from valid compiled code, in the user's own private
/// directory, that were not written through the cache (planted, or
/// changed afterwards) fail the MAC and are never deserialized.
#[test]
fn a_tampered_or_planted_entry_is_refused_by_the_mac() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("c"));
    let engine = Engine::default();
    assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Fresh);
    let entry = cache.entry(&engine, EMPTY);
    let good = std::fs::read(&entry).unwrap();

    // Valid compiled code (even of this very component) is not loaded
    // unless its MAC verifies: raw (as the cache stored entries before
    // they were authenticated), in the entry format with a made-up MAC,
    // with the real entry's MAC over other code.
    let code = Component::new(&engine, EMPTY).unwrap().serialize().unwrap();
    let mut forged = MAGIC.to_vec();
    forged.extend_from_slice(&[7u8; MAC_LEN]);
    forged.extend_from_slice(&code);
    let mut stolen_mac = good[..MAGIC.len() + MAC_LEN].to_vec();
    stolen_mac.extend_from_slice(&code);
    stolen_mac.push(0);
    // One flipped bit in the code of the real entry.
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    for planted in [code.clone(), forged, stolen_mac, flipped] {
        std::fs::write(&entry, &planted).unwrap();
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o600)).unwrap();
        let open = cache.open().unwrap();
        let name = entry.file_name().unwrap().to_str().unwrap();
        let err = open.load(&engine, name).unwrap_err();
        assert!(
            err.contains("authenticated") || err.contains("does not verify"),
            "{err}"
        );
        // And it is replaced by a good one.
        assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Fresh);
        assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Cached);
    }

    // An entry MAC'd with another key (another user's cache) fails too.
    let other_dir = tempfile::tempdir().unwrap();
    let other_cache = Cache::new(other_dir.path());
    other_cache.compile(&engine, EMPTY).unwrap();
    std::fs::copy(other_cache.entry(&engine, EMPTY), &entry).unwrap();
    assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Fresh);
}

#[test]
fn an_unsafe_directory_or_entry_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::default();
    let cache = Cache::new(dir.path().join("c"));
    cache.compile(&engine, EMPTY).unwrap();
    let entry = cache.entry(&engine, EMPTY);

    // A group- or world-writable directory: compiled, nothing loaded
    // or stored.
    for mode in [0o777, 0o770] {
        std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(mode)).unwrap();
        let e = cache.open().err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains(&cache.dir().display().to_string()), "{msg}");
        assert!(msg.contains("writable by"), "{msg}");
        assert!(msg.contains("chmod 700"), "{msg}");
        std::fs::remove_file(&entry).unwrap();
        assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Fresh);
        assert!(!entry.exists(), "nothing stored in an unsafe directory");
        std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        cache.compile(&engine, EMPTY).unwrap();
    }

    // A world-writable entry, or a symbolic link to a good entry.
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    let name = entry.file_name().unwrap().to_str().unwrap().to_string();
    let err = cache.open().unwrap().load(&engine, &name).unwrap_err();
    assert!(
        err.contains("writable by its group and by other users"),
        "{err}"
    );
    assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Fresh);
    assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Cached);
    let elsewhere = dir.path().join("elsewhere.cwasm");
    std::fs::rename(&entry, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
    let err = cache.open().unwrap().load(&engine, &name).unwrap_err();
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Fresh);
    assert!(!std::fs::symlink_metadata(&entry).unwrap().is_symlink());

    // A key readable by others: the cache is not used.
    let key = cache.dir().join(KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let msg = cache.open().err().expect("refused").to_string();
    assert!(msg.contains("can be read by other users"), "{msg}");
    assert_eq!(cache.compile(&engine, EMPTY).unwrap().1, Compiled::Fresh);
}

/// The cache stays within its size: a new entry removes the least recently
/// used ones (a hit counts as a use), never itself.
#[test]
fn new_entries_remove_the_least_recently_used_beyond_the_size_bound() {
    let dir = tempfile::tempdir().unwrap();
    let engines: Vec<Engine> = [0, 1, 2]
        .iter()
        .map(|i| {
            let mut config = wasmtime::Config::new();
            config.epoch_interruption(*i == 1);
            if *i == 2 {
                config.cranelift_opt_level(wasmtime::OptLevel::None);
            }
            Engine::new(&config).unwrap()
        })
        .collect();
    // Room for two entries of the empty component, not three.
    let probe = Cache::new(dir.path().join("probe"));
    probe.compile(&engines[0], EMPTY).unwrap();
    let size = std::fs::metadata(probe.entry(&engines[0], EMPTY))
        .unwrap()
        .len();
    let cache = Cache::new(dir.path().join("c")).with_max_bytes(size * 5 / 2);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(20));
    let compiled = |i: usize| cache.compile(&engines[i], EMPTY).unwrap().1;

    assert_eq!(compiled(0), Compiled::Fresh);
    pause();
    assert_eq!(compiled(1), Compiled::Fresh);
    pause();
    // A hit makes entry 0 the most recently used...
    assert_eq!(compiled(0), Compiled::Cached);
    pause();
    // ...so the third entry removes entry 1.
    assert_eq!(compiled(2), Compiled::Fresh);
    assert!(cache.entry(&engines[0], EMPTY).exists());
    assert!(!cache.entry(&engines[1], EMPTY).exists());
    assert!(cache.entry(&engines[2], EMPTY).exists());
    // The key file is not an entry: never removed.
    assert!(cache.dir().join(KEY_FILE).exists());

    // A bound below one entry keeps only the newest.
    let tiny = Cache::new(dir.path().join("t")).with_max_bytes(1);
    tiny.compile(&engines[0], EMPTY).unwrap();
    pause();
    tiny.compile(&engines[1], EMPTY).unwrap();
    assert!(!tiny.entry(&engines[0], EMPTY).exists());
    assert!(tiny.entry(&engines[1], EMPTY).exists());
    assert_eq!(
        tiny.compile(&engines[1], EMPTY).unwrap().1,
        Compiled::Cached
    );
}
