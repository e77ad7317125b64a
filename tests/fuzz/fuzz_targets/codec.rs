//! The wire codec: whatever bytes arrive for a message kind, decoding never panics, and
//! whatever decodes re-encodes canonically: no longer than its input, and a fixed point
//! (decode → encode → decode → encode gives the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pifleet_shared::codec;
use pifleet_shared::command::{Envelope, Receipt, SignedCommand, SignedReceipt};
use pifleet_shared::proto::v1;
use pifleet_shared::topic::Kind;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn roundtrip<T: Serialize + DeserializeOwned>(kind: Kind, bytes: &[u8]) {
    let Ok(msg) = codec::decode::<T>(kind, bytes) else {
        return;
    };
    let encoded = codec::encode(kind, &msg).expect("a decoded message re-encodes");
    assert!(
        encoded.len() <= bytes.len(),
        "{kind:?}: {} bytes re-encode to {}",
        bytes.len(),
        encoded.len()
    );
    let again: T = codec::decode(kind, &encoded).expect("a re-encoded message decodes");
    let twice = codec::encode(kind, &again).expect("a decoded message re-encodes");
    assert_eq!(twice, encoded, "{kind:?}: encoding is not a fixed point");
}

/// The signed bodies inside commands and receipts: bare postcard, no version byte.
fn body_roundtrip<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    let Ok((msg, rest)) = postcard::take_from_bytes::<T>(bytes) else {
        return;
    };
    let encoded = postcard::to_allocvec(&msg).expect("a decoded body re-encodes");
    assert!(encoded.len() <= bytes.len() - rest.len());
    let again: T = postcard::from_bytes(&encoded).expect("a re-encoded body decodes");
    assert_eq!(postcard::to_allocvec(&again).expect("re-encodes"), encoded);
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 11 {
        0 => roundtrip::<v1::Hello>(Kind::Hello, bytes),
        1 => roundtrip::<v1::Telemetry>(Kind::Telemetry, bytes),
        2 => roundtrip::<SignedReceipt>(Kind::Result, bytes),
        3 => roundtrip::<v1::Event>(Kind::Event, bytes),
        4 => roundtrip::<v1::Status>(Kind::Status, bytes),
        5 => roundtrip::<SignedCommand>(Kind::Cmd, bytes),
        6 => roundtrip::<v1::Ack>(Kind::Ack, bytes),
        7 => roundtrip::<v1::RenewRequest>(Kind::Csr, bytes),
        8 => roundtrip::<v1::RenewAnswer>(Kind::Cert, bytes),
        9 => body_roundtrip::<Envelope>(bytes),
        _ => body_roundtrip::<Receipt>(bytes),
    }
});
