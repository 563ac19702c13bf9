//! The guest's checked reader of the batch the host sent: [`BatchView`].
//!
//! The host builds batches with [`crate::BatchBuilder`], so a malformed
//! batch is a host bug; still, the reader checks every column, count and
//! key index once, up front, and refuses a bad batch with a [`BatchError`]
//! rather than panic or read out of bounds.

use std::fmt;

use thiserror::Error;

use crate::wit::{Batch, Cursor, Strings, StringsError};

/// A `strings` column of a batch, named in errors as in the WIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchColumn {
    /// `keys`.
    Keys,
    /// `value-names`.
    ValueNames,
    /// `value-bytes`.
    ValueBytes,
    /// `payloads`.
    Payloads,
}

impl fmt::Display for BatchColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BatchColumn::Keys => "keys",
            BatchColumn::ValueNames => "value-names",
            BatchColumn::ValueBytes => "value-bytes",
            BatchColumn::Payloads => "payloads",
        })
    }
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// A `strings` column that is not well formed.
    #[error("{column}: {error}")]
    Column {
        /// The column.
        column: BatchColumn,
        /// What is wrong with it.
        error: StringsError,
    },
    /// Lists that go together have different lengths.
    #[error("{a} has {a_len} entries but {b} has {b_len}: one each per {per}")]
    Lengths {
        /// One list.
        a: &'static str,
        /// Its length.
        a_len: usize,
        /// The other.
        b: &'static str,
        /// Its length.
        b_len: usize,
        /// What there is one entry per.
        per: &'static str,
    },
    /// The keys' value counts do not add up to the values.
    #[error("the keys' value-counts add up to {counted}, but value-names holds {values}")]
    ValueCounts {
        /// The sum of `value-counts`.
        counted: u64,
        /// Strings of `value-names`.
        values: usize,
    },
    /// An entry of `timed` that is not ascending or is not an event.
    #[error(
        "timed: entry {index} is {event}, but it must be above the one before and below {events}"
    )]
    Timed {
        /// Index of the entry.
        index: usize,
        /// Its value.
        event: u32,
        /// Events in the batch.
        events: usize,
    },
    /// An event's key index outside the batch's keys.
    #[error("event {event}: key index {key}, but the batch has {keys} keys")]
    NoSuchKey {
        /// Index of the event.
        event: usize,
        /// Its key index.
        key: u32,
        /// Keys in the batch.
        keys: usize,
    },
    /// A key or value name that is not UTF-8.
    #[error("{column}: string {index} is not UTF-8 (invalid from byte {valid_up_to})")]
    NotUtf8 {
        /// `keys` or `value-names`.
        column: BatchColumn,
        /// Index of the string.
        index: usize,
        /// Bytes of it that are valid UTF-8.
        valid_up_to: usize,
    },
}

fn column(s: &Strings, column: BatchColumn) -> Result<(), BatchError> {
    s.check()
        .map_err(|error| BatchError::Column { column, error })
}

fn utf8(s: &Strings, column: BatchColumn) -> Result<(), BatchError> {
    // Mostly ASCII: the whole column at once.
    if s.bytes.is_ascii() {
        return Ok(());
    }
    let mut strings = Cursor::new(s);
    let mut index = 0;
    while let Some(b) = strings.next() {
        if let Err(e) = std::str::from_utf8(b) {
            return Err(BatchError::NotUtf8 {
                column,
                index,
                valid_up_to: e.valid_up_to(),
            });
        }
        index += 1;
    }
    Ok(())
}

fn lengths(
    a: &'static str,
    a_len: usize,
    b: &'static str,
    b_len: usize,
    per: &'static str,
) -> Result<(), BatchError> {
    match a_len == b_len {
        true => Ok(()),
        false => Err(BatchError::Lengths {
            a,
            a_len,
            b,
            b_len,
            per,
        }),
    }
}

/// A [`Batch`] checked once: its `strings` columns are well formed, the
/// lists that go together are as long as each other, the keys' value
/// counts add up to the values, every event's key index is a key, and keys
/// and value names are UTF-8. Reading it then never fails.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    batch: &'a Batch,
}

/// One event of a [`BatchView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// Index of its key in the batch ([`BatchView::key`]), checked to be
    /// one.
    pub key: u32,
    /// Its event time.
    pub time: Option<i64>,
    /// Its payload.
    pub payload: &'a [u8],
}

