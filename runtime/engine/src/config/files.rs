//! The files a pipeline reads and writes, told apart by what they are, not
//! by how they are named: the input, output and dead-letter file must be
//! three files.

use std::path::{Path, PathBuf};

use super::{Input, Output, Pipeline, PipelineError};

/// What a path names, to tell whether two paths are one file.
#[derive(Debug, PartialEq, Eq)]
enum FileIdentity {
    /// An existing file (symbolic links followed): device and inode.
    Inode(u64, u64),
    /// A file that does not exist yet: its absolute path (see
    /// [`resolve`]).
    Path(PathBuf),
    /// An existing file that is not a regular file (a device, a FIFO,
    /// a directory): sharing it cannot destroy anything.
    Special,
}

/// The identity of this process's file descriptor `fd` (0: standard
/// input, 1: standard output): a regular file it was redirected to, or
/// [`FileIdentity::Special`] for a terminal, a pipe or a closed descriptor.
fn std_identity(fd: u32) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(format!("/proc/self/fd/{fd}")) {
        Ok(m) if m.file_type().is_file() => FileIdentity::Inode(m.dev(), m.ino()),
        _ => FileIdentity::Special,
    }
}

/// Symbolic links followed at most (like the kernel's limit).
const MAX_LINKS: usize = 40;

/// What `path` names. A path that cannot be looked at (a parent that is
/// not a directory, no permission) counts by its path: opening it fails
/// later with a message of its own.
fn identity(path: &Path) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    let mut path = resolve(path);
    for _ in 0..MAX_LINKS {
        match std::fs::metadata(&path) {
            Ok(m) if m.file_type().is_file() => return FileIdentity::Inode(m.dev(), m.ino()),
            Ok(_) => return FileIdentity::Special,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => break,
        }
        // A dangling symbolic link: opening it for writing creates its
        // target, so the target is what counts.
        match std::fs::read_link(&path) {
            Ok(target) => {
                let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
                path = resolve(&parent.join(target));
            }
            Err(_) => break,
        }
    }
    FileIdentity::Path(path)
}

/// The absolute form of `path` as opening it for writing (after creating
/// its missing directories) would see it: its longest existing prefix
/// canonicalized (links resolved), the rest resolved by name (components
/// that do not exist cannot be links, so `x/..` is the directory holding
/// `x`).
fn resolve(path: &Path) -> PathBuf {
    use std::path::Component;
    let Ok(path) = std::path::absolute(path) else {
        return path.to_path_buf();
    };
    let parts: Vec<Component> = path.components().collect();
    for n in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..n].iter().collect();
        if let Ok(mut out) = prefix.canonicalize() {
            for c in &parts[n..] {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    c => out.push(c),
                }
            }
            return out;
        }
    }
    path
}

impl Pipeline {
    /// Refuses a pipeline where two of input, output and dead-letter file
    /// are the same file: writing the output would truncate the input, or
    /// outputs and dead letters would be mixed. Existing files are compared
    /// by device and inode (symbolic and hard links see through), paths
    /// that do not exist yet by their absolute form (so `out.jsonl` and
    /// `./x/../out.jsonl` are one file). Devices and FIFOs (such as
    /// `/dev/null`) may be shared. Call it before opening anything for
    /// writing ([`crate::pipeline::start`] does).
    pub fn check_files(&self) -> Result<(), PipelineError> {
        // Standard input and output count too when they are redirected
        // files (`--output x < x` would otherwise truncate the input).
        let stdin = PathBuf::from("standard input");
        let stdout = PathBuf::from("standard output");
        let input = match &self.input {
            Input::File(path) => Some((path, identity(path))),
            Input::Stdin => Some((&stdin, std_identity(0))),
            Input::Kafka(_) => None,
        };
        let output = match &self.output {
            Output::File(path) => Some((path, identity(path))),
            Output::Stdout => Some((&stdout, std_identity(1))),
            Output::Kafka(_) => None,
        };
        let dead = (&self.dead_letter, identity(&self.dead_letter));
        let same = |a: &FileIdentity, b: &FileIdentity| a == b && *a != FileIdentity::Special;
        if let (Some((out, out_id)), Some((inp, in_id))) = (&output, &input) {
            if same(out_id, in_id) {
                return Err(PipelineError::SameFile {
                    what: "output",
                    path: out.to_path_buf(),
                    other_what: "input",
                    other: inp.to_path_buf(),
                    why: "writing it would destroy the input; choose another --output",
                });
            }
        }
        if let Some((inp, in_id)) = &input {
            if same(&dead.1, in_id) {
                return Err(PipelineError::SameFile {
                    what: "dead-letter",
                    path: dead.0.clone(),
                    other_what: "input",
                    other: inp.to_path_buf(),
                    why: "writing it would destroy the input; choose another --dead-letter",
                });
            }
        }
        if let Some((out, out_id)) = &output {
            if same(out_id, &dead.1) {
                return Err(PipelineError::SameFile {
                    what: "output",
                    path: out.to_path_buf(),
                    other_what: "dead-letter",
                    other: dead.0.clone(),
                    why: "outputs and dead letters would be mixed in one file; choose another --output or --dead-letter",
                });
            }
        }
        Ok(())
    }
}
