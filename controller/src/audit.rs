//! The audit log: append-only and hash-chained. Each entry's hash is SHA-256 over the
//! previous entry's hash and the entry's own fields (length-prefixed, so no two different
//! entries encode alike). [`ChainVerifier`] finds the first edited, inserted or deleted
//! entry, fed one entry at a time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hash of the (absent) entry before the first one.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry as stored (and as the API serves it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::FromRow)]
#[schema(as = AuditEntry)]
pub struct Entry {
    pub seq: i64,
    /// Unix ms.
    pub at: i64,
    /// Who: `user:<name>`, `cli:<os user>`, …
    pub actor: String,
    /// Client address, or `local` for the CLI.
    pub source: String,
    pub action: String,
    pub target: String,
    /// `ok`, `denied`, `refused: <status>` or `error: <status>`; `refused` for the counted
    /// refusals of enrollment (one entry per source and interval, counts in `detail`).
    pub outcome: String,
    pub detail: String,
    /// Hash of the previous entry (hex).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this entry's fields (hex).
    pub hash: String,
}

/// What an event to record says (the chain fields are filled in when it is appended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub actor: String,
    pub source: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
}

impl Event {
    /// An event from the local command line, attributed to the invoking OS user.
    pub fn cli(action: &str, target: &str, outcome: &str, detail: &str) -> Self {
        Self {
            actor: cli_actor(),
            source: "local".to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

/// The audit actor of the command line: `cli:` and the (sudo-ing) user running it.
pub fn cli_actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid:{}", nix::unistd::getuid()));
    format!("cli:{user}")
}

/// The hash of an entry with these fields after `prev_hash`.
pub fn entry_hash(prev_hash: &str, seq: i64, at: i64, e: &Event) -> String {
    hash_fields(
        prev_hash,
        seq,
        at,
        [
            &e.actor, &e.source, &e.action, &e.target, &e.outcome, &e.detail,
        ],
    )
}

/// The hash over `prev_hash`, `seq`, `at` and the text fields (actor, source, action,
/// target, outcome, detail), each length-prefixed.
fn hash_fields(prev_hash: &str, seq: i64, at: i64, text: [&str; 6]) -> String {
    let mut h = Sha256::new();
    let [actor, source, action, target, outcome, detail] = text;
    for field in [
        prev_hash.as_bytes(),
        &seq.to_be_bytes(),
        &at.to_be_bytes(),
        actor.as_bytes(),
        source.as_bytes(),
        action.as_bytes(),
        target.as_bytes(),
        outcome.as_bytes(),
        detail.as_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    pifleet_shared::token::to_hex(&h.finalize())
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    #[error("entry {expected} is missing (found {found} next): deleted or renumbered")]
    Missing { expected: i64, found: i64 },
    #[error(
        "entry {0} does not follow the previous entry's hash: inserted, or an earlier entry was replaced"
    )]
    Unlinked(i64),
    #[error("entry {0} was modified: its hash does not match its contents")]
    Modified(i64),
    #[error(
        "the log ends at entry {last} but entry {head} was recorded: entries were deleted from the end"
    )]
    Truncated { last: i64, head: i64 },
}

/// Checks a chain one entry at a time, so a log of any length is verified in constant
/// memory: [`ChainVerifier::push`] every entry in sequence order, then
/// [`ChainVerifier::finish`] with the recorded head. Entries after the first break are
/// only counted.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev: String,
    expected: i64,
    seen: i64,
    broken: Option<Break>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self {
            prev: GENESIS.to_owned(),
            expected: 1,
            seen: 0,
            broken: None,
        }
    }

    /// Checks the next entry.
    pub fn push(&mut self, e: &Entry) {
        self.seen = self.seen.saturating_add(1);
        if self.broken.is_some() {
            return;
        }
        if let Err(b) = self.check(e) {
            self.broken = Some(b);
            return;
        }
        self.prev.clone_from(&e.hash);
        self.expected += 1;
    }

    fn check(&self, e: &Entry) -> Result<(), Break> {
        if e.seq != self.expected {
            return Err(Break::Missing {
                expected: self.expected,
                found: e.seq,
            });
        }
        if e.prev_hash != self.prev {
            return Err(Break::Unlinked(e.seq));
        }
        let text = [
            &e.actor, &e.source, &e.action, &e.target, &e.outcome, &e.detail,
        ];
        if hash_fields(&e.prev_hash, e.seq, e.at, text.map(String::as_str)) != e.hash {
            return Err(Break::Modified(e.seq));
        }
        Ok(())
    }

    /// Entries pushed so far, intact or not.
    pub fn seen(&self) -> i64 {
        self.seen
    }

    /// The verdict: the number of entries verified, or the first break. `head` is the last
    /// sequence number recorded separately (in `meta`), which catches deletion of the
    /// newest entries.
    pub fn finish(self, head: Option<i64>) -> Result<i64, Break> {
        if let Some(b) = self.broken {
            return Err(b);
        }
        let last = self.expected - 1;
        match head {
            Some(head) if head > last => Err(Break::Truncated { last, head }),
            _ => Ok(last),
        }
    }
}

