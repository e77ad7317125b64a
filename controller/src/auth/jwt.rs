//! Short-lived HS256 access and MFA tokens. The header's `kid` names the key that signed a
//! token, so keys can rotate: the newest signs, older ones are kept only to verify.

use std::fmt;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::datadir::{DataDirError, write_private};

/// Bytes in a generated signing secret.
const SECRET_BYTES: usize = 32;
/// Bytes in a key id (shown as 16 hex digits).
const KID_BYTES: usize = 8;

/// Which kind of token; carried in the `typ` claim and always checked, so an access token is
/// never accepted where another kind is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Grants API access within a session.
    Access,
    /// Proves the password step of a sign-in that still needs a TOTP code.
    Mfa,
}

/// The claims of every token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: i64,
    /// Session id ("" for MFA tokens).
    pub sid: String,
    /// Token kind.
    pub typ: TokenKind,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds.
    pub exp: i64,
    /// Random 128-bit id, hex.
    pub jti: String,
}

/// Errors about keys and tokens.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Reading or writing the key file failed.
    #[error(transparent)]
    Io(#[from] DataDirError),
    /// The key file is malformed; the message says how.
    #[error("{0}")]
    Format(String),
    /// Signing failed.
    #[error("signing a token failed: {0}")]
    Sign(jsonwebtoken::errors::Error),
    /// Any verification failure: never say why to the client.
    #[error("invalid token")]
    Invalid,
}

struct Key {
    kid: String,
    secret: Vec<u8>,
    created_at: i64,
}

impl Key {
    fn generate() -> Self {
        let mut rng = rand::rng();
        let mut kid = [0u8; KID_BYTES];
        rng.fill_bytes(&mut kid);
        let mut secret = vec![0u8; SECRET_BYTES];
        rng.fill_bytes(&mut secret);
        Self {
            kid: hex::encode(kid),
            secret,
            created_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        }
    }
}

/// One key as stored in `jwt.key`.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    secret: String,
    created_at: i64,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

/// The signing keys, newest first. Stored as JSON
/// `{"keys":[{"kid":"<16 hex>","secret":"<64 hex>","created_at":<unix s>}]}` in `jwt.key`
/// (0600).
pub struct JwtKeys {
    /// Signs new tokens.
    current: Key,
    /// Only verify tokens they signed, newest first.
    older: Vec<Key>,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys")
            .field("kids", &self.keys().map(|k| &k.kid).collect::<Vec<_>>())
            .finish()
    }
}

impl JwtKeys {
    /// One random 256-bit key.
    pub fn generate() -> Self {
        Self {
            current: Key::generate(),
            older: Vec::new(),
        }
    }

    /// Reads the key file; refuses an empty list, duplicate or empty key ids, and secrets
    /// that are not hex or shorter than 32 bytes.
    pub fn load(path: &Path) -> Result<Self, JwtError> {
        let bad = |why: String| JwtError::Format(format!("{}: {why}", path.display()));
        let data = std::fs::read(path).map_err(|source| DataDirError::Io {
            path: path.to_owned(),
            source,
        })?;
        let file: KeyFile =
            serde_json::from_slice(&data).map_err(|e| bad(format!("not a JWT key file: {e}")))?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for k in file.keys {
            if k.kid.is_empty() || keys.iter().any(|o: &Key| o.kid == k.kid) {
                return Err(bad(format!("key id {:?} is empty or repeated", k.kid)));
            }
            let secret = hex::decode(&k.secret)
                .map_err(|e| bad(format!("secret of key {} is not hex: {e}", k.kid)))?;
            if secret.len() < SECRET_BYTES {
                return Err(bad(format!(
                    "secret of key {} is {} bytes; at least {SECRET_BYTES} are needed",
                    k.kid,
                    secret.len()
                )));
            }
            keys.push(Key {
                kid: k.kid,
                secret,
                created_at: k.created_at,
            });
        }
        let mut keys = keys.into_iter();
        let current = keys.next().ok_or_else(|| {
            bad("no keys; delete the file to have a new key generated".to_owned())
        })?;
        Ok(Self {
            current,
            older: keys.collect(),
        })
    }

