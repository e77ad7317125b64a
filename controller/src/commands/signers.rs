//! The command keys the dispatcher signs with. Normally one; during a rotation's overlap
//! also the keys it superseded, so a device that has not confirmed the new key yet still
//! gets commands signed by a key it trusts. Which key a device trusts comes from
//! `command_key_acks`; a device with none recorded trusts the first key of the history
//! (it enrolled before any rotation).

use pifleet_shared::command::KeyId;
use pifleet_shared::signing::CommandSigner;

/// The newest key, and the superseded ones still in their overlap.
#[derive(Debug)]
pub struct Signers {
    pub newest: CommandSigner,
    /// Newest first, each with the end of its overlap (Unix ms).
    pub previous: Vec<(CommandSigner, i64)>,
    /// The first key of the history.
    pub first: KeyId,
}

impl Signers {
    /// One key and no history.
    pub fn single(signer: CommandSigner) -> Self {
        Self {
            first: signer.id(),
            newest: signer,
            previous: Vec::new(),
        }
    }

    /// The ids of every key held, newest first.
    pub fn ids(&self) -> Vec<KeyId> {
        std::iter::once(self.newest.id())
            .chain(self.previous.iter().map(|(s, _)| s.id()))
            .collect()
    }

    /// The superseded keys still signing at `now`, newest first.
    fn live(&self, now: i64) -> impl Iterator<Item = &CommandSigner> {
        self.previous
            .iter()
            .filter(move |(_, until)| *until > now)
            .map(|(s, _)| s)
    }

    /// Whether a superseded key still signs at `now`.
    pub fn overlapping(&self, now: i64) -> bool {
        self.live(now).next().is_some()
    }

    /// The newest key a device trusts that may still sign: `acked` are the ids it
    /// confirmed (none: it trusts the first key only). The newest key when none fits: the
    /// device then learns it from its announcement.
    pub fn for_device(&self, acked: &[String], now: i64) -> &CommandSigner {
        let trusts = |id: KeyId| {
            if acked.is_empty() {
                id == self.first
            } else {
                acked.iter().any(|a| *a == id.to_string())
            }
        };
        if trusts(self.newest.id()) {
            return &self.newest;
        }
        self.live(now)
            .find(|s| trusts(s.id()))
            .unwrap_or(&self.newest)
    }

    /// The key `id` if it may still sign at `now`.
    pub fn by_id(&self, id: KeyId, now: i64) -> Option<&CommandSigner> {
        std::iter::once(&self.newest)
            .chain(self.live(now))
            .find(|s| s.id() == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> CommandSigner {
        CommandSigner::from_seed(&[seed; 32]).unwrap()
    }

    #[test]
    fn each_device_gets_the_newest_key_it_trusts() {
        let s = Signers {
            newest: key(2),
            previous: vec![(key(1), 1_000), (key(0), 500)],
            first: key(0).id(),
        };
        let id = |n: u8| key(n).id().to_string();
        let cases: [(&str, Vec<String>, i64, u8); 7] = [
            ("confirmed the newest", vec![id(2)], 0, 2),
            ("confirmed the middle one", vec![id(1)], 0, 1),
            ("confirmed two", vec![id(0), id(1)], 0, 1),
            ("nothing recorded: the first key", vec![], 0, 0),
            ("the first key's overlap is over", vec![], 600, 2),
            ("every overlap is over", vec![id(1)], 1_000, 2),
            ("a key not held", vec![key(9).id().to_string()], 0, 2),
        ];
        for (what, acked, now, want) in cases {
            assert_eq!(s.for_device(&acked, now).id(), key(want).id(), "{what}");
        }
        assert!(s.overlapping(999));
        assert!(!s.overlapping(1_000));
        assert!(s.by_id(key(0).id(), 499).is_some());
        assert!(s.by_id(key(0).id(), 500).is_none());
        assert_eq!(s.ids(), [key(2).id(), key(1).id(), key(0).id()]);
    }
}
