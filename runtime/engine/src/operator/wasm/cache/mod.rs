//! The compiled-component cache.
//!
//! Compiling a component with Cranelift costs from a tenth of a second (a
//! Rust operator) to several seconds (a Python or JavaScript operator, which
//! carries its interpreter). The cache keeps the compiled machine code of
//! each component, so the second start of the same component deserializes it
//! instead of compiling again.
//!
//! An entry is keyed by the SHA-256 of the component's bytes and by the
//! engine's compatibility hash (wasmtime's version, target and every setting
//! that changes the code), so a changed component, an upgraded `eddy` or a
//! different engine configuration never reuses stale code. Entries are written
//! to a temporary file and renamed into place, so concurrent runs never read
//! a partial entry. A corrupt or incompatible entry is recompiled and
//! replaced.
//!
//! Location: `$EDDY_CACHE_DIR` when set (`off` disables the cache), else
//! `$XDG_CACHE_HOME/eddy/components`, else `~/.cache/eddy/components`.
//!
//! Size: after each new entry, the least recently used entries (by
//! modification time, which a hit refreshes) are removed until the entries
//! take at most `$EDDY_CACHE_MAX_MB` MiB (default 2048); the entry just
//! written is always kept.
//!
//! # Trust
//!
//! An entry is machine code that runs inside `eddy`, so nothing in the
//! cache is loaded unless the user running `eddy` wrote it:
//!
//! - The directory is created mode 0700 and entries 0600. A directory that
//!   another user owns or that its group or others can write is not used at
//!   all (neither loaded from nor stored to): a warning says why and how to
//!   fix it, and components are compiled.
//! - The directory is opened once and entries are opened relative to it
//!   with `O_NOFOLLOW` (no symbolic links); each entry is checked with
//!   `fstat` on the open file (a regular file, owned by the user, writable
//!   by no one else), read, and deserialized from the bytes read, so what is
//!   checked is what is loaded.
//! - Every entry carries an HMAC-SHA256 of its name and code, keyed by a
//!   random per-user key kept in the directory (`cache.key`, mode 0600,
//!   made on first use). An entry whose code does not verify is ignored
//!   (with a warning), recompiled and replaced: a planted entry is never
//!   deserialized.

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::state::{create_private_dir, euid, unsafe_reason};

type HmacSha256 = Hmac<Sha256>;

/// First bytes of an entry (then its MAC, then the code).
const MAGIC: &[u8; 8] = b"eddycw1\n";
/// Bytes of an entry's MAC (HMAC-SHA256).
const MAC_LEN: usize = 32;
/// The per-user MAC key, in the cache directory.
const KEY_FILE: &str = "cache.key";
/// Bytes of the MAC key.
const KEY_LEN: usize = 32;
/// Largest entry read back (a Python or JavaScript operator compiles to
/// some tens of MiB of code).
const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Compiled now (and stored in the cache when there is one).
    Fresh,
    /// Loaded from the cache.
    Cached,
}

