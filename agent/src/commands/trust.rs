//! Command key announcements (`TrustCommandKeys`): the chain of keys the controller rotated
//! through, each signed by the one before. The keys it proves from a key this device
//! trusts may sign the announcement itself (a device offline through several rotations
//! no longer trusts any key the controller still holds); once accepted, the last `keep`
//! of them replace the trusted keys, durably (temp file, fsync, rename) in
//! `tls.command_key`, before the next command is checked.

use std::sync::Arc;

use pifleet_shared::command::{Action, Envelope, Outcome, SignedCommand};
use pifleet_shared::signing::{TrustedKey, verify_chain};

use super::{Ctx, answer};

/// The keys a command may be signed by: those trusted, and, for an announcement whose
/// chain verifies from one of them, the chain's keys. Only the body's action is read
/// here; the whole command is verified against these keys next.
pub(super) fn keys_for(ctx: &Ctx, cmd: &SignedCommand) -> Vec<TrustedKey> {
    let mut keys = ctx.trusted();
    if let Ok(env) = postcard::from_bytes::<Envelope>(&cmd.body)
        && let Action::TrustCommandKeys {
            keys: chain,
            signatures,
            ..
        } = &env.action
        && let Ok(chain) = verify_chain(chain, signatures, &keys)
    {
        for k in chain {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys
}

/// Trusts the announced keys and sends the final receipt.
pub(super) async fn run(ctx: &Arc<Ctx>, env: &Envelope) {
    let Action::TrustCommandKeys {
        keys,
        signatures,
        keep,
    } = &env.action
    else {
        return;
    };
    let outcome = match verify_chain(keys, signatures, &ctx.trusted()) {
        Ok(chain) => {
            let kept = chain[chain.len().saturating_sub(usize::from(*keep))..].to_vec();
            let pem: String = kept.iter().map(TrustedKey::to_pem).collect();
            let path = ctx.key_file.clone();
            match tokio::task::spawn_blocking(move || {
                pifleet_io::write_private(&path, pem.as_bytes())
            })
            .await
            {
                Ok(Ok(())) => {
                    let ids: Vec<String> = kept.iter().map(|k| k.id.to_string()).collect();
                    tracing::info!(keys = ?ids, "command keys replaced by announcement");
                    *ctx.keys.write().unwrap_or_else(|p| p.into_inner()) = kept;
                    Ok(format!("trusting command keys {}", ids.join(", ")))
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
        // Unreachable after the command verified against the chain's keys; reported.
        Err(e) => Err(e.to_string()),
    };
    match outcome {
        Ok(text) => {
            ctx.finish(env.id, Outcome::Succeeded, Some(&answer(text.as_bytes())));
        }
        Err(why) => {
            ctx.finish(env.id, Outcome::Failed(why), None);
        }
    }
}

impl Ctx {
    /// The command keys trusted now.
    pub(super) fn trusted(&self) -> Vec<TrustedKey> {
        // A poisoned lock still holds a whole vector (it is only ever replaced).
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
