//! Enrollment, version 1 (`POST /api/v1/enroll`).

use serde::{Deserialize, Serialize};

/// What the agent sends: its single-use token and a CSR for the key it made itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token (`pft1.<secret>.<CA fingerprint>`), as `pifleet-controller token
    /// create` printed it.
    pub token: String,
    /// PEM-encoded PKCS#10 certificate signing request.
    pub csr: String,
    /// The id to take instead of the one the CSR proposes when that one is enrolled
    /// already: the hostname with a stable suffix from the board's serial number, so Pis
    /// flashed from one image (all called `raspberrypi`) enroll without a `--device-id`.
    /// Absent when the operator chose the id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_id: Option<String>,
}

/// The token is a secret: `Debug` shows its length only.
impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("csr", &self.csr)
            .field("fallback_id", &self.fallback_id)
            .finish()
    }
}

/// What the controller answers: the device's identity and where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device id assigned (the token's name, or the id proposed in the CSR).
    pub device_id: String,
    /// The device certificate (PEM).
    pub certificate: String,
    /// The CA certificate (PEM).
    pub ca: String,
    /// The controller's Ed25519 command-signing public key (PEM, SPKI).
    pub command_public_key: String,
    /// The port of the MQTT gateway on the host the agent enrolled with.
    pub mqtt_port: u16,
    /// The host to connect to for MQTT (a DNS name or IP address), when it is not the one
    /// the agent enrolled with: an external broker of its own. Added after v1 first
    /// shipped: absent means the enrollment host, and older agents ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_host: Option<String>,
    /// The release keys the device is to trust (Ed25519, PEM, SPKI), one per entry.
    /// Added after v1 first shipped: absent in an older controller's answer, so read with a
    /// default, and ignored by older agents, which learn the keys later from a signed
    /// `TrustReleaseKeys` command.
    #[serde(default)]
    pub release_public_keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_refuses_unknown_fields_and_hides_the_token() {
        let req: EnrollRequest =
            serde_json::from_str(r#"{"token":"pft1.secret","csr":"PEM"}"#).unwrap();
        assert_eq!(req.token, "pft1.secret");
        let shown = format!("{req:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<11 bytes>"), "{shown}");
        assert!(serde_json::from_str::<EnrollRequest>(r#"{"token":"t","csr":"c","x":1}"#).is_err());
    }

    #[test]
    fn an_answer_without_release_keys_still_reads() {
        let old = r#"{"device_id":"pi-1","certificate":"C","ca":"A","command_public_key":"K","mqtt_port":8883}"#;
        let resp: EnrollResponse = serde_json::from_str(old).unwrap();
        assert!(resp.release_public_keys.is_empty());
        assert_eq!(resp.mqtt_host, None);
        // Not sent when not set: an older agent's strict reader sees what it knew.
        assert!(
            serde_json::to_value(&resp)
                .unwrap()
                .get("mqtt_host")
                .is_none()
        );
        let new = serde_json::to_value(EnrollResponse {
            release_public_keys: vec!["R".into()],
            ..resp
        })
        .unwrap();
        assert_eq!(new["release_public_keys"], serde_json::json!(["R"]));
    }
}