/// Why the cache directory is not used.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("compile cache {dir}: {error}")]
    /// A file operation failed.
    Io {
        /// The state directory.
        dir: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    #[error("compile cache {path} {reason}: compiled code is never loaded from (or stored in) a place another user can write; make it yours and private (`chown {euid} {path} && chmod 700 {path}`), or set EDDY_CACHE_DIR to a private directory (EDDY_CACHE_DIR=off disables the cache)")]
    /// A path another user owns or may write.
    Unsafe {
        /// The file it names.
        path: PathBuf,
        /// Why.
        reason: String,
        /// The user running eddy.
        euid: u32,
    },
    #[error("compile cache key {path} {reason}; delete it (a new key is made, and the cache is filled again)")]
    /// The key is refused.
    BadKey {
        /// The file it names.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    /// Most bytes the entries may take (least recently used removed first).
    max_bytes: u64,
}

/// Default size bound of the cache's entries: 2 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// The cache directory, opened and checked, with its key.
struct OpenDir {
    /// The directory, opened once: entries are opened relative to it.
    fd: File,
    path: PathBuf,
    key: [u8; KEY_LEN],
}

impl Cache {
    /// A cache in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The same cache, its entries bounded to `max_bytes` in all.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Cache {
        self.max_bytes = max_bytes;
        self
    }

    /// The cache named by the environment (see the module docs), or `None`
    /// when it is disabled (`EDDY_CACHE_DIR=off`) or no home is known.
    pub fn from_env() -> Option<Cache> {
        let max = match std::env::var("EDDY_CACHE_MAX_MB") {
            Err(_) => DEFAULT_MAX_BYTES,
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(mb) => mb.saturating_mul(1 << 20),
                Err(_) => {
                    tracing::warn!(
                        "EDDY_CACHE_MAX_MB={v:?} is not a whole number of MiB; using {} MiB",
                        DEFAULT_MAX_BYTES >> 20
                    );
                    DEFAULT_MAX_BYTES
                }
            },
        };
        Self::dir_from_env().map(|c| c.with_max_bytes(max))
    }

    /// [`Cache::from_env`]'s directory.
    fn dir_from_env() -> Option<Cache> {
        if let Some(dir) = std::env::var_os("EDDY_CACHE_DIR") {
            if dir == "off" || dir.is_empty() {
                return None;
            }
            return Some(Cache::new(dir));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|d| !d.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })?;
        Some(Cache::new(base.join("eddy").join("components")))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `bytes` compiled by `engine` lives.
    pub fn entry(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        self.dir
            .join(entry_name(engine, &Sha256::digest(bytes).into()))
    }

    /// The compiled component for `bytes`: from the cache when it holds a
    /// usable entry, else compiled and stored. A cache that cannot be
    /// trusted or used (see the module docs), an entry that does not
    /// verify, or failing to store (a read-only directory, a full disk) is
    /// logged and does not fail the load.
    pub fn compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, Compiled)> {
        self.compile_digest(engine, bytes, &Sha256::digest(bytes).into())
    }

    /// [`Cache::compile`] with the SHA-256 `digest` of `bytes` known.
    fn compile_digest(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &[u8; 32],
    ) -> wasmtime::Result<(Component, Compiled)> {
        let name = entry_name(engine, digest);
        let dir = match self.open() {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::warn!("{e}; compiling without the cache");
                None
            }
        };
        if let Some(dir) = &dir {
            match dir.load(engine, &name) {
                Ok(Some(c)) => return Ok((c, Compiled::Cached)),
                Ok(None) => {}
                Err(reason) => tracing::warn!(
                    "ignoring compile cache entry {}: {reason}; recompiling and replacing it",
                    dir.path.join(&name).display()
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some(dir) = &dir {
            match dir.store(&component, &name) {
                Ok(()) => dir.prune(self.max_bytes, &name),
                Err(e) => tracing::warn!(
                    "could not store the compiled component in {}: {e:#}",
                    self.dir.display()
                ),
            }
        }
        Ok((component, Compiled::Fresh))
    }

    /// Opens the directory (creating it mode 0700 when missing), checks it
    /// and reads (or makes) its key.
    fn open(&self) -> Result<OpenDir, CacheError> {
        let io = |error| CacheError::Io {
            dir: self.dir.clone(),
            error,
        };
        let fd = match open_dir(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_private_dir(&self.dir).map_err(io)?;
                open_dir(&self.dir)
            }
            r => r,
        }
        .map_err(io)?;
        let m = fd.metadata().map_err(io)?;
        if let Some(reason) = unsafe_reason(&m) {
            return Err(CacheError::Unsafe {
                path: self.dir.clone(),
                reason,
                euid: euid(),
            });
        }
        let mut dir = OpenDir {
            fd,
            path: self.dir.clone(),
            key: [0; KEY_LEN],
        };
        dir.key = dir.key()?;
        Ok(dir)
    }
}

/// The file name of the entry for a component with SHA-256 `digest`
/// compiled by `engine`.
fn entry_name(engine: &Engine, digest: &[u8; 32]) -> String {
    let mut h = rustc_hash::FxHasher::default();
    engine.precompile_compatibility_hash().hash(&mut h);
    let mut name = String::with_capacity(64 + 18 + 6);
    for b in digest {
        name.push_str(&format!("{b:02x}"));
    }
    name.push_str(&format!("-{:016x}.cwasm", h.finish()));
    name
}

