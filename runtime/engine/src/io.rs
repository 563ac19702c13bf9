//! Input and output files: the line reader thread and the sink thread.
//!
//! # Input
//!
//! The reader hands out whole lines only. A UTF-8 byte-order mark at byte 0
//! of the input (file or stdin) is skipped; a run that resumes from a later
//! offset does not look for one. At the end of a file input (without
//! `--follow`), a last line with no `\n` is handled when it is complete
//! JSON; otherwise a writer may still be appending to it, so it is left
//! unread ([`Chunk::Incomplete`]) for a later run, which handles the whole
//! line once. On stdin, which ends for good, a last line is always handled.
//!
//! # Output
//!
//! Output lines are `{"key":<key>,"value":<value>}`: the value inline when
//! it is single-line JSON, a JSON string when it is other UTF-8 text, and
//! `"value_base64":"<base64>"` (standard alphabet, padded) instead of
//! `"value"` when its bytes are not UTF-8, so no byte is ever altered.
//! Dead letters do the same with `payload` / `payload_base64`.
//!
//! Output and dead-letter files that are regular files are truncated on
//! restart to their length at the last checkpoint, so their contents are
//! exactly once. Other outputs (stdout, a FIFO, a device such as
//! `/dev/null`) cannot be truncated, positioned or synced: what they get is
//! at least once (a crash replays the events since the last checkpoint).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::pipeline::Input;

/// Bytes read from the input per read call.
const BLOCK: usize = 256 * 1024;

/// What the reader thread sends.
pub enum Chunk {
    /// Whole lines (each ending in `\n`, but perhaps the last at end of
    /// input), starting at byte `offset` of the input.
    Lines { data: Vec<u8>, offset: u64 },
    /// A line longer than the limit, skipped without being kept in memory.
    Oversized { offset: u64, len: u64 },
    /// The file ends in a line of `len` bytes at `offset` with no `\n` that
    /// is not complete JSON: a writer may still be appending to it, so it
    /// is left unread for a later run. [`Chunk::Eof`] follows.
    Incomplete { offset: u64, len: u64 },
    /// End of input.
    Eof,
    /// The input could not be read.
    Error(String),
}

/// Opens `input` positioned at byte `offset`.
pub fn open_input(input: &Input, offset: u64) -> io::Result<Box<dyn Read + Send>> {
    match input {
        Input::Stdin => Ok(Box::new(io::stdin())),
        Input::File(path) => {
            let mut f = File::open(path)?;
            if offset > 0 {
                f.seek(SeekFrom::Start(offset))?;
            }
            Ok(Box::new(f))
        }
    }
}

/// Following a file as it grows (`--follow`).
pub struct Follow {
    /// The file, to notice when it is truncated or replaced.
    pub path: PathBuf,
    /// Raised when the pipeline stops.
    pub stop: Arc<AtomicBool>,
}

/// What the end of the input means to [`read_lines`].
pub enum End {
    /// The input ends for good (stdin): a last line without its `\n` is
    /// handled like any other.
    Final,
    /// A file another process may still be appending to: a last line
    /// without its `\n` is handled only if it is complete JSON, otherwise
    /// it is reported as [`Chunk::Incomplete`] and left unread.
    File,
    /// `--follow`: the end of the file is not the end of the input.
    Follow(Follow),
}

