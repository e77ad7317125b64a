//! Reading a TOML configuration file the way both binaries do: the file named in every
//! error, unknown fields refused by the caller's types, and every semantic problem reported
//! at once.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration file was refused (both binaries exit 64 for it).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{path}: invalid configuration:\n  - {}", .problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// Reads the whole file.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses TOML text; `path` is only used in messages.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// `Ok` when there are no problems, otherwise all of them at once.
pub fn check(path: &Path, problems: Vec<String>) -> Result<(), ConfigError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[allow(dead_code)]
        port: u16,
    }

    #[test]
    fn errors_name_the_file_and_list_every_problem() {
        let p = Path::new("/etc/x.toml");
        let e = parse::<Sample>("port = 1\nother = 2", p).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        assert!(e.to_string().starts_with("/etc/x.toml: "), "{e}");
        assert!(parse::<Sample>("port = 8883", p).is_ok());
        let e = check(p, vec!["a is wrong".into(), "b is wrong".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/x.toml: invalid configuration:\n  - a is wrong\n  - b is wrong"
        );
        assert!(check(p, Vec::new()).is_ok());
        let e = read(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/x.toml: "),
            "{e}"
        );
    }
}
