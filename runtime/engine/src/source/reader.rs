//! The reader thread: the input (file or stdin) cut into whole lines.
//!
//! The reader hands out whole lines only. A UTF-8 byte-order mark at byte 0
//! of the input (file or stdin) is skipped; a run that resumes from a later
//! offset does not look for one. At the end of a file input (without
//! `--follow`), a last line with no `\n` is handled when it is complete
//! JSON; otherwise a writer may still be appending to it, so it is left
//! unread ([`Chunk::Incomplete`]) for a later run, which handles the whole
//! line once. On stdin, which ends for good, a last line is always handled.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::config::Input;

/// Bytes read from the input per read call.
const BLOCK: usize = 256 * 1024;

/// What the reader thread sends.
pub enum Chunk {
    /// Whole lines (each ending in `\n`, but perhaps the last at end of
    /// input), starting at byte `offset` of the input.
    Lines {
        /// The lines, each with its `\n`.
        data: Vec<u8>,
        /// Byte offset in the input.
        offset: u64,
    },
    /// A line longer than the limit, skipped without being kept in memory.
    Oversized {
        /// Byte offset in the input.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The file ends in a line of `len` bytes at `offset` with no `\n` that
    /// is not complete JSON: a writer may still be appending to it, so it
    /// is left unread for a later run. [`Chunk::Eof`] follows.
    Incomplete {
        /// Byte offset in the input.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// End of input.
    Eof,
    /// The input could not be read.
    Error(ReadError),
}

/// Opens `input` positioned at byte `offset`.
///
/// Stdin and other inputs that are not regular files (a FIFO, a device)
/// are read only once they have data, so that a stop (`stop` raised) ends
/// the reader even while the input has nothing to say.
pub fn open_input(
    input: &Input,
    offset: u64,
    stop: &Arc<AtomicBool>,
) -> io::Result<Box<dyn Read + Send>> {
    match input {
        Input::Stdin => Ok(Box::new(Interruptible {
            fd: io::stdin(),
            stop: stop.clone(),
        })),
        Input::File(path) => {
            let mut f = File::open(path)?;
            if !f.metadata()?.is_file() {
                return Ok(Box::new(Interruptible {
                    fd: f,
                    stop: stop.clone(),
                }));
            }
            if offset > 0 {
                f.seek(SeekFrom::Start(offset))?;
            }
            Ok(Box::new(f))
        }
        Input::Kafka(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a Kafka input is not read as a file",
        )),
    }
}

/// How long a read of an [`Interruptible`] input waits for data before it
/// looks at its stop flag again.
const STOP_POLL_MS: i64 = 50;

/// An input read only once it has data (`poll`), read directly from its
/// descriptor, so that raising `stop` ends a read that would block.
struct Interruptible<F> {
    fd: F,
    stop: Arc<AtomicBool>,
}

impl<F: std::os::fd::AsFd> Read for Interruptible<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Err(io::Error::other("the pipeline stopped"));
            }
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            let wait = Timespec {
                tv_sec: 0,
                tv_nsec: STOP_POLL_MS * 1_000_000,
            };
            match poll(&mut fds, Some(&wait)) {
                Ok(0) => continue,
                Ok(_) => return Ok(rustix::io::read(&self.fd, buf)?),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
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
                            let _ = tx.send(Chunk::Error(ReadError::Shrank {
                                path: f.path.clone(),
                                len: m.len(),
                                read,
                            }));
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = tx.send(Chunk::Error(ReadError::Followed {
                                path: f.path.clone(),
                                error: e,
                            }));
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
                let _ = tx.send(Chunk::Error(e.into()));
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

/// Why the input could not be read (sent as [`Chunk::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A read failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A followed file got shorter than what was read of it.
    #[error("{} shrank to {len} bytes while followed (read up to byte {read}): it was truncated or replaced", path.display())]
    Shrank {
        /// The followed file.
        path: PathBuf,
        /// Its length now.
        len: u64,
        /// Bytes read of it.
        read: u64,
    },
    /// A followed file could not be looked at.
    #[error("{} while followed: {error}", path.display())]
    Followed {
        /// The followed file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Receiver;
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::time::Duration;

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
            Chunk::Error(e) => assert!(e.to_string().contains("truncated or replaced"), "{e}"),
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
}