/// Checks a whole chain in sequence order (see [`ChainVerifier`]). Returns the number of
/// entries verified.
pub fn verify_chain(entries: &[Entry], head: Option<i64>) -> Result<i64, Break> {
    let mut v = ChainVerifier::new();
    for e in entries {
        v.push(e);
    }
    v.finish(head)
}

/// A valid chain of `n` entries by `actor` from `source`, stamped `at_base + seq` (tests).
#[cfg(test)]
pub(crate) fn test_chain(n: i64, actor: &str, source: &str, at_base: i64) -> Vec<Entry> {
    let mut prev = GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let ev = Event {
                actor: actor.into(),
                source: source.into(),
                action: "device.revoke".into(),
                target: format!("pi-{seq}"),
                outcome: "ok".into(),
                detail: String::new(),
            };
            let hash = entry_hash(&prev, seq, at_base + seq, &ev);
            let e = Entry {
                seq,
                at: at_base + seq,
                actor: ev.actor,
                source: ev.source,
                action: ev.action,
                target: ev.target,
                outcome: ev.outcome,
                detail: ev.detail,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            };
            prev = hash;
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<Entry> {
        test_chain(n, "cli:root", "local", 1000)
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5), Some(5)), Ok(5));
        assert_eq!(verify_chain(&[], None), Ok(0));
    }

    #[test]
    fn tampering_is_found_where_it_happened() {
        let mut edited = chain(5);
        edited[2].target = "pi-x".into();
        assert_eq!(verify_chain(&edited, Some(5)), Err(Break::Modified(3)));

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(
            verify_chain(&deleted, Some(5)),
            Err(Break::Missing {
                expected: 2,
                found: 3
            })
        );

        // An entry inserted with a plausible seq and a self-consistent hash still does not
        // link to its predecessor.
        let mut inserted = chain(5);
        let mut forged = inserted[3].clone();
        forged.actor = "intruder".into();
        forged.prev_hash = GENESIS.into();
        inserted[3] = forged;
        assert_eq!(verify_chain(&inserted, Some(5)), Err(Break::Unlinked(4)));

        let truncated = chain(3);
        assert_eq!(
            verify_chain(&truncated, Some(5)),
            Err(Break::Truncated { last: 3, head: 5 })
        );
    }

    #[test]
    fn entries_after_a_break_are_counted_not_checked() {
        let mut c = chain(6);
        c[1].detail = "changed".into();
        c[4].detail = "changed too".into();
        let mut v = ChainVerifier::new();
        for e in &c {
            v.push(e);
        }
        assert_eq!(v.seen(), 6);
        assert_eq!(v.finish(Some(6)), Err(Break::Modified(2)));
    }

    #[test]
    fn fields_are_not_ambiguous() {
        let a = Event {
            actor: "ab".into(),
            source: "c".into(),
            action: String::new(),
            target: String::new(),
            outcome: String::new(),
            detail: String::new(),
        };
        let b = Event {
            actor: "a".into(),
            source: "bc".into(),
            ..a.clone()
        };
        assert_ne!(entry_hash(GENESIS, 1, 1, &a), entry_hash(GENESIS, 1, 1, &b));
    }
}
