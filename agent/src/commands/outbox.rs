//! Receipts on their way out: signed with the device key, trimmed to the `result` size limit,
//! handed to the MQTT client, and — for final receipts while the link is down — kept in a
//! bounded queue until it is back. Progress receipts (accepted, running) are not kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use pifleet_shared::codec::{self, EncodeError};
use pifleet_shared::command::{CommandId, Receipt};
use pifleet_shared::signing::{DeviceSigner, KeyError};
use pifleet_shared::topic::Kind;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::oneshot;

use super::journal::Journal;

/// Most receipts kept while the link is down.
pub const MAX_PENDING: usize = 100;

/// Where sealed receipts go: the MQTT client in the agent, a recorder in tests.
pub trait Sink: Send + Sync + 'static {
    /// Hands over one `result` payload; false if it cannot be taken now.
    fn try_send(&self, payload: Vec<u8>) -> bool;
}

/// Publishes receipts on `fleet/<id>/up/result` with QoS 1.
#[derive(Debug)]
pub struct MqttSink {
    pub client: AsyncClient,
    pub topic: String,
}

impl Sink for MqttSink {
    fn try_send(&self, payload: Vec<u8>) -> bool {
        match self
            .client
            .try_publish(&self.topic, QoS::AtLeastOnce, false, payload)
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "receipt not handed to MQTT yet");
                false
            }
        }
    }
}

/// How a receipt is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted / Running: sent if possible, otherwise dropped.
    Progress,
    /// A final receipt for a command that is not in the journal (rejections).
    Final,
    /// The final receipt of a journaled command: once sent, the journal records it finished.
    Journaled,
}

/// Why a receipt could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("signing: {0}")]
    Sign(#[from] KeyError),
    #[error("encoding: {0}")]
    Encode(#[from] EncodeError),
    #[error("receipt does not fit the result size limit")]
    TooLarge,
}

struct Queued {
    id: CommandId,
    payload: Vec<u8>,
    delivery: Delivery,
    sent: Option<oneshot::Sender<()>>,
}

struct State {
    connected: bool,
    queue: VecDeque<Queued>,
}

/// The receipt outbox shared by the handler and the command tasks.
pub struct Outbox {
    sink: Arc<dyn Sink>,
    /// Replaced when the device certificate (and so the device key) is renewed.
    signer: Mutex<DeviceSigner>,
    journal: Arc<tokio::sync::Mutex<Journal>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Outbox")
            .field("connected", &st.connected)
            .field("pending", &st.queue.len())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    pub fn new(
        sink: Arc<dyn Sink>,
        signer: DeviceSigner,
        journal: Arc<tokio::sync::Mutex<Journal>>,
    ) -> Self {
        Self {
            sink,
            signer: Mutex::new(signer),
            journal,
            state: Mutex::new(State {
                connected: false,
                queue: VecDeque::new(),
            }),
        }
    }

    /// Signs receipts from now on with the renewed device key.
    pub fn set_signer(&self, signer: DeviceSigner) {
        *self.signer.lock().unwrap_or_else(|p| p.into_inner()) = signer;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue inconsistent (plain pushes
        // and pops), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signs and sends (or queues) a receipt. The returned receiver completes once the
    /// receipt has been handed to the MQTT client (it errors if the receipt is dropped).
    pub fn send(&self, receipt: &Receipt, delivery: Delivery) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        // Poisoning cannot leave a signer half-replaced (a plain assignment).
        let sealed = seal(
            &self.signer.lock().unwrap_or_else(|p| p.into_inner()),
            receipt,
        );
        let payload = match sealed {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(command = %receipt.command, error = %e, "cannot seal receipt");
                return rx;
            }
        };
        let q = Queued {
            id: receipt.command,
            payload,
            delivery,
            sent: Some(tx),
        };
        let mut st = self.lock();
        if st.connected && st.queue.is_empty() {
            if let Err(q) = self.hand_over(q) {
                enqueue(&mut st, q);
            }
        } else {
            enqueue(&mut st, q);
        }
        rx
    }

    /// Records the link state; on connect, sends what waited.
    pub fn set_connected(&self, connected: bool) {
        let mut st = self.lock();
        st.connected = connected;
        if connected {
            self.flush_locked(&mut st);
        } else {
            st.queue.retain(|q| q.delivery != Delivery::Progress);
        }
    }

    /// Retries queued receipts (after the MQTT client's queue was full).
    pub fn flush(&self) {
        let mut st = self.lock();
        self.flush_locked(&mut st);
    }

    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    fn flush_locked(&self, st: &mut State) {
        while st.connected {
            let Some(q) = st.queue.pop_front() else { break };
            if let Err(q) = self.hand_over(q) {
                st.queue.push_front(q);
                break;
            }
        }
    }

    fn hand_over(&self, mut q: Queued) -> Result<(), Queued> {
        if !self.sink.try_send(q.payload.clone()) {
            return Err(q);
        }
        if q.delivery == Delivery::Journaled {
            let (journal, id) = (self.journal.clone(), q.id);
            tokio::spawn(async move {
                let mut j = journal.lock_owned().await;
                let r = tokio::task::spawn_blocking(move || j.mark_finished(id)).await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(command = %id, error = %e, "cannot record finished command")
                    }
                    Err(e) => tracing::error!(command = %id, error = %e, "journal task failed"),
                }
            });
        }
        if let Some(tx) = q.sent.take() {
            let _ = tx.send(());
        }
        Ok(())
    }
}

