//! Which database the controller opens: the data dir's SQLite file, or the PostgreSQL
//! database `[store] url` names (the scale-out mode), with its password from a file or the
//! environment, never from the configuration.

use std::path::Path;

use crate::config::StoreConfig;
use crate::datadir::DataDir;
use crate::store::{PgOptions, Store, StoreError};

/// The environment variable a PostgreSQL password may come from.
pub const PASSWORD_ENV: &str = "PIFLEET_STORE_PASSWORD";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("store.password_file {path}: {source}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Opens the store `cfg` describes (creating the SQLite file when `create`; a PostgreSQL
/// database must exist, its tables are created by the migrations).
pub async fn open(dd: &DataDir, cfg: &StoreConfig, create: bool) -> Result<Store, OpenError> {
    match &cfg.url {
        None => Ok(Store::open_with(&dd.database(), create, cfg.busy_timeout()).await?),
        Some(url) => {
            let opts = PgOptions {
                password: password(cfg.password_file.as_deref())?,
                max_connections: cfg.max_connections,
                ..PgOptions::default()
            };
            Ok(Store::open_postgres(url, &opts).await?)
        }
    }
}

/// The PostgreSQL password: the first line of `file`, else the environment's, else none.
fn password(file: Option<&Path>) -> Result<Option<String>, OpenError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| OpenError::PasswordFile {
            path: path.display().to_string(),
            source,
        })?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
    }
    Ok(std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_comes_from_the_first_line_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(password(Some(&f)).unwrap().as_deref(), Some("s3cret"));
        let missing = dir.path().join("none");
        let e = password(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("store.password_file"), "{e}");
    }
}
