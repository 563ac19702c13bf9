//! Input and output files: the line reader thread and the sink thread.

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

/// How often a followed file is polled for new lines.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads `r` (positioned at `offset`) into chunks of whole lines until end
/// of input or until the receiver goes away. Lines longer than `max_line`
/// are reported as [`Chunk::Oversized`] instead. With `follow`, the end of
/// the file is not the end of the input: it waits for more lines (a last
/// line without its `\n` waits for it) until `follow.stop` is raised.
pub fn read_lines(
    mut r: Box<dyn Read + Send>,
    mut offset: u64,
    max_line: usize,
    tx: Sender<Chunk>,
    follow: Option<Follow>,
) {
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
        let _ = tx.send(Chunk::Oversized { offset: start, len });
    } else if !cur.is_empty() {
        let _ = tx.send(Chunk::Lines { data: cur, offset });
    }
    let _ = tx.send(Chunk::Eof);
}

/// What the sink thread receives.
pub enum SinkMsg {
    /// Output lines.
    Out(Vec<u8>),
    /// Dead-letter lines.
    Dead(Vec<u8>),
    /// Flush both (and sync files); reply with their lengths.
    Flush(Sender<io::Result<SinkLens>>),
}

/// Lengths of the file outputs after a flush, for the checkpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkLens {
    /// `None` when the output is stdout.
    pub out: Option<u64>,
    pub dead: u64,
}

/// An output that counts what it wrote.
struct Counted {
    w: BufWriter<Box<dyn Write + Send>>,
    file: Option<File>,
    len: u64,
}

impl Counted {
    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.len += b.len() as u64;
        self.w.write_all(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()?;
        if let Some(f) = &self.file {
            f.sync_data()?;
        }
        Ok(())
    }
}

/// Opens file output `path` for a run that resumes after `committed` bytes
/// (truncating what a crashed run wrote after its last checkpoint), or
/// from empty when there is no checkpoint for it.
pub fn open_output_file(path: &Path, committed: Option<u64>) -> io::Result<(File, u64)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    let len = f.metadata()?.len();
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
    Ok((f, keep))
}

/// Runs the sink: writes output and dead-letter lines in arrival order.
pub fn run_sink(
    out: Option<(File, u64)>,
    dead: (File, u64),
    rx: Receiver<SinkMsg>,
    dead_path: PathBuf,
) -> io::Result<()> {
    let mut out = match out {
        Some((f, len)) => {
            let w: Box<dyn Write + Send> = Box::new(f.try_clone()?);
            Counted {
                w: BufWriter::with_capacity(1 << 20, w),
                file: Some(f),
                len,
            }
        }
        None => Counted {
            w: BufWriter::with_capacity(1 << 16, Box::new(io::stdout())),
            file: None,
            len: 0,
        },
    };
    let (df, dlen) = dead;
    let mut dead = Counted {
        w: BufWriter::new(Box::new(df.try_clone()?)),
        file: Some(df),
        len: dlen,
    };
    let stdout = out.file.is_none();
    for msg in rx.iter() {
        match msg {
            SinkMsg::Out(b) => {
                out.write(&b)?;
                if stdout && rx.is_empty() {
                    // Interactive use: show results as they come.
                    out.w.flush()?;
                }
            }
            SinkMsg::Dead(b) => dead.write(&b).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("dead-letter file {}: {e}", dead_path.display()),
                )
            })?,
            SinkMsg::Flush(reply) => {
                let r = out.flush().and_then(|()| dead.flush()).map(|()| SinkLens {
                    out: out.file.as_ref().map(|_| out.len),
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
/// it is JSON on one line, as a JSON string otherwise.
pub fn format_output(buf: &mut Vec<u8>, key: &str, value: &[u8]) {
    buf.extend_from_slice(b"{\"key\":");
    serde_json::to_writer(&mut *buf, key).expect("writing to a Vec cannot fail");
    buf.extend_from_slice(b",\"value\":");
    push_json_or_string(buf, value);
    buf.extend_from_slice(b"}\n");
}

/// Appends `value` inline when it is single-line JSON, else as a string.
pub fn push_json_or_string(buf: &mut Vec<u8>, value: &[u8]) {
    let is_json = memchr::memchr2(b'\n', b'\r', value).is_none()
        && serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok();
    if is_json {
        buf.extend_from_slice(value);
    } else {
        let s = String::from_utf8_lossy(value);
        serde_json::to_writer(&mut *buf, &*s).expect("writing to a Vec cannot fail");
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
        let (tx, rx) = crossbeam_channel::unbounded();
        read_lines(Box::new(io::Cursor::new(input.to_vec())), 10, max, tx, None);
        rx.iter()
            .map(|c| match c {
                Chunk::Lines { data, offset } => {
                    format!("lines@{offset}:{}", String::from_utf8_lossy(&data))
                }
                Chunk::Oversized { offset, len } => format!("oversized@{offset}+{len}"),
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
        let t = std::thread::spawn(move || read_lines(Box::new(f), 0, 100, tx, Some(follow)));
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
}