fn enqueue(st: &mut State, q: Queued) {
    if q.delivery == Delivery::Progress && !st.connected {
        return;
    }
    st.queue.push_back(q);
    if st.queue.len() > MAX_PENDING {
        let victim = st
            .queue
            .iter()
            .position(|q| q.delivery == Delivery::Progress)
            .unwrap_or(0);
        if let Some(q) = st.queue.remove(victim) {
            tracing::warn!(command = %q.id, "receipt queue full: oldest receipt dropped");
        }
    }
}

/// Signs and encodes a receipt, trimming captured output (never its length or hash) until it
/// fits the `result` size limit.
pub fn seal(signer: &DeviceSigner, receipt: &Receipt) -> Result<Vec<u8>, SealError> {
    let mut r = receipt.clone();
    for _ in 0..8 {
        let signed = signer.sign(&r)?;
        match codec::encode(Kind::Result, &signed) {
            Ok(p) => return Ok(p),
            Err(EncodeError::TooLarge { len, limit, .. }) => {
                trim(&mut r, len.saturating_sub(limit) + 64);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(SealError::TooLarge)
}

/// Removes `excess` bytes of captured output, from the larger stream first.
fn trim(r: &mut Receipt, excess: usize) {
    let (big, small) = if r.stdout.data.len() >= r.stderr.data.len() {
        (&mut r.stdout, &mut r.stderr)
    } else {
        (&mut r.stderr, &mut r.stdout)
    };
    let cut = excess.min(big.data.len());
    big.data.truncate(big.data.len() - cut);
    let rest = excess - cut;
    small.data.truncate(small.data.len().saturating_sub(rest));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::exec::output_of;
    use pifleet_shared::command::{Outcome, Output};

    fn signer() -> DeviceSigner {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        DeviceSigner::from_pkcs8_pem(&kp.serialize_pem()).unwrap()
    }

    fn receipt(stdout: Output, stderr: Output) -> Receipt {
        Receipt {
            command: CommandId([1; 16]),
            device: "pi-01".into(),
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            duration_ms: 1,
            stdout,
            stderr,
            at_ms: 1,
        }
    }

    #[test]
    fn oversized_output_is_trimmed_but_keeps_length_and_hash() {
        let s = signer();
        let big = output_of(&[b'x'; 65_536]);
        let err = output_of(&[b'e'; 65_536]);
        let p = seal(&s, &receipt(big.clone(), err.clone())).unwrap();
        assert!(p.len() <= Kind::Result.max_payload());
        let signed: pifleet_shared::command::SignedReceipt =
            codec::decode(Kind::Result, &p).unwrap();
        let r: Receipt = postcard::from_bytes(&signed.body).unwrap();
        assert_eq!((r.stdout.len, r.stderr.len), (65_536, 65_536));
        assert_eq!((r.stdout.sha256, r.stderr.sha256), (big.sha256, err.sha256));
        assert!(r.stdout.data.len() + r.stderr.data.len() > 60_000);
        // Small receipts are untouched.
        let small = receipt(output_of(b"pong"), output_of(b""));
        let p = seal(&s, &small).unwrap();
        let signed: pifleet_shared::command::SignedReceipt =
            codec::decode(Kind::Result, &p).unwrap();
        assert_eq!(
            postcard::from_bytes::<Receipt>(&signed.body).unwrap(),
            small
        );
    }
}
