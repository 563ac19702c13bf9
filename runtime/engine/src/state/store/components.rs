//! The component versions kept in the state directory, named by the
//! SHA-256 of their bytes and checked against it when read back.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::open::check_private;
use super::*;

/// Hex digits of a version id: the whole SHA-256, in lowercase hex.
pub const VERSION_ID_LEN: usize = 64;

/// Hex digits of the version ids an older eddy recorded: the first 16 of
/// the SHA-256 (see [`Store::load_component`] and `docs/security.md`).
pub const SHORT_VERSION_ID_LEN: usize = 16;

/// The content hash naming a component (its version id): the SHA-256
/// `digest` of its bytes, as 64 lowercase hex digits.
pub fn component_hash_of(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` is a version id an older eddy recorded: 16 lowercase hex
/// digits (the start of the SHA-256 of the bytes, or for an even older
/// eddy their FxHash, see [`legacy_component_hash`]).
pub fn is_short_version_id(id: &str) -> bool {
    id.len() == SHORT_VERSION_ID_LEN && is_lower_hex(id)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The content hash of component `bytes` (see `component_hash_of`).
pub fn component_hash(bytes: &[u8]) -> String {
    component_hash_of(&Sha256::digest(bytes).into())
}

/// The name an earlier eddy gave component `bytes` (the 64-bit FxHash of
/// its bytes, which cannot be verified): recognised only to explain or
/// adopt what such an eddy left in a state directory.
pub fn legacy_component_hash(bytes: &[u8]) -> String {
    use std::hash::BuildHasher;
    format!("{:016x}", rustc_hash::FxBuildHasher.hash_one(bytes))
}

impl Store {
    /// Where component `hash` is kept in the state directory.
    pub fn component_path(&self, hash: &str) -> PathBuf {
        self.dir.join(COMPONENTS_DIR).join(format!("{hash}.wasm"))
    }

    /// Keeps a copy of component `bytes` (content hash `hash`, see
    /// [`component_hash`]) in the state directory, durably, unless it is
    /// already there. A kept file that differs (damaged, replaced) is
    /// replaced.
    pub fn keep_component(&self, hash: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.component_path(hash);
        let io = |error| StoreError::Io {
            dir: self.dir.clone(),
            error,
        };
        let folder = self.dir.join(COMPONENTS_DIR);
        if folder.exists() {
            check_private(&self.dir, &folder, true)?;
            match read_regular_file(&path, MAX_COMPONENT_BYTES, true) {
                Ok(kept) if kept == bytes => return Ok(path),
                Ok(_) => tracing::warn!(
                    "replacing {}: its content is not that of component {hash}",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("replacing {}: {e}", path.display()),
            }
        } else {
            create_private_dir(&folder).map_err(io)?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(&folder).map_err(io)?;
        std::io::Write::write_all(&mut tmp, bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        // The new name (and a new folder's own) must be durable before a
        // checkpoint records the version.
        std::fs::File::open(&folder)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        Ok(path)
    }

    /// The bytes of kept component `hash`, checked against its name: read
    /// only from a regular file (not through a symbolic link, at most
    /// [`MAX_COMPONENT_BYTES`]) whose SHA-256 is `hash` (64 hex digits).
    /// A file that does not match was replaced or damaged and is refused
    /// ([`StoreError::BadComponent`]), so it never runs under the label
    /// of the version recorded in the state directory.
    ///
    /// A version an older eddy recorded is named by the first 16 hex
    /// digits of its SHA-256: its file is accepted when its SHA-256 starts
    /// with them (what that eddy checked). `resolve` adopts such versions
    /// under their full id at start (see `docs/security.md`).
    pub fn load_component(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let file = self.component_path(hash);
        let bad = |reason: String| StoreError::BadComponent {
            dir: self.dir.clone(),
            file: file.clone(),
            reason,
        };
        let short = is_short_version_id(hash);
        if !(short || hash.len() == VERSION_ID_LEN && is_lower_hex(hash)) {
            return Err(bad(format!(
                "`{hash}` is not a version id (the SHA-256 of the component, 64 hex digits, or the first 16 of them recorded by an older eddy): swap the component in again from its source file"
            )));
        }
        check_private(&self.dir, &self.dir.join(COMPONENTS_DIR), true)?;
        let bytes = read_regular_file(&file, MAX_COMPONENT_BYTES, true)
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        let found = component_hash(&bytes);
        if found == hash || short && found.starts_with(hash) {
            return Ok(bytes);
        }
        if short && legacy_component_hash(&bytes) == hash {
            return Err(bad(format!(
                "it was kept by an older eddy, which named versions by a hash that cannot be verified (its SHA-256 name is {found}); swap the component in again from its source file"
            )));
        }
        Err(bad(format!(
            "its content hash is {found}, not {hash} as its name says: the file was replaced or damaged"
        )))
    }
}