/// Opens directory `path` (following a symbolic link to it: what counts
/// is the directory opened, which is checked through its descriptor).
fn open_dir(path: &Path) -> std::io::Result<File> {
    Ok(File::from(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?))
}

/// Flags to open a file of the cache for reading: no symbolic link, never
/// blocking on a FIFO.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);

impl OpenDir {
    /// Opens `name` in the directory for reading; `None` when missing.
    fn open_file(&self, name: &str) -> Result<Option<File>, String> {
        match rustix::fs::openat(&self.fd, name, READ_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::LOOP) => Err("it is a symbolic link".into()),
            Err(e) => Err(format!("cannot open it: {}", std::io::Error::from(e))),
        }
    }

    /// Makes a new private (0600) temporary file in the directory.
    fn temp_file(&self) -> std::io::Result<(String, File)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let name = format!(
                ".tmp-{}-{}-{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            match rustix::fs::openat(
                &self.fd,
                name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => return Ok((name, File::from(fd))),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Writes `parts` to a new 0600 file and renames it to `name`
    /// (`replace`: over an existing one; else an existing one is kept and
    /// `Ok(false)` returned).
    fn write_file(&self, name: &str, parts: &[&[u8]], replace: bool) -> std::io::Result<bool> {
        let (tmp, mut file) = self.temp_file()?;
        let written = (|| {
            for p in parts {
                file.write_all(p)?;
            }
            if replace {
                rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
                Ok(true)
            } else {
                file.sync_all()?;
                match rustix::fs::linkat(&self.fd, tmp.as_str(), &self.fd, name, AtFlags::empty()) {
                    Ok(()) => Ok(true),
                    Err(Errno::EXIST) => Ok(false),
                    Err(e) => Err(std::io::Error::from(e)),
                }
            }
        })();
        if !(replace && written.is_ok()) {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        }
        written
    }

    /// The directory's MAC key, made on first use.
    fn key(&self) -> Result<[u8; KEY_LEN], CacheError> {
        let path = self.path.join(KEY_FILE);
        let bad = |reason: String| CacheError::BadKey {
            path: path.clone(),
            reason,
        };
        let io = |error| CacheError::Io {
            dir: self.path.clone(),
            error,
        };
        for _ in 0..3 {
            let Some(mut file) = self.open_file(KEY_FILE).map_err(bad)? else {
                let mut key = [0u8; KEY_LEN];
                File::open("/dev/urandom")
                    .and_then(|mut r| r.read_exact(&mut key))
                    .map_err(io)?;
                // Linked into place only once complete; when another eddy
                // was quicker, its key is read instead.
                if self.write_file(KEY_FILE, &[&key], false).map_err(io)? {
                    return Ok(key);
                }
                continue;
            };
            let m = file.metadata().map_err(io)?;
            if !m.is_file() {
                return Err(bad("is not a regular file".into()));
            }
            if let Some(reason) = unsafe_reason(&m) {
                return Err(bad(reason));
            }
            if std::os::unix::fs::MetadataExt::mode(&m) & 0o077 != 0 {
                return Err(bad(format!(
                    "can be read by other users (mode {:o})",
                    std::os::unix::fs::MetadataExt::mode(&m) & 0o777
                )));
            }
            let mut key = [0u8; KEY_LEN];
            let mut rest = Vec::new();
            file.read_exact(&mut key)
                .and_then(|()| file.read_to_end(&mut rest))
                .map_err(|e| bad(format!("cannot be read: {e}")))?;
            if !rest.is_empty() {
                return Err(bad(format!(
                    "is {} bytes, not {KEY_LEN}",
                    KEY_LEN + rest.len()
                )));
            }
            return Ok(key);
        }
        Err(bad("keeps changing while it is read".into()))
    }

    /// The MAC of entry `name` holding `code`.
    fn mac(&self, name: &str, code: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(MAGIC);
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(code);
        mac
    }

    /// The component in entry `name`, if there is one; an entry that is
    /// not safe to load, does not verify or does not deserialize is an
    /// error (the reason).
    fn load(&self, engine: &Engine, name: &str) -> Result<Option<Component>, String> {
        let Some(mut file) = self.open_file(name)? else {
            return Ok(None);
        };
        let m = file
            .metadata()
            .map_err(|e| format!("cannot read it: {e}"))?;
        if !m.is_file() {
            return Err("it is not a regular file".into());
        }
        if let Some(reason) = unsafe_reason(&m) {
            return Err(format!("it {reason}"));
        }
        if m.len() > MAX_ENTRY_BYTES {
            return Err(format!(
                "it is {} bytes, over the limit of {MAX_ENTRY_BYTES}",
                m.len()
            ));
        }
        let mut bytes = Vec::with_capacity(m.len() as usize);
        (&mut file)
            .take(MAX_ENTRY_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if bytes.len() < MAGIC.len() + MAC_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return Err("it is not an authenticated entry of this eddy".into());
        }
        let (tag, code) = bytes[MAGIC.len()..].split_at(MAC_LEN);
        self.mac(name, code).verify_slice(tag).map_err(|_| {
            "its authentication code does not verify: it was not written by this user's eddy, or it was changed".to_string()
        })?;
        // SAFETY: the code was written by `store` below from
        // `Component::serialize`, by this user (the MAC, keyed by this
        // user's private key, verifies), for an engine with the same
        // compatibility hash (part of the name, which the MAC covers);
        // wasmtime checks the header again.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(c) => {
                // Recently used: the last to be pruned.
                let _ = file.set_modified(std::time::SystemTime::now());
                Ok(Some(c))
            }
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// Removes the least recently used entries (oldest modification time
    /// first), never `keep`, until the entries take at most `max_bytes`.
    /// Failures are logged: pruning never fails a load.
    fn prune(&self, max_bytes: u64, keep: &str) {
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot list the compile cache {}: {e}", self.path.display());
                return;
            }
        };
        let mut found: Vec<(std::time::SystemTime, u64, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let m = e.metadata().ok()?;
                if !name.ends_with(".cwasm") || !m.is_file() {
                    return None;
                }
                Some((m.modified().ok()?, m.len(), name))
            })
            .collect();
        let mut total: u64 = found.iter().map(|(_, len, _)| len).sum();
        if total <= max_bytes {
            return;
        }
        found.sort();
        let mut removed = 0;
        for (_, len, name) in &found {
            if total <= max_bytes {
                break;
            }
            if name == keep {
                continue;
            }
            match rustix::fs::unlinkat(&self.fd, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {
                    total = total.saturating_sub(*len);
                    removed += 1;
                }
                Err(e) => tracing::warn!(
                    "cannot remove compile cache entry {}: {}",
                    self.path.join(name).display(),
                    std::io::Error::from(e)
                ),
            }
        }
        tracing::info!(
            "compile cache {}: removed {removed} least recently used entr{} to stay within {} MiB",
            self.path.display(),
            if removed == 1 { "y" } else { "ies" },
            max_bytes >> 20
        );
    }

    /// Stores `component` as entry `name`, authenticated.
    fn store(&self, component: &Component, name: &str) -> anyhow::Result<()> {
        let code = component.serialize()?;
        let tag = self.mac(name, &code).finalize().into_bytes();
        self.write_file(name, &[MAGIC, &tag, &code], true)?;
        Ok(())
    }
}

/// [`compile`] with the SHA-256 `digest` of `bytes` already computed.
pub fn compile_digest(
    cache: Option<&Cache>,
    engine: &Engine,
    bytes: &[u8],
    digest: &[u8; 32],
) -> wasmtime::Result<(Component, Compiled)> {
    match cache {
        Some(c) => c.compile_digest(engine, bytes, digest),
        None => Ok((Component::new(engine, bytes)?, Compiled::Fresh)),
    }
}

#[cfg(test)]
mod tests;