/// The UTF-8 byte-order mark, skipped at byte 0 of an input.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How often a followed file is polled for new lines.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads `r` (positioned at `offset`) into chunks of whole lines until end
/// of input or until the receiver goes away. Lines longer than `max_line`
/// are reported as [`Chunk::Oversized`] instead. A byte-order mark at
/// offset 0 is skipped. `end` says what to do at the end of the input (see
/// [`End`]); with [`End::Follow`] it waits for more lines (a last line
/// without its `\n` waits for it) until `follow.stop` is raised.
pub fn read_lines(
    mut r: Box<dyn Read + Send>,
    mut offset: u64,
    max_line: usize,
    tx: Sender<Chunk>,
    end: End,
) {
    let (follow, final_end) = match end {
        End::Final => (None, true),
        End::File => (None, false),
        End::Follow(f) => (Some(f), false),
    };
    // Only the very start of the input may hold a byte-order mark.
    let mut bom_pending = offset == 0;
    let mut block = vec![0u8; BLOCK];
    // The incomplete line read so far, starting at `offset`.
    let mut cur: Vec<u8> = Vec::with_capacity(BLOCK * 2);
    // Inside an oversized line: its start and length so far.
    let mut skipping: Option<(u64, u64)> = None;
    loop {
        let n = match r.read(&mut block) {
            Ok(0) => match &follow {
                None => break,
                Some(f) => {
                    if f.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let read = offset + cur.len() as u64 + skipping.map_or(0, |(_, len)| len);
                    match std::fs::metadata(&f.path) {
                        Ok(m) if m.len() < read => {
                            let _ = tx.send(Chunk::Error(format!(
                                "{} shrank to {} bytes while followed (read up to byte {read}): it was truncated or replaced",
                                f.path.display(),
                                m.len()
                            )));
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = tx.send(Chunk::Error(format!(
                                "{} while followed: {e}",
                                f.path.display()
                            )));
                            return;
                        }
                    }
                    std::thread::sleep(FOLLOW_POLL);
                    continue;
                }
            },
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Chunk::Error(e.to_string()));
                return;
            }
        };
        let mut data = &block[..n];
        if let Some((start, len)) = skipping {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    let total = len + i as u64 + 1;
                    if tx
                        .send(Chunk::Oversized {
                            offset: start,
                            len: total,
                        })
                        .is_err()
                    {
                        return;
                    }
                    offset = start + total;
                    skipping = None;
                    data = &data[i + 1..];
                }
                None => {
                    skipping = Some((start, len + n as u64));
                    continue;
                }
            }
        }
        cur.extend_from_slice(data);
        if bom_pending {
            if cur.len() < BOM.len() && BOM.starts_with(&cur) {
                // Too few bytes yet to tell.
                continue;
            }
            bom_pending = false;
            if cur.starts_with(BOM) {
                cur.drain(..BOM.len());
                offset += BOM.len() as u64;
            }
        }
        if let Some(last) = memchr::memrchr(b'\n', &cur) {
            let rest = cur.split_off(last + 1);
            let lines = std::mem::replace(&mut cur, rest);
            let len = lines.len() as u64;
            if tx
                .send(Chunk::Lines {
                    data: lines,
                    offset,
                })
                .is_err()
            {
                return;
            }
            offset += len;
        }
        if cur.len() > max_line {
            skipping = Some((offset, cur.len() as u64));
            cur.clear();
        }
    }
    if let Some((start, len)) = skipping {
        // An oversized line cut short by the end of a file may still be
        // growing: it is dead-lettered whole once its `\n` is there.
        let _ = tx.send(if final_end {
            Chunk::Oversized { offset: start, len }
        } else {
            Chunk::Incomplete { offset: start, len }
        });
    } else if !cur.is_empty() {
        let _ = tx.send(if final_end || is_complete_json(&cur) {
            Chunk::Lines { data: cur, offset }
        } else {
            Chunk::Incomplete {
                offset,
                len: cur.len() as u64,
            }
        });
    }
    let _ = tx.send(Chunk::Eof);
}

/// Whether `line` (without a `\n`) is one complete JSON object, perhaps
/// with whitespace around it. Only an object is an event; a number such as
/// `123` may be the start of `12345` still being written.
fn is_complete_json(line: &[u8]) -> bool {
    line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
}

/// What the sink thread receives.
pub enum SinkMsg {
    /// Output lines.
    Out(Vec<u8>),
    /// Dead-letter lines.
    Dead(Vec<u8>),
    /// Flush both (and sync files); reply with their lengths.
    Flush(Sender<Result<SinkLens, SinkError>>),
}

/// Lengths of the file outputs after a flush, for the checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkLens {
    /// `None` when the output is stdout or not a regular file.
    pub out: Option<u64>,
    /// `None` when the dead-letter file is not a regular file.
    pub dead: Option<u64>,
}

/// Where the sink writes, as named in its errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// Standard output.
    Stdout,
    /// The output file.
    Output(PathBuf),
    /// The dead-letter file.
    DeadLetter(PathBuf),
}

