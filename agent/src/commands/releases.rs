//! The release commands in the handler: a deploy or rollback is prepared (checked in full,
//! its manifest fetched) before it is accepted, so its refusals are rejections; then it
//! runs like any accepted command and its outcome is the final receipt. The work itself is
//! [`crate::deploy`]'s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use pifleet_shared::command::{Action, Envelope, Outcome};
use pifleet_shared::signing::Rejection;

use super::outbox::Delivery;
use super::{Ctx, answer, exec};
use crate::deploy::{Done, NotAccepted, Prepared};

/// A release command's work behind a pointer: the handler's and the command task's own
/// state machines stay small (a few KB less in the agent than inlining them).
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Checks a verified deploy or rollback before acceptance. A refusal is reported as a
/// rejection, a check that could not be made as a failure; either way `None`.
pub(super) async fn prepare(ctx: &Arc<Ctx>, env: &Envelope) -> Option<Prepared> {
    let Some(deploys) = &ctx.deploys else {
        ctx.reject(
            env.id,
            &Rejection::NotAllowed("this agent does not deploy releases".into()),
        );
        return None;
    };
    let preparing: Boxed<'_, _> = Box::pin(deploys.prepare(&env.action));
    match preparing.await {
        Ok(p) => Some(p),
        Err(NotAccepted::Refused(why)) => {
            ctx.reject(env.id, &Rejection::NotAllowed(why));
            None
        }
        Err(NotAccepted::Failed(why)) => {
            tracing::warn!(command = %env.id, action = env.action.kind(), error = %why, "release command failed before acceptance");
            let outcome = Outcome::Failed(why);
            ctx.outbox
                .send(&ctx.receipt(env.id, outcome, None), Delivery::Final);
            None
        }
    }
}

/// Runs an accepted release command and sends its final receipt: what was done on
/// stdout, and for a release that failed, the unit's journal tail on stderr.
pub(super) async fn run(ctx: &Arc<Ctx>, env: Envelope, prepared: Option<Prepared>) {
    let id = env.id;
    let started = Instant::now();
    let Some(deploys) = ctx.deploys.clone() else {
        ctx.finish(id, Outcome::Failed("release commands are off".into()), None);
        return;
    };
    let done = match (env.action, prepared) {
        (Action::TrustReleaseKeys { keys }, _) => match deploys.trust(keys).await {
            Ok(text) => Done::Succeeded(text),
            Err(reason) => Done::Failed {
                reason,
                journal: String::new(),
            },
        },
        (_, Some(p)) => {
            let running: Boxed<'_, _> = Box::pin(deploys.run(id, p));
            running.await
        }
        // Unreachable: an accepted deploy or rollback was prepared.
        (_, None) => Done::Failed {
            reason: "the command was not prepared".into(),
            journal: String::new(),
        },
    };
    let mut finished = match done {
        Done::Succeeded(text) => answer(text.as_bytes()),
        Done::Failed { reason, journal } => {
            let mut f = answer(b"");
            f.outcome = Outcome::Failed(reason);
            f.stderr = exec::output_of(journal.as_bytes());
            f
        }
    };
    finished.duration = started.elapsed();
    tracing::info!(command = %id, outcome = finished.outcome.as_str(), "release command finished");
    ctx.finish(id, finished.outcome.clone(), Some(&finished));
}
