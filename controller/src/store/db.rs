//! Which database the store runs on, and how a query reaches it.
//!
//! The store's SQL is written once and runs on both databases: `$1…$N` placeholders (sqlx
//! binds them on SQLite too), `TRUE`/`FALSE`, `ON CONFLICT`, `RETURNING`, `IS DISTINCT FROM`
//! and `FILTER (WHERE …)`, all of which SQLite (3.39 and later) and PostgreSQL share. The few
//! fragments that differ (JSON access, substring search) come from [`super::dialect::Dialect`],
//! implemented once per database.
//!
//! A query runs through one of three macros, which expand its body once per database so that
//! sqlx's types are the concrete ones on each side:
//! - `reading!(store, |ex| body)` on the read pool,
//! - `writing!(store, |ex| body)` on the write pool,
//! - `in_tx!(tx, |ex| body)` inside a write transaction ([`Tx`]; `in_tx!(*tx, …)` for a
//!   `&mut Tx`).
//!
//! Inside the body, `c` is the executor and `DB` names the database type (`sqlx::Sqlite` or
//! `sqlx::Postgres`), for a `QueryBuilder<DB>` or a `<DB as Dialect>` fragment.

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use super::StoreError;

/// The database behind a [`super::Store`].
#[derive(Debug, Clone)]
pub(crate) enum Db {
    /// One file: a single writer connection (group commits) and a pool of read-only readers.
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
    /// A server shared by every controller replica: one pool for reads and writes.
    Postgres { pool: PgPool },
}

/// A write transaction on either database.
#[derive(Debug)]
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(t) => t.commit().await?,
            Tx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}

/// Runs `$body` on the SQLite pool `$sqlite` (`reader` or `writer`) or PostgreSQL's one pool.
macro_rules! on_pool {
    ($store:expr, $sqlite:ident, |$c:ident| $body:expr) => {
        match &$store.db {
            $crate::store::db::Db::Sqlite { $sqlite, .. } => {
                #[allow(dead_code, clippy::upper_case_acronyms)]
                type DB = sqlx::Sqlite;
                let $c = $sqlite;
                $body
            }
            $crate::store::db::Db::Postgres { pool } => {
                #[allow(dead_code, clippy::upper_case_acronyms)]
                type DB = sqlx::Postgres;
                let $c = pool;
                $body
            }
        }
    };
}

/// Runs `$body` on the store's read pool (see the module documentation).
macro_rules! reading {
    ($store:expr, |$c:ident| $body:expr) => {
        $crate::store::db::on_pool!($store, reader, |$c| $body)
    };
}

/// Runs `$body` on the store's write pool (see the module documentation).
macro_rules! writing {
    ($store:expr, |$c:ident| $body:expr) => {
        $crate::store::db::on_pool!($store, writer, |$c| $body)
    };
}

/// Runs `$body` inside the write transaction `$tx` (a `Tx`; `*tx` for a `&mut Tx`).
macro_rules! in_tx {
    ($tx:expr, |$c:ident| $body:expr) => {
        match &mut $tx {
            $crate::store::db::Tx::Sqlite(t) => {
                #[allow(dead_code, clippy::upper_case_acronyms)]
                type DB = sqlx::Sqlite;
                let $c = &mut **t;
                $body
            }
            $crate::store::db::Tx::Postgres(t) => {
                #[allow(dead_code, clippy::upper_case_acronyms)]
                type DB = sqlx::Postgres;
                let $c = &mut **t;
                $body
            }
        }
    };
}

/// `sqlx::Type` and `sqlx::Decode` on both databases for `$ty`, stored as its name (text):
/// `$from_name` makes the value of the name read (`$name: &str`), or a decode error.
macro_rules! stored_by_name {
    ($ty:ty, |$name:ident| $from_name:expr) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $ty
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $ty
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let $name = <&str as sqlx::Decode<DB>>::decode(value)?;
                $from_name
            }
        }
    };
}

#[allow(unused_imports)] // for the tests outside the store
pub(crate) use {in_tx, on_pool, reading, stored_by_name, writing};

/// A JSON document stored as text (a `TEXT` column on both databases), decoded with serde.
/// sqlx's own `Json` reads PostgreSQL's `json`/`jsonb` types only.
#[derive(Debug, Clone)]
pub(crate) struct JsonText<T>(pub T);

impl<T, DB: sqlx::Database> sqlx::Type<DB> for JsonText<T>
where
    str: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <str as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <str as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, T, DB: sqlx::Database> sqlx::Decode<'r, DB> for JsonText<T>
where
    T: serde::de::DeserializeOwned,
    &'r str: sqlx::Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<DB>>::decode(value)?;
        Ok(Self(serde_json::from_str(text)?))
    }
}

impl From<JsonText<super::Labels>> for super::Labels {
    fn from(j: JsonText<super::Labels>) -> Self {
        j.0
    }
}

impl From<JsonText<serde_json::Value>> for serde_json::Value {
    fn from(j: JsonText<serde_json::Value>) -> Self {
        j.0
    }
}
