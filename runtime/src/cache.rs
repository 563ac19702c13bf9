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
//! `$XDG_CACHE_HOME/eddy/components`, else `~/.cache/eddy/components`. The
//! directory holds executable code that is loaded without re-validation: it
//! must be writable only by the user who runs `eddy` (it is created with
//! mode 0700).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Compiled now (and stored in the cache when there is one).
    Fresh,
    /// Loaded from the cache.
    Cached,
}

/// A directory of compiled components.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache { dir: dir.into() }
    }

    /// The cache named by the environment (see the module docs), or `None`
    /// when it is disabled (`EDDY_CACHE_DIR=off`) or no home is known.
    pub fn from_env() -> Option<Cache> {
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
        let content = Sha256::digest(bytes);
        let mut h = rustc_hash::FxHasher::default();
        engine.precompile_compatibility_hash().hash(&mut h);
        let mut name = String::with_capacity(64 + 18 + 6);
        for b in content {
            name.push_str(&format!("{b:02x}"));
        }
        name.push_str(&format!("-{:016x}.cwasm", h.finish()));
        self.dir.join(name)
    }

    /// The compiled component for `bytes`: from the cache when it holds a
    /// usable entry, else compiled and stored. Failing to store (a read-only
    /// directory, a full disk) is logged and does not fail the load.
    pub fn compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, Compiled)> {
        let entry = self.entry(engine, bytes);
        if entry.exists() {
            // SAFETY: the entry was written by `store` below from
            // `Component::serialize` for an engine with the same
            // compatibility hash (part of the name); wasmtime checks the
            // header again. The directory is the user's own (0700).
            match unsafe { Component::deserialize_file(engine, &entry) } {
                Ok(c) => return Ok((c, Compiled::Cached)),
                Err(e) => tracing::warn!(
                    "ignoring unusable cache entry {}: {e:#}; recompiling",
                    entry.display()
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = self.store(&component, &entry) {
            tracing::warn!(
                "could not store the compiled component in {}: {e:#}",
                self.dir.display()
            );
        }
        Ok((component, Compiled::Fresh))
    }

    fn store(&self, component: &Component, entry: &Path) -> anyhow::Result<()> {
        create_private_dir(&self.dir)?;
        let code = component.serialize()?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::io::Write::write_all(&mut tmp, &code)?;
        tmp.persist(entry)?;
        Ok(())
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Compiles `bytes`, through `cache` when there is one.
pub fn compile(
    cache: Option<&Cache>,
    engine: &Engine,
    bytes: &[u8],
) -> wasmtime::Result<(Component, Compiled)> {
    match cache {
        Some(c) => c.compile(engine, bytes),
        None => Ok((Component::new(engine, bytes)?, Compiled::Fresh)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
