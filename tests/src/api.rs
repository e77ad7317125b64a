//! An admin API client for tests: reqwest over rustls trusting only the controller's CA,
//! with helpers to sign in as the first admin and to create users of each role.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::harness::Controller;
use crate::mqtt::client_tls;

/// The password the helpers give every user they set up (meets the policy).
pub const TEST_PASSWORD: &str = "quiet-harbor-lantern-47";

/// A response: status, headers and body (parsed as JSON when it is JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
    /// A header as text ("" if absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
    /// Every `Set-Cookie` header.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
}

/// A client for one controller.
#[derive(Debug, Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
}

impl Api {
    /// A client for `ctl`'s HTTPS listener (as `localhost`, trusting only its CA).
    pub fn new(ctl: &Controller) -> Result<Self> {
        Self::at(ctl.https, &ctl.ca_path())
    }

    /// A client for the controller listening on `https` whose CA certificate is `ca`.
    pub fn at(https: std::net::SocketAddr, ca: &std::path::Path) -> Result<Self> {
        let mut tls = client_tls(ca, None)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve("localhost", https)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            client,
            base: format!("https://localhost:{}", https.port()),
        })
    }

    /// Sends a request; `token` goes in `Authorization: Bearer`, `body` as JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Resp> {
        self.call_with(method, path, token, body, &[]).await
    }

    /// Like [`Api::call`] with extra headers.
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Resp> {
        let mut rb = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb
            .send()
            .await
            .with_context(|| format!("request to {path}"))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await?;
        Ok(Resp {
            status,
            headers,
            text,
        })
    }

    /// A POST whose body is `bytes` as `application/octet-stream` (release uploads).
    pub async fn post_bytes(
        &self,
        path: &str,
        token: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<Resp> {
        let mut rb = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/octet-stream")
            .body(bytes);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb
            .send()
            .await
            .with_context(|| format!("request to {path}"))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await?;
        Ok(Resp {
            status,
            headers,
            text,
        })
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<Resp> {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Result<Resp> {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// `POST /api/v1/auth/login`.
    pub async fn login(&self, user: &str, password: &str) -> Result<Resp> {
        self.post(
            "/api/v1/auth/login",
            None,
            &json!({ "username": user, "password": password }),
        )
        .await
    }

    /// Signs in and returns (access token, refresh token); fails unless it worked in one
    /// step (no MFA).
    pub async fn tokens(&self, user: &str, password: &str) -> Result<(String, String)> {
        let r = self.login(user, password).await?;
        if r.status != 200 {
            bail!("login of {user} failed: {} {}", r.status, r.text);
        }
        let j = r.json();
        let access = j["access_token"].as_str().context("no access_token")?;
        let refresh = j["refresh_token"].as_str().context("no refresh_token")?;
        Ok((access.to_owned(), refresh.to_owned()))
    }

    /// Signs in with `old`, changes the password to `new`, signs in again: the access token.
    pub async fn first_login(&self, user: &str, old: &str, new: &str) -> Result<String> {
        let (access, _) = self.tokens(user, old).await?;
        let r = self
            .post(
                "/api/v1/me/password",
                Some(&access),
                &json!({ "current_password": old, "new_password": new }),
            )
            .await?;
        if r.status != 204 {
            bail!("password change of {user} failed: {} {}", r.status, r.text);
        }
        Ok(self.tokens(user, new).await?.0)
    }

    /// The first admin, signed in with [`TEST_PASSWORD`] (after the forced change).
    pub async fn admin(&self, ctl: &Controller) -> Result<String> {
        self.first_login("admin", &ctl.admin_password, TEST_PASSWORD)
            .await
    }

    /// Creates a user of `role` through the API and signs them in with
    /// [`TEST_PASSWORD`]: their access token.
    pub async fn user(&self, admin_token: &str, name: &str, role: &str) -> Result<String> {
        let r = self
            .post(
                "/api/v1/users",
                Some(admin_token),
                &json!({ "name": name, "role": role, "password": "initial-paper-cactus-91" }),
            )
            .await?;
        if r.status != 201 {
            bail!("creating {name} failed: {} {}", r.status, r.text);
        }
        self.first_login(name, "initial-paper-cactus-91", TEST_PASSWORD)
            .await
    }
}