    /// Writes the key file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), JwtError> {
        let file = KeyFile {
            keys: self
                .keys()
                .map(|k| StoredKey {
                    kid: k.kid.clone(),
                    secret: hex::encode(&k.secret),
                    created_at: k.created_at,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| JwtError::Format(format!("serialising JWT keys: {e}")))?;
        Ok(write_private(path, &json)?)
    }

    /// Adds a new key in front (used for signing from now on) and keeps at most `keep` older
    /// ones for verifying tokens they signed.
    pub fn rotate(&mut self, keep: usize) {
        let previous = std::mem::replace(&mut self.current, Key::generate());
        self.older.insert(0, previous);
        self.older.truncate(keep);
    }

    /// Rotation as `rotate jwt-key` does it at `now_unix`: a new key signs from now on; the
    /// previous one, and any older one whose successor is younger than `max_token_age_s`
    /// (the longest a token it signed can still be valid), keep verifying. Nobody is signed
    /// out; keys no live token can use are dropped.
    pub fn rotate_at(&mut self, now_unix: i64, max_token_age_s: i64) {
        self.rotate(usize::MAX);
        self.current.created_at = now_unix;
        let mut successor_created = now_unix;
        let mut kept = Vec::with_capacity(self.older.len());
        for key in self.older.drain(..) {
            if now_unix.saturating_sub(successor_created) < max_token_age_s {
                successor_created = key.created_at;
                kept.push(key);
            } else {
                break;
            }
        }
        self.older = kept;
    }

    /// The id of the key that signs new tokens.
    pub fn current_kid(&self) -> &str {
        &self.current.kid
    }

    /// Signs claims with the newest key, header alg HS256 and kid.
    pub fn issue(
        &self,
        kind: TokenKind,
        sub: i64,
        sid: &str,
        ttl_s: i64,
        now_unix: i64,
    ) -> Result<(String, Claims), JwtError> {
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let claims = Claims {
            sub,
            sid: sid.to_owned(),
            typ: kind,
            iat: now_unix,
            exp: now_unix.saturating_add(ttl_s),
            jti: hex::encode(jti),
        };
        let header = Header {
            kid: Some(self.current.kid.clone()),
            ..Header::new(Algorithm::HS256)
        };
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(&self.current.secret),
        )
        .map_err(JwtError::Sign)?;
        Ok((token, claims))
    }

    /// Verifies: header alg must be HS256 (so "none" and every other alg are refused), kid
    /// must name a known key, signature valid, exp > now (no leeway), typ == expected.
    /// Returns the claims.
    pub fn verify(
        &self,
        token: &str,
        expected: TokenKind,
        now_unix: i64,
    ) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(JwtError::Invalid);
        }
        let kid = header.kid.ok_or(JwtError::Invalid)?;
        let key = self
            .keys()
            .find(|k| k.kid == kid)
            .ok_or(JwtError::Invalid)?;
        // Expiry is checked below against `now_unix`; there are no other registered claims.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(&key.secret),
            &validation,
        )
        .map_err(|_| JwtError::Invalid)?
        .claims;
        if claims.exp <= now_unix || claims.typ != expected {
            return Err(JwtError::Invalid);
        }
        Ok(claims)
    }

    /// Newest first.
    fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current).chain(&self.older)
    }
}

/// The access-token keys in use, swapped whole when `jwt.key` changes (`rotate jwt-key`)
/// without a restart: the API reads them, the key-reload task replaces them.
#[derive(Debug)]
pub struct CurrentKeys(std::sync::RwLock<std::sync::Arc<JwtKeys>>);

impl CurrentKeys {
    pub fn new(keys: JwtKeys) -> Self {
        Self(std::sync::RwLock::new(std::sync::Arc::new(keys)))
    }