impl std::fmt::Display for SinkTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkTarget::Stdout => f.write_str("writing to stdout"),
            SinkTarget::Output(p) => write!(f, "writing output {}", p.display()),
            SinkTarget::DeadLetter(p) => write!(f, "writing dead-letter file {}", p.display()),
        }
    }
}

/// Writing an output failed (a full disk, a closed pipe...): names the
/// output and the OS error, e.g. `writing output out.jsonl: No space left
/// on device (os error 28)`.
#[derive(Debug, thiserror::Error)]
#[error("{target}: {error}")]
pub struct SinkError {
    /// What was being written.
    pub target: SinkTarget,
    /// The OS error.
    pub error: io::Error,
}

/// An output file opened for a run by [`open_output_file`].
#[derive(Debug)]
pub struct OutputFile {
    /// Its path, for messages.
    pub path: PathBuf,
    /// The open file, positioned where the run writes.
    pub file: File,
    /// Its length kept from earlier runs; `None` when it is not a regular
    /// file (a FIFO, a device such as `/dev/null`): such a file cannot be
    /// truncated, positioned or synced, so no length is checkpointed and
    /// what it gets is at least once, like stdout.
    pub len: Option<u64>,
}

/// An output that counts what it wrote.
struct Counted {
    w: BufWriter<Box<dyn Write + Send>>,
    /// The file to sync at each flush (regular files only).
    sync: Option<File>,
    /// Bytes in the file; `None` when not tracked (stdout, not a regular
    /// file).
    len: Option<u64>,
    target: SinkTarget,
}

impl Counted {
    fn new(f: OutputFile, target: SinkTarget, capacity: usize) -> io::Result<Counted> {
        let w: Box<dyn Write + Send> = Box::new(f.file.try_clone()?);
        Ok(Counted {
            w: BufWriter::with_capacity(capacity, w),
            sync: f.len.is_some().then_some(f.file),
            len: f.len,
            target,
        })
    }
    fn error(&self, error: io::Error) -> SinkError {
        SinkError {
            target: self.target.clone(),
            error,
        }
    }
    fn write(&mut self, b: &[u8]) -> Result<(), SinkError> {
        if let Some(len) = &mut self.len {
            *len += b.len() as u64;
        }
        self.w.write_all(b).map_err(|e| self.error(e))
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        self.w.flush().map_err(|e| self.error(e))?;
        if let Some(f) = &self.sync {
            f.sync_data().map_err(|e| self.error(e))?;
        }
        Ok(())
    }
}

/// Opens file output `path` for a run that resumes after `committed` bytes
/// (truncating what a crashed run wrote after its last checkpoint), or
/// from empty when there is no checkpoint for it. A path that is not a
/// regular file (a FIFO, a device) is opened for writing as it is, with no
/// length (see [`OutputFile::len`]); opening a FIFO waits for its reader.
pub fn open_output_file(path: &Path, committed: Option<u64>) -> io::Result<OutputFile> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(OutputFile {
            path: path.to_path_buf(),
            file: f,
            len: None,
        });
    }
    let len = meta.len();
    let keep = match committed {
        Some(c) if c <= len => c,
        Some(c) => {
            tracing::warn!(
                "{}: shorter ({len} bytes) than at the last checkpoint ({c} bytes); appending",
                path.display()
            );
            len
        }
        None => 0,
    };
    f.set_len(keep)?;
    f.seek(SeekFrom::Start(keep))?;
    Ok(OutputFile {
        path: path.to_path_buf(),
        file: f,
        len: Some(keep),
    })
}

/// Runs the sink: writes output (`None`: stdout) and dead-letter lines in
/// arrival order. Stops at the first write error, which names the output.
pub fn run_sink(
    out: Option<OutputFile>,
    dead: OutputFile,
    rx: Receiver<SinkMsg>,
) -> Result<(), SinkError> {
    let mut out = match out {
        Some(f) => {
            let target = SinkTarget::Output(f.path.clone());
            Counted::new(f, target.clone(), 1 << 20).map_err(|error| SinkError { target, error })?
        }
        None => Counted {
            w: BufWriter::with_capacity(1 << 16, Box::new(io::stdout())),
            sync: None,
            len: None,
            target: SinkTarget::Stdout,
        },
    };
    let target = SinkTarget::DeadLetter(dead.path.clone());
    let mut dead =
        Counted::new(dead, target.clone(), 8 << 10).map_err(|error| SinkError { target, error })?;
    let stdout = out.target == SinkTarget::Stdout;
    for msg in rx.iter() {
        match msg {
            SinkMsg::Out(b) => {
                out.write(&b)?;
                if stdout && rx.is_empty() {
                    // Interactive use: show results as they come.
                    out.flush()?;
                }
            }
            SinkMsg::Dead(b) => dead.write(&b)?,
            SinkMsg::Flush(reply) => {
                let r = out.flush().and_then(|()| dead.flush()).map(|()| SinkLens {
                    out: out.len,
                    dead: dead.len,
                });
                let _ = reply.send(r);
            }
        }
    }
    out.flush()?;
    dead.flush()
}

