//! Crash-safe persisted state: the core's [`HardState`] in a redb file.
//!
//! Owns: the state file's schema (a `meta` table holding `schema_version`,
//! a `state` table holding the postcard-encoded `HardState`), its version
//! check, and durable writes. The core's rule "persist before send" relies
//! on [`StateStore::save`] returning only once the state is on disk.
//!
//! Must not: return from `save` before the commit is fsynced, open a file
//! written by a newer supervisor (it could misread it and vote twice), or
//! decide anything about the values it stores.
//!
//! Why redb: a transactional store gives atomic, torn-write-free updates and
//! a place for schema versions and migrations without hand-rolling the
//! temp-file/rename/fsync-dir dance.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use triad_core::HardState;

/// The schema this build writes. Bump (and add a migration in
/// [`StateStore::open`]) on any change to the tables or encoded types.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const KEY_SCHEMA: &str = "schema_version";
const KEY_HARD_STATE: &str = "hard_state";

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, corruption, lock held by another process).
    #[error("state file {path}: cannot {op}")]
    Db {
        /// The state file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// redb's error (boxed: it is large, and errors are rare).
        #[source]
        source: Box<redb::Error>,
    },
    /// The file was written by a newer supervisor.
    #[error("state file {path} has schema version {found}, newer than this build supports ({supported}); refusing to open it")]
    SchemaTooNew {
        /// The state file.
        path: PathBuf,
        /// Version in the file.
        found: u64,
        /// Newest version this build knows.
        supported: u64,
    },
    /// The stored state does not decode.
    #[error("state file {path}: stored hard state does not decode")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
}

/// The open state file. One per process: redb locks the file, so a second
/// supervisor on the same state is refused at open.
pub struct StateStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("path", &self.path).finish()
    }
}

impl StateStore {
    /// Opens or creates the state file, checking (or, if new, writing) its
    /// schema version.
    pub fn open(path: impl AsRef<Path>) -> Result<StateStore, StoreError> {
        let path = path.as_ref().to_owned();
        let db = Database::create(&path).map_err(|e| db_err(&path, "open", e))?;
        let store = StateStore { db, path };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err("open meta table", e))?;
            let found = meta.get(KEY_SCHEMA).map_err(|e| self.err("read schema version", e))?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(KEY_SCHEMA, SCHEMA_VERSION).map_err(|e| self.err("write schema version", e))?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::SchemaTooNew {
                        path: self.path.clone(),
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
                // Older versions would be migrated here; version 1 is the
                // first, so there is nothing older yet.
                Some(_) => {}
            }
            // Create the state table now so load() never sees it missing.
            txn.open_table(STATE).map_err(|e| self.err("open state table", e))?;
        }
        txn.commit().map_err(|e| self.err("commit schema", e))
    }

    /// The persisted hard state, or the default (epoch 0, no vote, not
    /// standby) if none was ever saved.
    pub fn load(&self) -> Result<HardState, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err("begin read", e))?;
        let table = txn.open_table(STATE).map_err(|e| self.err("open state table", e))?;
        let Some(bytes) = table.get(KEY_HARD_STATE).map_err(|e| self.err("read hard state", e))? else {
            return Ok(HardState::default());
        };
        postcard::from_bytes(bytes.value()).map_err(|source| StoreError::Corrupt { path: self.path.clone(), source })
    }

    /// Writes `state` in one write transaction and returns once it is
    /// durable (fsynced).
    pub fn save(&self, state: &HardState) -> Result<(), StoreError> {
        // HardState is a few fixed fields; postcard cannot fail on it, but
        // its error is mapped rather than unwrapped all the same.
        let bytes =
            postcard::to_allocvec(state).map_err(|source| StoreError::Corrupt { path: self.path.clone(), source })?;
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(STATE).map_err(|e| self.err("open state table", e))?;
            table.insert(KEY_HARD_STATE, bytes.as_slice()).map_err(|e| self.err("write hard state", e))?;
        }
        txn.commit().map_err(|e| self.err("commit hard state", e))
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err("begin write", e))?;
        // Immediate is redb's default today; set it explicitly because a
        // vote that is not on disk when the reply leaves breaks election
        // safety, and a default can change.
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }

    fn err(&self, op: &'static str, e: impl Into<redb::Error>) -> StoreError {
        db_err(&self.path, op, e)
    }
}

fn db_err(path: &Path, op: &'static str, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db { path: path.to_owned(), op, source: Box::new(e.into()) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::certs::tests::TempDir;

    #[test]
    fn empty_store_loads_default() {
        let d = TempDir::new("store-empty");
        let s = StateStore::open(d.0.join("state.redb")).unwrap();
        assert_eq!(s.load().unwrap(), HardState::default());
    }

    #[test]
    fn save_reopen_load() {
        let d = TempDir::new("store-reopen");
        let path = d.0.join("state.redb");
        let hs = HardState { epoch: 42, voted_for: Some(3), standby: true };
        {
            let s = StateStore::open(&path).unwrap();
            s.save(&HardState::default()).unwrap();
            s.save(&hs).unwrap();
            assert_eq!(s.load().unwrap(), hs);
            // Dropped here without any explicit close or flush.
        }
        let s = StateStore::open(&path).unwrap();
        assert_eq!(s.load().unwrap(), hs);
    }

    #[test]
    fn second_open_while_held_is_refused() {
        let d = TempDir::new("store-lock");
        let path = d.0.join("state.redb");
        let _s = StateStore::open(&path).unwrap();
        assert!(matches!(StateStore::open(&path), Err(StoreError::Db { op: "open", .. })));
    }

    #[test]
    fn newer_schema_is_refused() {
        let d = TempDir::new("store-schema");
        let path = d.0.join("state.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(KEY_SCHEMA, SCHEMA_VERSION + 1).unwrap();
            txn.commit().unwrap();
        }
        let e = StateStore::open(&path).unwrap_err();
        assert!(matches!(e, StoreError::SchemaTooNew { found: 2, supported: 1, .. }), "{e}");
        assert!(e.to_string().contains("newer than this build supports"));
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let d = TempDir::new("store-garbage");
        let path = d.0.join("state.redb");
        std::fs::write(&path, b"not a redb file at all").unwrap();
        assert!(StateStore::open(&path).is_err());
    }
}
