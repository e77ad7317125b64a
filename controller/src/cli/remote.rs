//! The command line against a remote controller, through its admin API: `--url`, the API
//! token from `PIFLEET_API_TOKEN` or `--token-file` (never an argument, which other local
//! users can read in the process list), and the controller pinned by its CA's fingerprint,
//! as an agent pins it at enrollment. For build pipelines that publish releases.

use std::path::PathBuf;

use pifleet_io::pinned::PinnedCa;
use reqwest::StatusCode;
use serde_json::Value;

/// Where the remote controller is and how to sign in to it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// Run against the controller at this HTTPS URL (e.g. https://fleet.example.com:8443)
    /// through its API, instead of a local data dir.
    #[arg(long, requires = "ca_fingerprint")]
    pub url: Option<String>,
    /// SHA-256 (hex) of the controller's CA certificate, e.g.
    /// `openssl x509 -in ca.crt -outform der | sha256sum`. Required with --url.
    #[arg(long, requires = "url")]
    pub ca_fingerprint: Option<String>,
    /// Read the API token from this file instead of the PIFLEET_API_TOKEN variable.
    #[arg(long, requires = "url")]
    pub token_file: Option<PathBuf>,
}

/// What the remote controller answered, when it was not a success.
#[derive(Debug, thiserror::Error)]
#[error("the controller answered {status}: {detail}")]
pub struct Refused {
    pub status: u16,
    pub detail: String,
}

/// A signed-in connection to a remote controller.
#[derive(Debug)]
pub struct Remote {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Remote {
    /// The remote controller of `args`, or None when no `--url` was given.
    pub fn from_args(args: &RemoteArgs) -> anyhow::Result<Option<Self>> {
        let (Some(url), Some(fpr)) = (&args.url, &args.ca_fingerprint) else {
            return Ok(None);
        };
        let fpr: String = fpr.chars().filter(|c| *c != ':').collect();
        if fpr.len() != 64 || !fpr.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!(super::Usage(
                "--ca-fingerprint is the SHA-256 of the CA certificate: 64 hex digits".into()
            ));
        }
        if !url.starts_with("https://") {
            anyhow::bail!(super::Usage("--url must start with https://".into()));
        }
        let token = match &args.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .trim()
                .to_owned(),
            None => std::env::var("PIFLEET_API_TOKEN").map_err(|_| {
                super::Usage(
                    "set PIFLEET_API_TOKEN, or give --token-file, with an API token".into(),
                )
            })?,
        };
        let tls = PinnedCa::new(fpr).client_config()?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()?;
        Ok(Some(Self {
            client,
            base: url.trim_end_matches('/').to_owned(),
            token,
        }))
    }

    /// Sends a request with the token; the JSON answer, or the controller's refusal.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<reqwest::Body>,
        content_type: &str,
    ) -> anyhow::Result<Value> {
        let mut rb = self
            .client
            .request(method, format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(b);
        }
        let r = rb.send().await?;
        let status = r.status();
        let text = r.text().await?;
        if status.is_success() {
            if status == StatusCode::NO_CONTENT || text.is_empty() {
                return Ok(Value::Null);
            }
            return Ok(serde_json::from_str(&text)?);
        }
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or(text);
        Err(Refused {
            status: status.as_u16(),
            detail,
        }
        .into())
    }
}
