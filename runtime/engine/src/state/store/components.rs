//! The component versions kept in the state directory, named by the
//! SHA-256 of their bytes and checked against it when read back.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::open::check_private;
use super::*;

/// The content hash naming a component: the first 16 hex digits of the
/// SHA-256 `digest` of its bytes.
pub fn component_hash_of(digest: &[u8; 32]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
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
    /// [`MAX_COMPONENT_BYTES`]) whose SHA-256 starts with `hash`. A file
    /// that does not match was replaced or damaged and is refused
    /// ([`StoreError::BadComponent`]), so it never runs under the label
    /// of the version recorded in the state directory.
    pub fn load_component(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let file = self.component_path(hash);
        let bad = |reason: String| StoreError::BadComponent {
            dir: self.dir.clone(),
            file: file.clone(),
            reason,
        };
        if hash.len() != 16 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad(format!(
                "`{hash}` is not a content hash (16 hex digits of SHA-256); the version was recorded by an older eddy, whose content hashes cannot be verified: swap the component in again from its source file"
            )));
        }
        check_private(&self.dir, &self.dir.join(COMPONENTS_DIR), true)?;
        let bytes = read_regular_file(&file, MAX_COMPONENT_BYTES, true)
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        let found = component_hash(&bytes);
        if found != hash {
            if legacy_component_hash(&bytes) == hash {
                return Err(bad(format!(
                    "it was kept by an older eddy, which named versions by a hash that cannot be verified (its SHA-256 name is {found}); swap the component in again from its source file"
                )));
            }
            return Err(bad(format!(
                "its content hash is {found}, not {hash} as its name says: the file was replaced or damaged"
            )));
        }
        Ok(bytes)
    }
}