/// A key of a [`BatchView`] with where its values are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef<'a> {
    /// The key.
    pub key: &'a str,
    /// Its values: indexes in the batch's `value-names` and `value-bytes`.
    pub values: std::ops::Range<usize>,
}

/// Text of a checked string.
#[inline]
fn get_str(s: &Strings, i: usize) -> &str {
    let b = s.get(i).unwrap_or_default();
    debug_assert!(std::str::from_utf8(b).is_ok());
    // SAFETY: `BatchView::new` checked that every string of the columns
    // read as text (keys, value names) is UTF-8, and the batch it borrows
    // cannot change while it lives; only `BatchView`'s methods call this,
    // on those columns.
    unsafe { std::str::from_utf8_unchecked(b) }
}

impl<'a> BatchView<'a> {
    /// Checks `batch`.
    pub fn new(batch: &'a Batch) -> Result<BatchView<'a>, BatchError> {
        let b = batch;
        column(&b.keys, BatchColumn::Keys)?;
        column(&b.value_names, BatchColumn::ValueNames)?;
        column(&b.value_bytes, BatchColumn::ValueBytes)?;
        column(&b.payloads, BatchColumn::Payloads)?;
        lengths(
            "keys",
            b.keys.len(),
            "value-counts",
            b.value_counts.len(),
            "key",
        )?;
        lengths(
            "value-names",
            b.value_names.len(),
            "value-bytes",
            b.value_bytes.len(),
            "value",
        )?;
        let events = b.event_keys.len();
        lengths("event-keys", events, "payloads", b.payloads.len(), "event")?;
        lengths(
            "timed",
            b.timed.len(),
            "times",
            b.times.len(),
            "timed event",
        )?;
        let mut floor = 0u64;
        for (index, &event) in b.timed.iter().enumerate() {
            if (event as u64) < floor || event as usize >= events {
                return Err(BatchError::Timed {
                    index,
                    event,
                    events,
                });
            }
            floor = event as u64 + 1;
        }
        let counted = b.value_counts.iter().map(|&c| c as u64).sum::<u64>();
        if counted != b.value_names.len() as u64 {
            return Err(BatchError::ValueCounts {
                counted,
                values: b.value_names.len(),
            });
        }
        for (event, &key) in b.event_keys.iter().enumerate() {
            if key as usize >= b.keys.len() {
                return Err(BatchError::NoSuchKey {
                    event,
                    key,
                    keys: b.keys.len(),
                });
            }
        }
        utf8(&b.keys, BatchColumn::Keys)?;
        utf8(&b.value_names, BatchColumn::ValueNames)?;
        Ok(BatchView { batch })
    }

    /// The batch (checked).
    pub fn batch(&self) -> &'a Batch {
        self.batch
    }

    /// Number of keys.
    pub fn key_count(&self) -> usize {
        self.batch.keys.len()
    }

    /// Number of events.
    pub fn event_count(&self) -> usize {
        self.batch.event_keys.len()
    }

    /// Key `i`; `None` when there is no such key.
    pub fn key(&self, i: usize) -> Option<&'a str> {
        (i < self.batch.keys.len()).then(|| get_str(&self.batch.keys, i))
    }

    /// The keys in order, each with where its values are.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = KeyRef<'a>> + 'a {
        let b = self.batch;
        let mut first = 0usize;
        b.value_counts.iter().enumerate().map(move |(i, &n)| {
            let values = first..first + n as usize;
            first = values.end;
            KeyRef {
                key: get_str(&b.keys, i),
                values,
            }
        })
    }

    /// Value `i` (an index from [`KeyRef::values`]): its name and bytes;
    /// empty when there is no such value.
    pub fn value(&self, i: usize) -> (&'a str, &'a [u8]) {
        let b = self.batch;
        match i < b.value_names.len() {
            true => (
                get_str(&b.value_names, i),
                b.value_bytes.get(i).unwrap_or_default(),
            ),
            false => ("", &[]),
        }
    }

    /// The events, in order.
    pub fn events(&self) -> impl ExactSizeIterator<Item = EventRef<'a>> + 'a {
        let b = self.batch;
        let mut payloads = Cursor::new(&b.payloads);
        // The next timed event and its time.
        let mut timed = b.timed.iter().zip(&b.times).peekable();
        b.event_keys.iter().enumerate().map(move |(i, &key)| {
            let time = timed
                .next_if(|(&t, _)| t as usize == i)
                .map(|(_, &time)| time);
            EventRef {
                key,
                time,
                payload: payloads.next().unwrap_or_default(),
            }
        })
    }
}
