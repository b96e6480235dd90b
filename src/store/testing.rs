//! Throwaway PostgreSQL databases for tests: the store's unit tests and the end-to-end
//! CLI tests each create a fresh database on one server, so test binaries (and the
//! tests within one) run side by side without seeing each other's rows. Not part of
//! the API; public only so that `tests/` can use it.

/// The server the tests use unless [`BASE_URL_ENV`] names another.
pub const DEFAULT_BASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Environment variable overriding [`DEFAULT_BASE_URL`].
pub const BASE_URL_ENV: &str = "CCMETRICS_TEST_PG";

#[derive(Debug, thiserror::Error)]
pub enum TestDbError {
    #[error(
        "cannot reach the test PostgreSQL at {url}: {source}. The PostgreSQL tests need a \
         server (scripts/test.sh starts one; set {BASE_URL_ENV} to use another)"
    )]
    Unreachable {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("test database {name}: cannot {action}: {source}")]
    Sql {
        name: String,
        action: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

/// A database created for one test; [`TestDb::drop_db`] removes it.
#[derive(Debug)]
pub struct TestDb {
    /// URL of the fresh database, for `Store::open` or `CCMETRICS__STORE__URL`.
    pub url: String,
    base: String,
    name: String,
}

impl TestDb {
    /// Create an empty database on the test server.
    pub async fn create() -> Result<TestDb, TestDbError> {
        let base = std::env::var(BASE_URL_ENV).unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned());
        // Unique across concurrent test processes and the tests within each; the pid
        // also tells whose leftovers a killed run left behind.
        let name = format!(
            "ccm_test_{}_{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        // The name is [a-z0-9_] only, so it can go into the statement unquoted.
        admin(
            &base,
            &name,
            "create it",
            &format!("CREATE DATABASE {name}"),
        )
        .await?;
        Ok(TestDb {
            url: with_database(&base, &name),
            base,
            name,
        })
    }

    /// Drop the database, closing whatever connections are still open to it.
    pub async fn drop_db(self) -> Result<(), TestDbError> {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        admin(&self.base, &self.name, "drop it", &sql).await
    }
}

/// Run one statement on the base database (CREATE / DROP DATABASE cannot run in the
/// database concerned, nor in a transaction, hence a connection of its own).
async fn admin(base: &str, name: &str, action: &'static str, sql: &str) -> Result<(), TestDbError> {
    use sqlx::{Connection, Executor};
    let mut conn =
        sqlx::PgConnection::connect(base)
            .await
            .map_err(|source| TestDbError::Unreachable {
                url: base.to_owned(),
                source,
            })?;
    let sql_error = |source| TestDbError::Sql {
        name: name.to_owned(),
        action,
        source,
    };
    conn.execute(sql).await.map_err(sql_error)?;
    conn.close().await.map_err(sql_error)
}

/// `url` with its database (the path) replaced by `db`, keeping any query parameters.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority = head.find("://").map_or(0, |i| i + 3);
    let path = head[authority..]
        .find('/')
        .map_or(head.len(), |i| authority + i);
    match query {
        Some(q) => format!("{}/{db}?{q}", &head[..path]),
        None => format!("{}/{db}", &head[..path]),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/test?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
