//! The SQL that is not the same on both databases. The store's statements are written in
//! the SQL that SQLite and PostgreSQL share (see `db`); what differs is here:
//! - portable spellings of a few expressions, as small functions the queries use (casts,
//!   counting by a condition, null-safe comparison), kept here so that both databases are
//!   checked against the same table of meanings (the tests below);
//! - [`Dialect`]: the fragments written differently on each (JSON access, case-insensitive
//!   substring search), implemented for `sqlx::Sqlite` and `sqlx::Postgres`;
//! - `sqlite` and `postgres`: connecting, migrations, how a write transaction starts and
//!   which errors mean a broken database.
//!
//! Everything formatted by these functions is a column, alias or key written in the code,
//! never a user value; user values are bound.

use sqlx::QueryBuilder;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// Null-safe inequality: true when the operands differ, NULL counting as a value of its own.
pub(super) const IS_DISTINCT_FROM: &str = "IS DISTINCT FROM";

/// `expr` as a 64-bit float.
pub(super) fn as_float(expr: &str) -> String {
    format!("CAST({expr} AS DOUBLE PRECISION)")
}

/// `expr` as a 64-bit integer.
pub(super) fn as_int64(expr: &str) -> String {
    format!("CAST({expr} AS BIGINT)")
}

/// The number of rows for which `condition` holds, 0 for none.
pub(super) fn count_if(condition: &str) -> String {
    format!("COUNT(*) FILTER (WHERE {condition})")
}

/// The fragments each database writes its own way.
pub(crate) trait Dialect: sqlx::Database + Sized {
    /// Pushes a condition: `needle` occurs in the text `expr`, ignoring ASCII case. The
    /// needle is bound and must already be in ASCII lower case.
    fn push_contains_ci(qb: &mut QueryBuilder<Self>, expr: &'static str, needle: String);

    /// Pushes the value at `key` of the JSON object in the text column `column` (a string
    /// for a string); the key is bound.
    fn push_json_text(qb: &mut QueryBuilder<Self>, column: &'static str, key: &str);

    /// A condition: some element of the JSON array in the text `array`, named `alias`,
    /// satisfies `condition` (which reads the element's fields with
    /// [`Dialect::json_element_field`]).
    fn json_array_any(array: &str, alias: &str, condition: &str) -> String;

    /// The value at `key` of the JSON object that is the element `alias` of
    /// [`Dialect::json_array_any`], as a number.
    fn json_element_number(alias: &str, key: &str) -> String;

    /// Ends a `SELECT` of the rows of table alias `c` an `UPDATE` claims: on PostgreSQL it
    /// locks them and skips those another transaction holds (`FOR UPDATE OF c SKIP
    /// LOCKED`), so controllers claiming at once take different rows without waiting; on
    /// SQLite, where one writer runs at a time, nothing.
    const CLAIM_ROWS_OF_C: &'static str;
}

#[cfg(test)]
mod tests {
    use sqlx::AssertSqlSafe;

    use super::*;
    use crate::store::testkit::store;

    /// A condition as 0 or 1 (a BIGINT on both databases).
    fn truth(condition: &str) -> String {
        format!("SELECT CAST(CASE WHEN {condition} THEN 1 ELSE 0 END AS BIGINT)")
    }

    /// Each fragment, run on the database, means what its documentation says: the same
    /// table on both databases.
    #[tokio::test]
    async fn fragments_mean_what_they_say() {
        let (_d, s) = store().await;
        reading!(s, |ex| {
            let element = |key| DB::json_element_number("j", key);
            let cases: Vec<(String, i64)> = vec![
                (truth(&format!("'a' {IS_DISTINCT_FROM} NULL")), 1),
                (truth(&format!("NULL {IS_DISTINCT_FROM} NULL")), 0),
                (truth(&format!("'a' {IS_DISTINCT_FROM} 'a'")), 0),
                (truth(&format!("'a' {IS_DISTINCT_FROM} 'b'")), 1),
                (
                    format!(
                        "SELECT {} FROM (SELECT 1 AS x WHERE FALSE) AS n",
                        count_if("x = 1")
                    ),
                    0,
                ),
                (
                    format!(
                        "SELECT {} FROM (SELECT 1 AS x UNION ALL SELECT 2 UNION ALL SELECT 1) AS n",
                        count_if("x = 1")
                    ),
                    2,
                ),
                (truth(&format!("{} / 2 = 0.5", as_float("1"))), 1),
                (
                    format!("SELECT {}", as_int64("9007199254740993")),
                    9_007_199_254_740_993,
                ),
                (
                    truth(&DB::json_array_any(
                        r#"'[{"used":1,"total":2},{"used":9,"total":10}]'"#,
                        "j",
                        &format!("{} > 8", element("used")),
                    )),
                    1,
                ),
                (
                    truth(&DB::json_array_any(
                        "'[]'",
                        "j",
                        &format!("{} > 8", element("used")),
                    )),
                    0,
                ),
            ];
            for (sql, want) in cases {
                let got: i64 = sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                    .fetch_one(ex)
                    .await
                    .unwrap();
                assert_eq!(got, want, "{sql}");
            }
            let bound = [
                ("kiosk", "'Kiosk-A'", 1),
                ("k-a", "'KIOSK-A'", 1),
                ("%", "'Kiosk-A'", 0),
                ("", "'x'", 1),
            ];
            for (needle, text, want) in bound {
                let mut qb: QueryBuilder<DB> = QueryBuilder::new("SELECT CAST(CASE WHEN ");
                DB::push_contains_ci(&mut qb, text, needle.to_owned());
                qb.push(" THEN 1 ELSE 0 END AS BIGINT)");
                let got: i64 = qb.build_query_scalar().fetch_one(ex).await.unwrap();
                assert_eq!(got, want, "{needle:?} in {text}");
            }
            let mut qb: QueryBuilder<DB> = QueryBuilder::new("SELECT ");
            DB::push_json_text(&mut qb, r#"'{"site":"lobby","a b":"x"}'"#, "site");
            let got: Option<String> = qb.build_query_scalar().fetch_one(ex).await.unwrap();
            assert_eq!(got.as_deref(), Some("lobby"));
            let mut qb: QueryBuilder<DB> = QueryBuilder::new("SELECT ");
            DB::push_json_text(&mut qb, r#"'{"site":"lobby"}'"#, "tier");
            let got: Option<String> = qb.build_query_scalar().fetch_one(ex).await.unwrap();
            assert_eq!(got, None);
        });
    }
}
