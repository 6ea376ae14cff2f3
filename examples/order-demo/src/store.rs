//! The services' stores: one SQLite file per service (shared by its replicas), in
//! WAL mode, so a restarted service finds everything it had committed.
//!
//! Every reservation-like record (credit holds, stock holds, payments, shipments)
//! is keyed by order id, which makes each operation idempotent: a retried reserve
//! does not reserve twice, and a release that arrives first leaves a tombstone so a
//! late reserve for the same order is refused instead of held forever.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A thread panicked while holding the connection.
    #[error("store: the connection lock is poisoned")]
    Poisoned,
}

/// A SQLite database behind a lock (statements are short; no await inside).
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (or creates) the database at `path` and applies `schema`.
    pub fn open(path: &Path, schema: &str) -> Result<Arc<Db>, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(schema)?;
        Ok(Arc::new(Db {
            conn: Mutex::new(conn),
        }))
    }

    /// Runs `f` with the connection.
    pub fn with<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&mut conn)?)
    }
}

/// The schema of a holds table named `holds` with an optional balances table.
pub const HOLDS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS balances (key INTEGER PRIMARY KEY, amount INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    order_id TEXT PRIMARY KEY,
    key INTEGER,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('held', 'released'))
);";

/// The answer to a reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// Held now, or already held by an earlier try of the same order.
    Held,
    /// The order was released before this reserve arrived: not held.
    AlreadyReleased,
    /// The key does not exist.
    UnknownKey,
    /// Not enough left.
    Insufficient,
}

/// Holds `amount` of `key` for `order_id`; with `balance` the amount is taken from
/// the key's balance (credit, stock), without it the hold is only recorded
/// (payments, shipments).
pub fn reserve(
    db: &Db,
    order_id: &str,
    key: i64,
    amount: i64,
    balance: bool,
) -> Result<Reserve, StoreError> {
    db.with(|conn| {
        let tx = conn.transaction()?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT status FROM holds WHERE order_id = ?1",
                [order_id],
                |r| r.get(0),
            )
            .optional()?;
        match existing.as_deref() {
            Some("held") => return Ok(Reserve::Held),
            Some(_) => return Ok(Reserve::AlreadyReleased),
            None => {}
        }
        if balance {
            let left: Option<i64> = tx
                .query_row("SELECT amount FROM balances WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?;
            match left {
                None => return Ok(Reserve::UnknownKey),
                Some(left) if left < amount => return Ok(Reserve::Insufficient),
                Some(_) => {}
            }
            tx.execute(
                "UPDATE balances SET amount = amount - ?2 WHERE key = ?1",
                params![key, amount],
            )?;
        }
        tx.execute(
            "INSERT INTO holds (order_id, key, amount, status) VALUES (?1, ?2, ?3, 'held')",
            params![order_id, key, amount],
        )?;
        tx.commit()?;
        Ok(Reserve::Held)
    })
}

/// Releases the hold of `order_id` (giving the amount back to the balance when
/// `balance`); releasing an unknown order leaves a tombstone. Idempotent.
pub fn release(db: &Db, order_id: &str, balance: bool) -> Result<(), StoreError> {
    db.with(|conn| {
        let tx = conn.transaction()?;
        let existing: Option<(Option<i64>, i64, String)> = tx
            .query_row(
                "SELECT key, amount, status FROM holds WHERE order_id = ?1",
                [order_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match existing {
            None => {
                tx.execute(
                    "INSERT INTO holds (order_id, key, amount, status) VALUES (?1, NULL, 0, 'released')",
                    [order_id],
                )?;
            }
            Some((key, amount, status)) if status == "held" => {
                tx.execute("UPDATE holds SET status = 'released' WHERE order_id = ?1", [order_id])?;
                if balance && let Some(key) = key {
                    tx.execute(
                        "UPDATE balances SET amount = amount + ?2 WHERE key = ?1",
                        params![key, amount],
                    )?;
                }
            }
            Some(_) => {}
        }
        tx.commit()
    })
}

/// Sets the balance of `key` (seeding a store).
pub fn seed_balance(db: &Db, key: i64, amount: i64) -> Result<(), StoreError> {
    db.with(|conn| {
        conn.execute(
            "INSERT INTO balances (key, amount) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING",
            params![key, amount],
        )
        .map(drop)
    })
}

/// The holds still held, by order id.
pub fn held_orders(db: &Db) -> Result<std::collections::HashSet<String>, StoreError> {
    db.with(|conn| {
        let mut stmt = conn.prepare("SELECT order_id FROM holds WHERE status = 'held'")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    })
}

/// The sum of the balances (for conservation checks).
pub fn total_balance(db: &Db) -> Result<i64, StoreError> {
    db.with(|conn| {
        conn.query_row("SELECT COALESCE(SUM(amount), 0) FROM balances", [], |r| {
            r.get(0)
        })
    })
}

/// The sum of the amounts held.
pub fn total_held(db: &Db) -> Result<i64, StoreError> {
    db.with(|conn| {
        conn.query_row(
            "SELECT COALESCE(SUM(amount), 0) FROM holds WHERE status = 'held'",
            [],
            |r| r.get(0),
        )
    })
}
