//! Durable storage: one embedded SQLite database holding every instance's
//! state and key-value data.
//!
//! Every write is one statement in its own transaction, so a crash never
//! leaves a half-written value. The database runs in WAL mode; calls are
//! short and synchronous, made from the instance's own task.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection as Db, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::error::StorageError;

/// The database shared by all instances. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: Arc<Mutex<Db>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").finish_non_exhaustive()
    }
}

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "agents.sqlite3";

impl Storage {
    /// Opens (creating if needed) `<dir>/agents.sqlite3`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Storage, StorageError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Self::open(dir.join(DATABASE_FILE))
    }

    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Storage, StorageError> {
        let db = Db::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(db)
    }

    /// A private in-memory database (gone when the server stops); the default.
    pub fn in_memory() -> Storage {
        Self::init(Db::open_in_memory().expect("sqlite opens in memory")).expect("in-memory schema")
    }

    fn init(db: Db) -> Result<Storage, StorageError> {
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS cf_agents_state (
                 agent TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
                 PRIMARY KEY (agent, name));
             CREATE TABLE IF NOT EXISTS cf_agents_kv (
                 agent TEXT NOT NULL, name TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                 PRIMARY KEY (agent, name, key));",
        )?;
        Ok(Storage {
            db: Arc::new(Mutex::new(db)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn load_state(
        &self,
        agent: &str,
        name: &str,
    ) -> Result<Option<String>, StorageError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT state FROM cf_agents_state WHERE agent = ?1 AND name = ?2",
                params![agent, name],
                |row| row.get(0),
            )
            .optional()?)
    }

    pub(crate) fn save_state(
        &self,
        agent: &str,
        name: &str,
        json: &str,
    ) -> Result<(), StorageError> {
        self.lock().execute(
            "INSERT INTO cf_agents_state (agent, name, state) VALUES (?1, ?2, ?3)
             ON CONFLICT (agent, name) DO UPDATE SET state = excluded.state",
            params![agent, name, json],
        )?;
        Ok(())
    }

    pub(crate) fn delete_state(&self, agent: &str, name: &str) -> Result<(), StorageError> {
        self.lock().execute(
            "DELETE FROM cf_agents_state WHERE agent = ?1 AND name = ?2",
            params![agent, name],
        )?;
        Ok(())
    }

    /// The key-value view of one instance.
    pub(crate) fn instance(&self, agent: &str, name: &str) -> InstanceStorage {
        InstanceStorage {
            storage: self.clone(),
            agent: agent.into(),
            name: name.into(),
        }
    }
}

/// One instance's own key-value store (and raw SQL access), from
/// [`AgentContext::storage`](crate::AgentContext::storage).
#[derive(Debug, Clone)]
pub struct InstanceStorage {
    storage: Storage,
    agent: Arc<str>,
    name: Arc<str>,
}

impl InstanceStorage {
    pub(crate) fn load_state(&self) -> Result<Option<String>, StorageError> {
        self.storage.load_state(&self.agent, &self.name)
    }

    pub(crate) fn save_state(&self, json: &str) -> Result<(), StorageError> {
        self.storage.save_state(&self.agent, &self.name, json)
    }

    pub(crate) fn delete_state(&self) -> Result<(), StorageError> {
        self.storage.delete_state(&self.agent, &self.name)
    }

    /// The value under `key`, deserialized.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let raw: Option<String> = self
            .storage
            .lock()
            .query_row(
                "SELECT value FROM cf_agents_kv WHERE agent = ?1 AND name = ?2 AND key = ?3",
                params![&*self.agent, &*self.name, key],
                |row| row.get(0),
            )
            .optional()?;
        raw.map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(Into::into)
    }

    /// Stores `value` under `key`, replacing what was there.
    pub fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let json = serde_json::to_string(value)?;
        self.storage.lock().execute(
            "INSERT INTO cf_agents_kv (agent, name, key, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (agent, name, key) DO UPDATE SET value = excluded.value",
            params![&*self.agent, &*self.name, key, json],
        )?;
        Ok(())
    }

    /// Removes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let n = self.storage.lock().execute(
            "DELETE FROM cf_agents_kv WHERE agent = ?1 AND name = ?2 AND key = ?3",
            params![&*self.agent, &*self.name, key],
        )?;
        Ok(n > 0)
    }

    /// Keys starting with `prefix`, in order.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let db = self.storage.lock();
        let mut stmt = db.prepare(
            "SELECT key FROM cf_agents_kv WHERE agent = ?1 AND name = ?2 AND substr(key, 1, length(?3)) = ?3 ORDER BY key",
        )?;
        let keys = stmt
            .query_map(params![&*self.agent, &*self.name, prefix], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(keys)
    }

    /// Runs `f` on the database, for the agent's own SQL tables (the
    /// reference's `this.sql`). Tables are shared by every instance: key them
    /// by [`AgentContext::name`](crate::AgentContext::name). Wrap several
    /// statements in a transaction to make them atomic.
    pub fn with_sql<R>(
        &self,
        f: impl FnOnce(&Db) -> rusqlite::Result<R>,
    ) -> Result<R, StorageError> {
        Ok(f(&self.storage.lock())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_kv_round_trip() {
        let s = Storage::in_memory();
        assert_eq!(s.load_state("a", "n").unwrap(), None);
        s.save_state("a", "n", r#"{"count":1}"#).unwrap();
        s.save_state("a", "n", r#"{"count":2}"#).unwrap();
        assert_eq!(
            s.load_state("a", "n").unwrap().as_deref(),
            Some(r#"{"count":2}"#)
        );
        assert_eq!(s.load_state("a", "other").unwrap(), None);

        let kv = s.instance("a", "n");
        kv.put("user:1", &"ann").unwrap();
        kv.put("user:2", &"bob").unwrap();
        kv.put("x", &[1, 2]).unwrap();
        assert_eq!(kv.get::<String>("user:1").unwrap().as_deref(), Some("ann"));
        assert_eq!(kv.keys("user:").unwrap(), ["user:1", "user:2"]);
        assert!(kv.delete("user:1").unwrap());
        assert!(!kv.delete("user:1").unwrap());
        // Instances do not see each other's keys.
        assert_eq!(s.instance("a", "m").keys("").unwrap(), Vec::<String>::new());
        let n: i64 = kv
            .with_sql(|db| db.query_row("SELECT count(*) FROM cf_agents_kv", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn file_database_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("agents-rs-storage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Storage::open_dir(&dir)
            .unwrap()
            .save_state("c", "n", "5")
            .unwrap();
        assert_eq!(
            Storage::open_dir(&dir)
                .unwrap()
                .load_state("c", "n")
                .unwrap()
                .as_deref(),
            Some("5")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
