//! The source: the input read from where the last checkpoint left it, cut
//! into lines, each decoded for its key and event time.
//!
//! # Layout
//!
//! - [`reader`]: the reader thread (`eddy-reader`): whole lines in chunks,
//!   byte-order mark, incomplete last lines, `--follow`.
//! - [`decode`]: the key and time of one JSON line.
//! - `kafka`: the Kafka reader of a process that reads every partition;
//!   `group`: the one of a process sharing its group's partitions.
//! - [`watermark`]: [`WatermarkGen`], the watermark from the event times,
//!   and which events are late ([`Verdict`]).
//! - here: [`Resume`], where the input resumes and the checks that it is
//!   still the file the checkpoint read, and [`ReaderThread`], the reader
//!   as a value that stops and joins it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{bail, Context};
use crossbeam_channel::{bounded, Receiver};

use crate::config::{Input, Pipeline};
use crate::state::{SourcePos, Store};

mod decode;
mod group;
mod kafka;
mod reader;
mod watermark;

pub(crate) use decode::FieldName;
pub use decode::{decode, DecodeError, Decoded};
pub use group::{changelog_topic, group_consumer, start_group, GroupSetup};
pub use kafka::{
    consumer as kafka_consumer, partitions as kafka_partitions, plan as kafka_plan, KafkaMsg,
    KafkaPlan, KafkaReader, Part, Record,
};
pub use reader::{open_input, read_lines, Chunk, End, Follow, ReadError};
pub use watermark::{Verdict, WatermarkGen};

/// Chunks the reader may hold ready before it waits for the coordinator.
const CHUNKS_AHEAD: usize = 8;

/// Identity of a file in the checkpoint metadata: its absolute path.
pub fn file_id(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Where a run resumes its input.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The input's identity in the checkpoint metadata (`None` for stdin,
    /// which is never resumed).
    pub input_id: Option<String>,
    /// The position after the last line checkpointed.
    pub pos: SourcePos,
    /// The last line checkpointed had no `\n`: the `\n` written after it
    /// ends that line, it does not start one.
    pub mid_line: bool,
    /// The input's watermark at the checkpoint, if it had one.
    pub watermark: Option<i64>,
}

impl Resume {
    /// The position of `p`'s input in `store`, checked against the input
    /// as it is now (a file shorter than what was read of it was replaced
    /// or truncated: an error, not a silent restart).
    pub fn find(p: &Pipeline, store: &Store) -> anyhow::Result<Resume> {
        let input_id = match &p.input {
            Input::File(path) => Some(file_id(path)),
            Input::Stdin => None,
            Input::Kafka(k) => {
                // Positions are per partition (see `kafka`); only the
                // watermark is found here.
                let id = format!("kafka:{}", k.group);
                return Ok(Resume {
                    input_id: None,
                    pos: SourcePos::default(),
                    mid_line: false,
                    watermark: store.watermark(&id)?,
                });
            }
        };
        let pos = match &input_id {
            Some(id) => store.source_pos(id)?.unwrap_or_default(),
            None => SourcePos::default(),
        };
        let mut mid_line = false;
        if let Input::File(path) = &p.input {
            let len = std::fs::metadata(path)
                .with_context(|| format!("input {}", path.display()))?
                .len();
            if len < pos.offset {
                bail!(
                    "input {} has {len} bytes but the state directory {} checkpointed it at byte {}: the file was replaced or truncated; use a fresh --state directory to start over",
                    path.display(),
                    p.state_dir.display(),
                    pos.offset
                );
            }
            if pos.offset > 0 {
                use std::os::unix::fs::FileExt;
                let mut b = [0u8];
                std::fs::File::open(path)
                    .and_then(|f| f.read_exact_at(&mut b, pos.offset - 1))
                    .with_context(|| format!("input {}", path.display()))?;
                mid_line = b[0] != b'\n';
            }
        }
        let watermark = match &input_id {
            Some(id) => store.watermark(id)?,
            None => None,
        };
        Ok(Resume {
            input_id,
            pos,
            mid_line,
            watermark,
        })
    }
}

/// The reader thread; stopped and joined by [`ReaderThread::stop`] (or
/// when dropped).
pub struct ReaderThread {
    /// What it reads, in order.
    chunks: Option<Receiver<Chunk>>,
    /// Raised to stop it (a followed file, stdin or a FIFO waiting for
    /// data look at it).
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReaderThread {
    /// Starts reading `p`'s input at `pos`.
    pub fn start(p: &Pipeline, pos: SourcePos) -> anyhow::Result<ReaderThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let input = open_input(&p.input, pos.offset, &stop).with_context(|| match &p.input {
            Input::File(path) => format!("input {}", path.display()),
            Input::Stdin | Input::Kafka(_) => "stdin".to_string(),
        })?;
        let end = match (&p.input, p.follow) {
            (Input::File(path), true) => End::Follow(Follow {
                path: path.clone(),
                stop: stop.clone(),
            }),
            // A FIFO or device ends for good, like stdin: it cannot be read
            // again by a later run.
            (Input::File(path), false) if std::fs::metadata(path).is_ok_and(|m| m.is_file()) => {
                End::File
            }
            (Input::File(_), false) | (Input::Stdin, _) | (Input::Kafka(_), _) => End::Final,
        };
        let (tx, chunks) = bounded::<Chunk>(CHUNKS_AHEAD);
        let max_line = p.max_line_bytes;
        let thread = std::thread::Builder::new()
            .name("eddy-reader".into())
            .spawn(move || read_lines(input, pos.offset, max_line, tx, end))?;
        Ok(ReaderThread {
            chunks: Some(chunks),
            stop,
            thread: Some(thread),
        })
    }

    /// The chunks it reads.
    pub fn chunks(&self) -> &Receiver<Chunk> {
        self.chunks.as_ref().expect("the reader runs")
    }

    /// Stops the reader (it may be waiting for input, or for room to hand
    /// a chunk over) and joins it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // A reader blocked on a full channel sees it closed.
        self.chunks = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        self.stop();
    }
}