    /// The keys in use now.
    pub fn get(&self) -> std::sync::Arc<JwtKeys> {
        // A poisoned lock still holds a whole value: the keys are swapped, never edited.
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts new keys in use (tokens signed by the old ones keep verifying as long as the
    /// new key file lists them).
    pub fn set(&self, keys: JwtKeys) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::os::unix::fs::PermissionsExt;

    const NOW: i64 = 1_700_000_000;

    fn invalid(r: Result<Claims, JwtError>) -> bool {
        matches!(r, Err(JwtError::Invalid))
    }

    #[test]
    fn round_trip() {
        let keys = JwtKeys::generate();
        let (token, claims) = keys.issue(TokenKind::Access, 7, "s1", 900, NOW).unwrap();
        assert_eq!(claims.exp, NOW + 900);
        assert_eq!(claims.jti.len(), 32);
        let got = keys.verify(&token, TokenKind::Access, NOW + 899).unwrap();
        assert_eq!(got, claims);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        assert_eq!(header.kid.as_deref(), Some(keys.current.kid.as_str()));
        assert_eq!(keys.current.kid.len(), 16);
    }

    #[test]
    fn wrong_kind_refused() {
        let keys = JwtKeys::generate();
        let (access, _) = keys.issue(TokenKind::Access, 1, "s", 60, NOW).unwrap();
        let (mfa, _) = keys.issue(TokenKind::Mfa, 1, "", 60, NOW).unwrap();
        assert!(invalid(keys.verify(&access, TokenKind::Mfa, NOW)));
        assert!(invalid(keys.verify(&mfa, TokenKind::Access, NOW)));
        assert!(keys.verify(&mfa, TokenKind::Mfa, NOW).is_ok());
    }

    #[test]
    fn expired_refused() {
        let keys = JwtKeys::generate();
        let (token, _) = keys.issue(TokenKind::Access, 1, "s", 60, NOW).unwrap();
        assert!(invalid(keys.verify(&token, TokenKind::Access, NOW + 60)));
        assert!(invalid(keys.verify(&token, TokenKind::Access, NOW + 6000)));
    }

    #[test]
    fn foreign_and_forged_refused() {
        let keys = JwtKeys::generate();
        let other = JwtKeys::generate();
        let (token, claims) = other.issue(TokenKind::Access, 1, "s", 60, NOW).unwrap();
        assert!(invalid(keys.verify(&token, TokenKind::Access, NOW)));

        // Same kid, other secret: signature check fails.
        let header = Header {
            kid: Some(keys.current.kid.clone()),
            ..Header::new(Algorithm::HS256)
        };
        let forged = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(&other.current.secret),
        )
        .unwrap();
        assert!(invalid(keys.verify(&forged, TokenKind::Access, NOW)));

        // Unknown kid, and no kid at all.
        for kid in [Some("0123456789abcdef".to_owned()), None] {
            let header = Header {
                kid,
                ..Header::new(Algorithm::HS256)
            };
            let t = jsonwebtoken::encode(
                &header,
                &claims,
                &EncodingKey::from_secret(&keys.current.secret),
            )
            .unwrap();
            assert!(invalid(keys.verify(&t, TokenKind::Access, NOW)));
        }

        // Tampered payload.
        let (good, _) = keys.issue(TokenKind::Access, 1, "s", 60, NOW).unwrap();
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Claims { sub: 2, ..claims }).unwrap());
        parts[1] = &evil;
        assert!(invalid(keys.verify(
            &parts.join("."),
            TokenKind::Access,
            NOW
        )));