/// Appends `{"key":<key>,"value":<value>}\n` to `buf`: the value inline when
/// it is JSON on one line, as a JSON string when it is other UTF-8 text,
/// and as `"value_base64":"<base64>"` when it is not UTF-8.
pub fn format_output(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(b"{\"key\":");
    serde_json::to_writer(&mut *buf, key).expect("writing to a Vec cannot fail");
    buf.push(b',');
    push_field(buf, "value", value);
    buf.extend_from_slice(b"}\n");
}

/// Appends the JSON object member `"name":<value>`: `value` inline when it
/// is single-line JSON, else as a JSON string when it is UTF-8; when it is
/// not UTF-8, `"name_base64":"<base64 of the bytes>"` instead, so that no
/// byte is lost or replaced.
pub fn push_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    // The common case first: single-line JSON (its syntax checked without
    // UTF-8, then UTF-8 checked only when there is a non-ASCII byte).
    let is_json = memchr::memchr2(b'\n', b'\r', value).is_none()
        && serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok();
    if is_json && (value.is_ascii() || std::str::from_utf8(value).is_ok()) {
        push_name(buf, name);
        buf.extend_from_slice(value);
    } else {
        push_string_field(buf, name, value);
    }
}

/// Appends `"name":"<value as a JSON string>"` when `value` is UTF-8, else
/// `"name_base64":"<base64 of the bytes>"`.
pub fn push_string_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(text) => {
            push_name(buf, name);
            serde_json::to_writer(&mut *buf, text).expect("writing to a Vec cannot fail");
        }
        Err(_) => push_base64_field(buf, name, value),
    }
}

/// Appends `"name":` (`name` is a plain identifier).
fn push_name(buf: &mut Vec<u8>, name: &str) {
    buf.push(b'"');
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":");
}

#[cold]
fn push_base64_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.push(b'"');
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"_base64\":\"");
    push_base64(buf, value);
    buf.push(b'"');
}

