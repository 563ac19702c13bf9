//! Reading and making files safely: regular files only, never blocking on
//! a FIFO, owner and mode checked.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The effective user id of this process.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Why a file or directory with metadata `m` is not safe to trust with
/// code: owned by another user, or writable by the group or others.
pub fn unsafe_reason(m: &std::fs::Metadata) -> Option<String> {
    let me = euid();
    if m.uid() != me {
        return Some(format!(
            "is owned by uid {}, not by you (uid {me})",
            m.uid()
        ));
    }
    let mode = m.mode() & 0o7777;
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some(format!(
            "is writable by its group and by other users (mode {mode:o})"
        )),
        (true, false) => Some(format!("is writable by its group (mode {mode:o})")),
        (false, true) => Some(format!("is writable by other users (mode {mode:o})")),
        (false, false) => None,
    }
}

/// Creates `dir` (and missing parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// What kind of file `t` is, for "not a regular file" messages.
pub(super) fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a file"
    }
}

/// Reads the regular file `path`, at most `limit` bytes, without ever
/// blocking on a FIFO or reading a device: it is opened with `O_NONBLOCK`
/// (and `O_NOFOLLOW` when `nofollow`), then checked with `fstat` on the
/// open file, so what is checked is what is read.
pub fn read_regular_file(path: &Path, limit: u64, nofollow: bool) -> std::io::Result<Vec<u8>> {
    use rustix::fs::OFlags;
    use std::io::{Error, ErrorKind};
    let mut flags = OFlags::NONBLOCK | OFlags::CLOEXEC;
    if nofollow {
        flags |= OFlags::NOFOLLOW;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| {
            if nofollow && e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                Error::new(
                    ErrorKind::InvalidInput,
                    "it is a symbolic link, which is not followed here",
                )
            } else {
                e
            }
        })?;
    let m = file.metadata()?;
    if !m.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("not a regular file ({})", file_kind(m.file_type())),
        ));
    }
    let too_large = |size: u64| {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "the file is {size} bytes, over the limit of {limit} bytes ({} MiB)",
                limit >> 20
            ),
        )
    };
    if m.len() > limit {
        return Err(too_large(m.len()));
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    (&mut file).take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}
