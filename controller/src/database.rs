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
pub fn password(file: Option<&Path>) -> Result<Option<String>, OpenError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| OpenError::PasswordFile {
            path: path.display().to_string(),
            source,
        })?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
    }
    Ok(std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()))
}

/// `config` (a config.toml's text) with its `[store]` section naming the PostgreSQL
/// database `url` (and `password_file`, when given) instead of any it named before; every
/// other line is kept byte for byte. A config without `[store]` gets one at its end.
pub fn config_naming(config: &str, url: &str, password_file: Option<&Path>) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut lines = format!("url = {}\n", quote(url));
    if let Some(f) = password_file {
        lines.push_str(&format!(
            "password_file = {}\n",
            quote(&f.to_string_lossy())
        ));
    }
    let header = |l: &str| l.trim_start().starts_with('[');
    let is_store = |l: &str| {
        let t = l.trim();
        t.strip_prefix("[store]")
            .is_some_and(|rest| rest.trim().is_empty() || rest.trim_start().starts_with('#'))
    };
    let key = |l: &str| {
        l.split_once('=')
            .map(|(k, _)| k.trim().to_owned())
            .unwrap_or_default()
    };
    let mut out = String::with_capacity(config.len() + lines.len());
    let mut in_store = false;
    let mut found = false;
    for l in config.split_inclusive('\n') {
        if header(l) {
            in_store = is_store(l);
            out.push_str(l);
            if in_store && !found {
                found = true;
                if !l.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(&lines);
            }
            continue;
        }
        if in_store && matches!(key(l).as_str(), "url" | "password_file") {
            continue;
        }
        out.push_str(l);
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("\n[store]\n");
        out.push_str(&lines);
    }
    out
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

    #[test]
    fn the_store_section_names_the_database_and_the_rest_is_kept() {
        let before = "# top\n[mqtt]\nurl = \"keep\"\n\n[store] # db\nbusy_timeout_ms = 5\n\
                      url = \"postgres://old@h/d\"\n# url = \"x\"\n  password_file = \"/o\"\n\n\
                      [backup]\nenabled = true";
        let pw = Path::new("/etc/pw");
        let after = config_naming(before, "postgres://u@db/p", Some(pw));
        assert_eq!(
            after,
            "# top\n[mqtt]\nurl = \"keep\"\n\n[store] # db\nurl = \"postgres://u@db/p\"\n\
             password_file = \"/etc/pw\"\nbusy_timeout_ms = 5\n# url = \"x\"\n\n\
             [backup]\nenabled = true"
        );
        // The default config: only the two lines are added.
        let default = crate::config::DEFAULT_TOML;
        let after = config_naming(default, "postgres://u@db/p", None);
        assert_eq!(
            after.replacen("url = \"postgres://u@db/p\"\n", "", 1),
            default
        );
        let cfg = crate::config::Config::parse(&after, Path::new("t")).unwrap();
        assert_eq!(cfg.store.url.as_deref(), Some("postgres://u@db/p"));
        // No [store] section: one is appended.
        let after = config_naming("[mqtt]\nx = 1", "postgres://u@db/p", None);
        assert_eq!(
            after,
            "[mqtt]\nx = 1\n\n[store]\nurl = \"postgres://u@db/p\"\n"
        );
    }
}
