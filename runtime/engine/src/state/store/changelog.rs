//! Kafka group mode's copy of changelog partitions: where the state
//! directory's copy of each changelog partition has been read to, and the
//! records read since applied to it.
//!
//! A position is kept only for partitions this process does not own (a
//! standby copy, or one just restored): the copy of partition P's keys is
//! then exactly the changelog's records before P's position, applied in
//! order. Taking a partition removes its position (the process writes its
//! keys itself from then on); giving it up leaves none, so the next copy
//! of it starts from the changelog's beginning.

use super::read::check_record;
use super::*;

/// Per changelog topic and partition, the next offset to read.
const CHANGELOG_AT: TableDefinition<(&str, i32), u64> = TableDefinition::new("changelog_at");

/// A change read from a changelog: a key's record (`None`: deleted).
pub type ChangelogWrite = (String, Option<Vec<u8>>);
/// A timer read from a changelog: key, name, time (`None`: none pending).
pub type ChangelogTimer = (String, String, Option<i64>);

impl Store {
    /// Where this directory's copy of `partition` of changelog `topic`
    /// has been read to (the next offset), if it keeps one.
    pub fn changelog_position(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<u64>, StoreError> {
        let dir = &self.dir;
        guard(dir, || {
            let txn = self.db().begin_read().map_err(|e| db_err(dir, e))?;
            let table = match txn.open_table(CHANGELOG_AT) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(db_err(dir, e)),
            };
            let at = table
                .get((topic, partition))
                .map_err(|e| db_err(dir, e))?
                .map(|v| v.value());
            Ok(at)
        })
    }

    /// Applies changes read from a changelog of `operator` in one
    /// transaction: each key's record written (or removed), each timer set
    /// (or removed), and the positions set (or, `None`, removed).
    pub fn apply_changelog(
        &self,
        operator: &str,
        writes: &[ChangelogWrite],
        timers: &[ChangelogTimer],
        positions: &[(&str, i32, Option<u64>)],
    ) -> Result<(), StoreError> {
        let dir = &self.dir;
        for (key, record) in writes {
            if let Some(r) = record {
                check_record(dir, operator, key, r)?;
            }
        }
        guard(dir, || {
            let txn = self.db().begin_write().map_err(|e| db_err(dir, e))?;
            {
                let mut table = txn.open_table(STATE).map_err(|e| db_err(dir, e))?;
                for (key, record) in writes {
                    match record {
                        Some(r) => table.insert((operator, key.as_str()), r.as_slice()),
                        None => table.remove((operator, key.as_str())),
                    }
                    .map_err(|e| db_err(dir, e))?;
                }
                let mut table = txn.open_table(TIMERS).map_err(|e| db_err(dir, e))?;
                for (key, name, at) in timers {
                    let k = (operator, key.as_str(), name.as_str());
                    match at {
                        Some(at) => table.insert(k, *at).map(|_| ()),
                        None => table.remove(k).map(|_| ()),
                    }
                    .map_err(|e| db_err(dir, e))?;
                }
                let mut table = txn.open_table(CHANGELOG_AT).map_err(|e| db_err(dir, e))?;
                for &(topic, partition, at) in positions {
                    match at {
                        Some(at) => table.insert((topic, partition), at).map(|_| ()),
                        None => table.remove((topic, partition)).map(|_| ()),
                    }
                    .map_err(|e| db_err(dir, e))?;
                }
            }
            txn.commit().map_err(|e| db_err(dir, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::tests::record;
    use super::*;

    #[test]
    fn changes_and_positions_apply_together_and_a_position_can_be_forgotten() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert_eq!(store.changelog_position("c", 3).unwrap(), None);
        let writes = vec![
            ("a".to_string(), Some(record("1"))),
            ("b".to_string(), Some(record("2"))),
        ];
        let timers = vec![("a".to_string(), "t".to_string(), Some(10))];
        store
            .apply_changelog("op", &writes, &timers, &[("c", 3, Some(7))])
            .unwrap();
        assert_eq!(store.changelog_position("c", 3).unwrap(), Some(7));
        assert_eq!(store.changelog_position("c", 4).unwrap(), None);
        assert_eq!(store.record("op", "a").unwrap(), Some(record("1")));
        assert_eq!(
            store.timers("op").unwrap(),
            vec![("a".into(), "t".into(), 10)]
        );
        // Later records: `a` deleted with its timer, `b` changed.
        let writes = vec![
            ("a".to_string(), None),
            ("b".to_string(), Some(record("3"))),
        ];
        let timers = vec![("a".to_string(), "t".to_string(), None)];
        store
            .apply_changelog("op", &writes, &timers, &[("c", 3, Some(9))])
            .unwrap();
        assert_eq!(store.record("op", "a").unwrap(), None);
        assert_eq!(store.record("op", "b").unwrap(), Some(record("3")));
        assert!(store.timers("op").unwrap().is_empty());
        assert_eq!(store.changelog_position("c", 3).unwrap(), Some(9));
        store
            .apply_changelog("op", &[], &[], &[("c", 3, None)])
            .unwrap();
        assert_eq!(store.changelog_position("c", 3).unwrap(), None);
    }

    #[test]
    fn a_corrupt_record_from_a_changelog_is_refused_and_nothing_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let writes = vec![("a".to_string(), Some(vec![0xff, 1, 2]))];
        let err = store
            .apply_changelog("op", &writes, &[], &[("c", 0, Some(5))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`a`"), "{err}");
        assert_eq!(store.changelog_position("c", 0).unwrap(), None);
    }
}