        for garbage in ["", "a.b.c", "..", "not a token"] {
            assert!(invalid(keys.verify(garbage, TokenKind::Access, NOW)));
        }
    }

    #[test]
    fn alg_none_refused() {
        let keys = JwtKeys::generate();
        let (_, claims) = keys.issue(TokenKind::Access, 1, "s", 60, NOW).unwrap();
        let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": keys.current.kid});
        let token = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
        );
        assert!(invalid(keys.verify(&token, TokenKind::Access, NOW)));
    }

    #[test]
    fn other_alg_refused() {
        let keys = JwtKeys::generate();
        let (_, claims) = keys.issue(TokenKind::Access, 1, "s", 60, NOW).unwrap();
        let header = Header {
            kid: Some(keys.current.kid.clone()),
            ..Header::new(Algorithm::HS512)
        };
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(&keys.current.secret),
        )
        .unwrap();
        assert!(invalid(keys.verify(&token, TokenKind::Access, NOW)));
    }

    #[test]
    fn rotation() {
        let mut keys = JwtKeys::generate();
        let (t0, _) = keys.issue(TokenKind::Access, 1, "s", 60, NOW).unwrap();
        keys.rotate(1);
        let (t1, _) = keys.issue(TokenKind::Access, 1, "s", 60, NOW).unwrap();
        assert_ne!(
            jsonwebtoken::decode_header(&t0).unwrap().kid,
            jsonwebtoken::decode_header(&t1).unwrap().kid
        );
        assert!(keys.verify(&t0, TokenKind::Access, NOW).is_ok());
        assert!(keys.verify(&t1, TokenKind::Access, NOW).is_ok());
        keys.rotate(1);
        assert!(invalid(keys.verify(&t0, TokenKind::Access, NOW)));
        assert!(keys.verify(&t1, TokenKind::Access, NOW).is_ok());
        keys.rotate(0);
        assert!(invalid(keys.verify(&t1, TokenKind::Access, NOW)));
        assert!(keys.older.is_empty());
    }

    #[test]
    fn save_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.key");
        let mut keys = JwtKeys::generate();
        keys.rotate(3);
        let (token, _) = keys.issue(TokenKind::Mfa, 3, "", 60, NOW).unwrap();
        keys.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = JwtKeys::load(&path).unwrap();
        assert_eq!(format!("{loaded:?}"), format!("{keys:?}"));
        assert!(loaded.verify(&token, TokenKind::Mfa, NOW).is_ok());
        assert_eq!(loaded.older.len(), 1);
        assert_eq!(loaded.current.created_at, keys.current.created_at);
        let debug = format!("{loaded:?}");
        assert!(
            !debug.contains(&hex::encode(&keys.current.secret)),
            "{debug}"
        );
    }

    #[test]
    fn rotation_keeps_keys_while_their_tokens_can_live() {
        let mut keys = JwtKeys::generate();
        let now = keys.current.created_at;
        let (old_token, _) = keys.issue(TokenKind::Access, 1, "s", 900, now).unwrap();
        keys.rotate_at(now, 960);
        assert_eq!(keys.older.len(), 1, "the previous key keeps verifying");
        keys.verify(&old_token, TokenKind::Access, now).unwrap();
        let (newer, _) = keys.issue(TokenKind::Access, 1, "s", 900, now).unwrap();
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid;
        assert_ne!(kid(&newer), kid(&old_token));
        // Rotated again at once: both older keys still have live tokens.
        keys.rotate_at(now, 960);
        assert_eq!(keys.older.len(), 2);
        keys.verify(&old_token, TokenKind::Access, now).unwrap();
        // Long after: only the previous key stays (its successor is new).
        keys.rotate_at(now + 10_000, 960);
        assert_eq!(keys.older.len(), 1);
    }

    #[test]
    fn load_refuses_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.key");
        assert!(matches!(JwtKeys::load(&path), Err(JwtError::Io(_))));
        let short = format!(
            r#"{{"keys":[{{"kid":"a","secret":"{}","created_at":0}}]}}"#,
            "ab".repeat(31)
        );
        let long = "ab".repeat(32);
        for (body, needle) in [
            ("not json".to_owned(), "not a JWT key file"),
            (r#"{"keys":[]}"#.to_owned(), "no keys"),
            (short, "31 bytes"),
            (
                format!(r#"{{"keys":[{{"kid":"a","secret":"zz{long}","created_at":0}}]}}"#),
                "not hex",
            ),
            (
                format!(
                    r#"{{"keys":[{{"kid":"a","secret":"{long}","created_at":0}},{{"kid":"a","secret":"{long}","created_at":0}}]}}"#
                ),
                "repeated",
            ),
        ] {
            std::fs::write(&path, body).unwrap();
            match JwtKeys::load(&path) {
                Err(JwtError::Format(msg)) => assert!(msg.contains(needle), "{msg}"),
                other => panic!("{needle}: {other:?}"),
            }
        }
    }
}
