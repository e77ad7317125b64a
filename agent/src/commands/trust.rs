//! Command key announcements (`TrustCommandKeys`): the chain of keys the controller rotated
//! through, each signed by the one before. The keys it proves from a key this device
//! trusts may sign the announcement itself (a device offline through several rotations
//! no longer trusts any key the controller still holds); once accepted, the last `keep`
//! of them replace the trusted keys, durably (temp file, fsync, rename) in
//! `tls.command_key`, before the next command is checked.

use std::path::PathBuf;

use pifleet_io::FileError;
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

/// For an announcement: the key file and what it is to hold, the last `keep` keys its
/// chain proves (written with the journal entry, [`super::handle`]).
pub(super) fn to_store(ctx: &Ctx, env: &Envelope) -> Option<(PathBuf, String)> {
    let pem: String = kept(ctx, env)?.iter().map(TrustedKey::to_pem).collect();
    Some((ctx.key_file.clone(), pem))
}

fn kept(ctx: &Ctx, env: &Envelope) -> Option<Vec<TrustedKey>> {
    let Action::TrustCommandKeys {
        keys,
        signatures,
        keep,
    } = &env.action
    else {
        return None;
    };
    // Verified before acceptance; a failure here leaves nothing to store.
    let chain = verify_chain(keys, signatures, &ctx.trusted()).ok()?;
    Some(chain[chain.len().saturating_sub(usize::from(*keep))..].to_vec())
}

/// Trusts the announced keys once `stored` says they are on disk, and sends the final
/// receipt.
pub(super) fn finish(ctx: &Ctx, env: &Envelope, stored: Result<(), FileError>) {
    let outcome = match (stored, kept(ctx, env)) {
        (Ok(()), Some(kept)) => {
            let ids: Vec<String> = kept.iter().map(|k| k.id.to_string()).collect();
            tracing::info!(keys = ?ids, "command keys replaced by announcement");
            *ctx.keys.write().unwrap_or_else(|p| p.into_inner()) = kept;
            let text = format!("trusting command keys {}", ids.join(", "));
            ctx.finish(env.id, Outcome::Succeeded, Some(&answer(text.as_bytes())));
            return;
        }
        (Err(e), _) => e.to_string(),
        (Ok(()), None) => "the announced chain does not verify".to_owned(),
    };
    ctx.finish(env.id, Outcome::Failed(outcome), None);
}

impl Ctx {
    /// The command keys trusted now.
    pub(super) fn trusted(&self) -> Vec<TrustedKey> {
        // A poisoned lock still holds a whole vector (it is only ever replaced).
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