/// Appends the standard (RFC 4648, padded) base64 of `data`.
pub fn push_base64(buf: &mut Vec<u8>, data: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    buf.reserve(data.len().div_ceil(3) * 4);
    let (chunks, rest) = data.as_chunks::<3>();
    for &[a, b, c] in chunks {
        let n = u32::from(a) << 16 | u32::from(b) << 8 | u32::from(c);
        buf.extend_from_slice(&[
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            ALPHABET[(n >> 6) as usize & 63],
            ALPHABET[n as usize & 63],
        ]);
    }
    match *rest {
        [a] => {
            let n = u32::from(a) << 16;
            buf.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            buf.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                ALPHABET[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn output_lines_inline_json_and_quote_the_rest() {
        let mut b = Vec::new();
        format_output(&mut b, "k\"1", br#"{"n":1}"#);
        format_output(&mut b, "k2", b"plain text");
        format_output(&mut b, "k3", b"{\n\"n\":1}");
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "{\"key\":\"k\\\"1\",\"value\":{\"n\":1}}\n{\"key\":\"k2\",\"value\":\"plain text\"}\n{\"key\":\"k3\",\"value\":\"{\\n\\\"n\\\":1}\"}\n"
        );
    }

    fn collect(input: &[u8], max: usize) -> Vec<String> {
        collect_from(
            Box::new(io::Cursor::new(input.to_vec())),
            10,
            max,
            End::Final,
        )
    }

    fn collect_from(r: Box<dyn Read + Send>, offset: u64, max: usize, end: End) -> Vec<String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        read_lines(r, offset, max, tx, end);
        show(rx)
    }

    fn show(rx: Receiver<Chunk>) -> Vec<String> {
        rx.iter()
            .map(|c| match c {
                Chunk::Lines { data, offset } => {
                    format!("lines@{offset}:{}", String::from_utf8_lossy(&data))
                }
                Chunk::Oversized { offset, len } => format!("oversized@{offset}+{len}"),
                Chunk::Incomplete { offset, len } => format!("incomplete@{offset}+{len}"),
                Chunk::Eof => "eof".into(),
                Chunk::Error(e) => format!("error {e}"),
            })
            .collect()
    }

    #[test]
    fn follow_waits_for_whole_lines_and_notices_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "a\nb").unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let follow = Follow {
            path: path.clone(),
            stop: stop.clone(),
        };
        let f = File::open(&path).unwrap();
        let t =
            std::thread::spawn(move || read_lines(Box::new(f), 0, 100, tx, End::Follow(follow)));
        let first = rx.recv().unwrap();
        assert!(matches!(first, Chunk::Lines { ref data, offset: 0 } if data == b"a\n"));
        // The partial line "b" is held back until its newline is written.
        std::thread::sleep(Duration::from_millis(100));
        assert!(rx.try_recv().is_err());
        let mut w = OpenOptions::new().append(true).open(&path).unwrap();
        w.write_all(b"c\n").unwrap();
        let next = rx.recv().unwrap();
        assert!(matches!(next, Chunk::Lines { ref data, offset: 2 } if data == b"bc\n"));
        // Truncation is an error naming the file, not silent garbage.
        std::fs::write(&path, "").unwrap();
        match rx.recv().unwrap() {
            Chunk::Error(e) => assert!(e.contains("truncated or replaced"), "{e}"),
            _ => panic!("expected an error"),
        }
        t.join().unwrap();
        drop(stop);
    }

    #[test]
    fn reader_splits_whole_lines_and_skips_oversized_ones() {
        assert_eq!(
            collect(b"a\nbb\nc", 100),
            ["lines@10:a\nbb\n", "lines@15:c", "eof"]
        );
        assert_eq!(collect(b"", 100), ["eof"]);
        let mut big = vec![b'x'; BLOCK * 2];
        big.push(b'\n');
        big.extend_from_slice(b"ok\n");
        assert_eq!(
            collect(&big, 1000),
            [
                format!("oversized@10+{}", BLOCK * 2 + 1),
                format!("lines@{}:ok\n", 10 + BLOCK * 2 + 1),
                "eof".into()
            ]
        );
    }

    /// Reads one byte per call, like a slow pipe.
    struct Trickle(io::Cursor<Vec<u8>>);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_skipped() {
        let input = b"\xEF\xBB\xBF{\"key\":\"a\"}\nb\n".to_vec();
        let from_start = |r: Box<dyn Read + Send>| collect_from(r, 0, 100, End::Final);
        let want = ["lines@3:{\"key\":\"a\"}\nb\n", "eof"];
        assert_eq!(from_start(Box::new(io::Cursor::new(input.clone()))), want);
        // Split across reads.
        let got = from_start(Box::new(Trickle(io::Cursor::new(input.clone()))));
        assert_eq!(got.concat(), "lines@3:{\"key\":\"a\"}\nlines@15:b\neof");
        // Only at byte 0: a resumed run reads on as it is, and a mark later
        // in the input is data.
        assert_eq!(
            collect_from(
                Box::new(io::Cursor::new(b"\xEF\xBB\xBFx\n".to_vec())),
                7,
                100,
                End::Final
            ),
            ["lines@7:\u{feff}x\n", "eof"]
        );
        // A lone mark, and a mark's first bytes that are not one.
        assert_eq!(from_start(Box::new(io::Cursor::new(BOM.to_vec()))), ["eof"]);
        assert_eq!(
            from_start(Box::new(io::Cursor::new(b"\xEF\xBBx\n".to_vec()))),
            ["lines@0:\u{fffd}x\n", "eof"]
        );
    }

    #[test]
    fn an_incomplete_last_line_of_a_file_is_left_for_a_later_run() {
        let file = |input: &[u8]| {
            collect_from(
                Box::new(io::Cursor::new(input.to_vec())),
                10,
                100,
                End::File,
            )
        };
        // Not complete JSON: a writer may still be appending to it.
        assert_eq!(
            file(b"{\"k\":1}\n{\"key\":\"a\",\"amo"),
            ["lines@10:{\"k\":1}\n", "incomplete@18+15", "eof"]
        );
        // Complete JSON without its newline: handled at once.
        assert_eq!(
            file(b"{\"k\":1}\n{\"k\":2} "),
            ["lines@10:{\"k\":1}\n", "lines@18:{\"k\":2} ", "eof"]
        );
        // Only an object is an event: `123` may be the start of `12345`.
        assert_eq!(
            file(b"{\"k\":1}\n123"),
            ["lines@10:{\"k\":1}\n", "incomplete@18+3", "eof"]
        );
        // An oversized line cut short is not dead-lettered in two pieces.
        assert_eq!(file(&[b'x'; 300]), ["incomplete@10+300", "eof"]);
        // Stdin ends for good: its last line is handled as it is.
        assert_eq!(
            collect(b"{\"key\":\"a\",\"amo", 100),
            ["lines@10:{\"key\":\"a\",\"amo", "eof"]
        );
    }

    #[test]
    fn values_that_are_not_utf8_are_written_as_base64_not_altered() {
        let mut b = Vec::new();
        format_output(&mut b, "k", b"\xff\xfe ok");
        // Inside a JSON string too: never inlined as invalid UTF-8.
        format_output(&mut b, "k", b"\"\xc3\x28\"");
        format_output(&mut b, "k", "\"caf\u{e9}\"".as_bytes());
        let text = String::from_utf8(b).unwrap();
        assert_eq!(
            text,
            "{\"key\":\"k\",\"value_base64\":\"//4gb2s=\"}\n\
             {\"key\":\"k\",\"value_base64\":\"IsMoIg==\"}\n\
             {\"key\":\"k\",\"value\":\"caf\u{e9}\"}\n"
        );
        let mut d = Vec::new();
        push_string_field(&mut d, "payload", b"ok \"x\"");
        d.push(b',');
        push_string_field(&mut d, "payload", b"\x80");
        assert_eq!(
            d,
            b"\"payload\":\"ok \\\"x\\\"\",\"payload_base64\":\"gA==\""
        );
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut b = Vec::new();
            push_base64(&mut b, raw.as_bytes());
            assert_eq!(b, enc.as_bytes(), "{raw}");
        }
        let mut b = Vec::new();
        push_base64(&mut b, &[0xfb, 0xff, 0xbf]);
        assert_eq!(b, b"+/+/");
    }

    #[test]
    fn devices_are_outputs_without_a_length() {
        let f = open_output_file(Path::new("/dev/null"), Some(100)).unwrap();
        assert_eq!(f.len, None);
        let dir = tempfile::tempdir().unwrap();
        let dead = open_output_file(&dir.path().join("d.jsonl"), None).unwrap();
        assert_eq!(dead.len, Some(0));
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink = std::thread::spawn(move || run_sink(Some(f), dead, rx));
        tx.send(SinkMsg::Out(b"{}\n".to_vec())).unwrap();
        tx.send(SinkMsg::Dead(b"{}\n".to_vec())).unwrap();
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        tx.send(SinkMsg::Flush(rtx)).unwrap();
        let lens = rrx.recv().unwrap().unwrap();
        assert_eq!((lens.out, lens.dead), (None, Some(3)));
        drop(tx);
        sink.join().unwrap().unwrap();
    }

    #[test]
    fn write_errors_name_the_output_and_the_os_error() {
        let out = open_output_file(Path::new("/dev/full"), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dead = open_output_file(&dir.path().join("d.jsonl"), None).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let sink = std::thread::spawn(move || run_sink(Some(out), dead, rx));
        tx.send(SinkMsg::Out(b"{}\n".to_vec())).unwrap();
        let (rtx, rrx) = crossbeam_channel::bounded(1);
        tx.send(SinkMsg::Flush(rtx)).unwrap();
        let e = rrx.recv().unwrap().unwrap_err().to_string();
        assert_eq!(
            e,
            "writing output /dev/full: No space left on device (os error 28)"
        );
        drop(tx);
        assert!(sink.join().unwrap().is_err());
    }
}
