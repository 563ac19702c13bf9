//! The sink thread: output and dead-letter lines written in arrival order,
//! flushed and synced at each checkpoint.
//!
//! Output lines are `{"key":<key>,"value":<value>}`: the value inline when
//! it is single-line JSON, a JSON string when it is other UTF-8 text, and
//! `"value_base64":"<base64>"` (standard alphabet, padded) instead of
//! `"value"` when its bytes are not UTF-8, so no byte is ever altered.
//! Dead letters do the same with `payload` / `payload_base64` (see
//! [`format`]).
//!
//! Output and dead-letter files that are regular files are truncated on
//! restart to their length at the last checkpoint, so their contents are
//! exactly once. Other outputs (stdout, a FIFO, a device such as
//! `/dev/null`) cannot be truncated, positioned or synced: what they get is
//! at least once (a crash replays the events since the last checkpoint).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crossbeam_channel::{Receiver, Sender};

pub(crate) mod format;
pub(crate) mod kafka;

/// What the sink thread receives.
pub enum SinkMsg {
    /// Output lines.
    Out(Vec<u8>),
    /// Dead-letter lines.
    Dead(Vec<u8>),
    /// Kafka group mode: events for a later operator of the chain, framed
    /// by [`format::frame_repartition`], for its repartition topic.
    Repartition(Vec<u8>),
    /// A checkpoint: flush both (and sync files; commit the Kafka
    /// transaction, with the input `offsets`: per Kafka input partition,
    /// the next offset to read, if known); reply with the file lengths.
    Flush {
        /// Per Kafka input partition, the next offset (empty for a file
        /// input).
        offsets: Vec<Option<i64>>,
        /// Group mode: the checkpoint's state and timer changes, produced
        /// to the changelog topics in the same transaction.
        changelog: Option<std::sync::Arc<Changes>>,
        /// Where the outcome goes.
        reply: Sender<Result<SinkLens, SinkError>>,
    },
    /// From now on (`true`) drop outputs bound for Kafka, or write them
    /// again (`false`): a restart's replay of what Kafka already has.
    Suppress(bool),
}

/// A checkpoint's changes, for the changelog topics (group mode).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Keys' state.
    pub writes: crate::state::Writes,
    /// Pending timers and TTL deadlines.
    pub timers: Vec<crate::state::TimerWrite>,
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
    /// A Kafka topic.
    Kafka(String),
}

impl std::fmt::Display for SinkTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkTarget::Stdout => f.write_str("writing to stdout"),
            SinkTarget::Output(p) => write!(f, "writing output {}", p.display()),
            SinkTarget::DeadLetter(p) => write!(f, "writing dead-letter file {}", p.display()),
            SinkTarget::Kafka(t) => write!(f, "producing to Kafka topic `{t}`"),
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
            // Only a Kafka sink in group mode gets these.
            SinkMsg::Suppress(_) | SinkMsg::Repartition(_) => {}
            SinkMsg::Flush { reply, .. } => {
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

/// Output lines the workers and the coordinator may hand the sink before
/// they wait for it.
const QUEUED: usize = 256;

/// The sink thread (`eddy-sink`) and the channel to it; stopped and joined
/// by [`SinkThread::stop`] (or when dropped).
pub struct SinkThread {
    /// To the sink (`None` once stopping).
    tx: Option<Sender<SinkMsg>>,
    thread: Option<std::thread::JoinHandle<Result<(), SinkError>>>,
}

impl SinkThread {
    /// Starts writing to `out` (`None`: stdout) and `dead`.
    pub fn start(out: Option<OutputFile>, dead: OutputFile) -> io::Result<SinkThread> {
        let (tx, rx) = crossbeam_channel::bounded::<SinkMsg>(QUEUED);
        let thread = std::thread::Builder::new()
            .name("eddy-sink".into())
            .spawn(move || run_sink(out, dead, rx))?;
        Ok(SinkThread {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Starts producing to Kafka (see [`kafka`]).
    pub fn start_kafka(sink: kafka::KafkaSink) -> io::Result<SinkThread> {
        let (tx, rx) = crossbeam_channel::bounded::<SinkMsg>(QUEUED);
        let thread = std::thread::Builder::new()
            .name("eddy-kafka-sink".into())
            .spawn(move || kafka::run_kafka_sink(sink, rx))?;
        Ok(SinkThread {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// A sender to the sink, for a worker.
    pub fn sender(&self) -> Sender<SinkMsg> {
        self.tx.clone().expect("the sink runs")
    }

    /// Hands `msg` to the sink; `Err` when the sink stopped (see
    /// [`SinkThread::failure`]).
    pub fn send(&self, msg: SinkMsg) -> Result<(), ()> {
        match &self.tx {
            Some(tx) => tx.send(msg).map_err(|_| ()),
            None => Err(()),
        }
    }

    /// Why the sink stopped early (a write failed): joins it for its error,
    /// which names the output and the OS error. `None` once joined.
    pub fn failure(&mut self) -> Option<SinkFailure> {
        let t = self.thread.take()?;
        Some(match t.join() {
            Ok(Err(e)) => SinkFailure::Write(e),
            Ok(Ok(())) => SinkFailure::Stopped,
            Err(_) => SinkFailure::Panicked,
        })
    }

    /// Closes the channel (after the senders still held elsewhere are
    /// dropped, the sink flushes and ends) and joins the sink: its last
    /// error, if any. `None` when already joined by [`SinkThread::failure`].
    pub fn stop(&mut self) -> Option<Result<(), SinkFailure>> {
        self.tx = None;
        let t = self.thread.take()?;
        Some(match t.join() {
            Ok(r) => r.map_err(SinkFailure::Write),
            Err(_) => Err(SinkFailure::Panicked),
        })
    }
}

impl Drop for SinkThread {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Why the sink thread is gone.
#[derive(Debug, thiserror::Error)]
pub enum SinkFailure {
    /// A write failed.
    #[error(transparent)]
    Write(SinkError),
    /// It ended without an error (its channel closed early).
    #[error("the output writer stopped")]
    Stopped,
    /// It panicked.
    #[error("the sink thread panicked")]
    Panicked,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        tx.send(SinkMsg::Flush {
            offsets: Vec::new(),
            changelog: None,
            reply: rtx,
        })
        .unwrap();
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
        tx.send(SinkMsg::Flush {
            offsets: Vec::new(),
            changelog: None,
            reply: rtx,
        })
        .unwrap();
        let e = rrx.recv().unwrap().unwrap_err().to_string();
        assert_eq!(
            e,
            "writing output /dev/full: No space left on device (os error 28)"
        );
        drop(tx);
        assert!(sink.join().unwrap().is_err());
    }
}
