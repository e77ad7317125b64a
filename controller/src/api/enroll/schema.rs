//! OpenAPI schemas of the enrollment bodies. The bodies themselves are
//! [`pifleet_shared::enroll::v1`], used by the agent and the handler alike; `shared` has no
//! utoipa, so these mirrors document them. The `From` impls name every field (a field added
//! to a shared body does not compile until it is mirrored), and the tests check that each
//! mirror serializes exactly like its body and that the document lists the same properties.

use pifleet_shared::enroll::v1::{EnrollRequest, EnrollResponse};
use serde::Serialize;

/// Enrollment request body.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = EnrollRequest)]
pub(crate) struct EnrollRequestSchema {
    /// The enrollment token (`pft1.<secret>.<CA fingerprint>`).
    token: String,
    /// PEM-encoded PKCS#10 certificate signing request.
    csr: String,
    /// The id to take instead of the CSR's when that one is enrolled already (the hostname
    /// with a suffix from the board's serial number).
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback_id: Option<String>,
}

impl From<EnrollRequest> for EnrollRequestSchema {
    fn from(
        EnrollRequest {
            token,
            csr,
            fallback_id,
        }: EnrollRequest,
    ) -> Self {
        Self {
            token,
            csr,
            fallback_id,
        }
    }
}

/// Enrollment response body.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = EnrollResponse)]
pub(crate) struct EnrollResponseSchema {
    /// The device id assigned (the token's name, or the id proposed in the CSR).
    device_id: String,
    /// The device certificate (PEM).
    certificate: String,
    /// The CA certificate (PEM).
    ca: String,
    /// The controller's Ed25519 command-signing public key (PEM, SPKI).
    command_public_key: String,
    /// The port of the MQTT gateway on the host the agent enrolled with.
    mqtt_port: u16,
    /// The host to connect to for MQTT when it is not the enrollment host (an external
    /// broker); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    mqtt_host: Option<String>,
    /// The release keys the device is to trust (Ed25519, PEM, SPKI), one per entry. Older
    /// agents ignore it and learn the keys from a signed announcement.
    release_public_keys: Vec<String>,
}

impl From<EnrollResponse> for EnrollResponseSchema {
    fn from(
        EnrollResponse {
            device_id,
            certificate,
            ca,
            command_public_key,
            mqtt_port,
            mqtt_host,
            release_public_keys,
        }: EnrollResponse,
    ) -> Self {
        Self {
            device_id,
            certificate,
            ca,
            command_public_key,
            mqtt_port,
            mqtt_host,
            release_public_keys,
        }
    }
}

/// The answer while a device waits for an admin to accept it (HTTP 202, with
/// Retry-After): nothing was signed; the device asks again with the same key.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EnrollPending {
    /// Always `pending`.
    pub status: &'static str,
    /// The enrollment request, as admins see it.
    pub request_id: String,
    /// The id the device gets once accepted.
    pub device_id: String,
    /// What to do, for people reading the agent's log.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn request() -> EnrollRequest {
        EnrollRequest {
            token: "pft1.secret.fingerprint".into(),
            csr: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            fallback_id: Some("raspberrypi-3fa1c09e".into()),
        }
    }

    fn response() -> EnrollResponse {
        EnrollResponse {
            device_id: "kiosk-7b".into(),
            certificate: "device PEM".into(),
            ca: "CA PEM".into(),
            command_public_key: "SPKI PEM".into(),
            mqtt_port: 8883,
            mqtt_host: Some("broker.example".into()),
            release_public_keys: vec!["release SPKI PEM".into()],
        }
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn mirrors_serialize_like_the_shared_bodies() {
        let shared = serde_json::to_value(request()).unwrap();
        let mirror = serde_json::to_value(EnrollRequestSchema::from(request())).unwrap();
        assert_eq!(shared, mirror);
        let shared = serde_json::to_value(response()).unwrap();
        let mirror = serde_json::to_value(EnrollResponseSchema::from(response())).unwrap();
        assert_eq!(shared, mirror);
        // And what the mirror documents, the shared body reads back.
        let back: EnrollRequest = serde_json::from_value(
            serde_json::to_value(EnrollRequestSchema::from(request())).unwrap(),
        )
        .unwrap();
        assert_eq!(back, request());
    }

    /// The served document's schemas list the shared bodies' fields, all required but the
    /// optional ones, and the enroll operation refers to them.
    #[test]
    fn the_document_lists_the_shared_fields() {
        let (_, doc) = crate::api::api_routes();
        let doc = serde_json::to_value(&doc).unwrap();
        for (name, body) in [
            ("EnrollRequest", serde_json::to_value(request()).unwrap()),
            ("EnrollResponse", serde_json::to_value(response()).unwrap()),
        ] {
            let schema = &doc["components"]["schemas"][name];
            assert_eq!(keys(&schema["properties"]), keys(&body), "{name}: {schema}");
            let required: BTreeSet<String> = schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let mut want = keys(&body);
            want.remove("fallback_id");
            want.remove("mqtt_host");
            assert_eq!(required, want, "{name}: {schema}");
        }
        let op = &doc["paths"]["/api/v1/enroll"]["post"];
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/EnrollRequest",
            "{op}"
        );
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/EnrollResponse",
            "{op}"
        );
    }
}
