//! Where a rollout is, where each of its devices is, and the one table of how a device's
//! progress reports move it.

/// Where a rollout is. Only `Running` sends deploy commands; `Completed` and `Aborted`
/// never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutStatus {
    /// Being written; nothing sent.
    Draft,
    /// Waiting for a second person to approve it.
    AwaitingApproval,
    /// Sending batch after batch.
    Running,
    /// Stopped by an operator or by a health rule; in-flight devices still finish.
    Paused,
    /// Every batch passed.
    Completed,
    /// Stopped for good by an operator.
    Aborted,
}

impl RolloutStatus {
    pub const ALL: [RolloutStatus; 6] = [
        Self::Draft,
        Self::AwaitingApproval,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::AwaitingApproval => "awaiting_approval",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Completed and aborted rollouts never change status again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Aborted)
    }

    /// The status as it reads in a sentence: "the rollout is {phrase}".
    pub fn phrase(self) -> &'static str {
        match self {
            Self::Draft => "a draft",
            Self::AwaitingApproval => "awaiting approval",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
        }
    }
}

/// Why a rollout is paused. Kept with the rollout because a resume after a health pause
/// means something different from a resume after an operator's pause
/// ([`crate::rollouts::resume`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PauseCause {
    /// An operator paused it.
    Operator,
    /// The current batch can no longer reach its success threshold.
    BatchFailed,
    /// Every device of the current batch finished without a result (all unreachable), so
    /// nothing shows the release works.
    NoResults,
    /// The abort rule tripped: too many failures across the rollout.
    AbortRule,
}

impl PauseCause {
    pub const ALL: [PauseCause; 4] = [
        Self::Operator,
        Self::BatchFailed,
        Self::NoResults,
        Self::AbortRule,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::BatchFailed => "batch_failed",
            Self::NoResults => "no_results",
            Self::AbortRule => "abort_rule",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Did the rollout's own health rules pause it (rather than an operator)?
    pub fn is_health(self) -> bool {
        !matches!(self, Self::Operator)
    }
}

/// Where one device is in one rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// In a batch not sent yet (a future batch, or the current one held back by the
    /// download cap).
    Pending,
    /// The deploy command exists; the device has not started downloading.
    Queued,
    /// The device is fetching the release.
    Downloading,
    /// The device is unpacking, switching and running the health gate.
    Installing,
    /// The device passed the health gate and committed the release.
    Healthy,
    /// The device failed the health gate (or crash-looped after committing) and switched
    /// back to its previous release.
    RolledBack,
    /// The device could not apply the release nor return to the previous one.
    FailedUnrecoverable,
    /// The device refused the release or could not install it (a check, the download, the
    /// disk) before switching to it: it runs what it ran before.
    Failed,
    /// Set by the controller: the device started downloading but gave no result before the
    /// install deadline. Counted as a failure: the release reached the device and did not
    /// prove itself healthy in time, and a release that hangs its install must stop the
    /// rollout as surely as one that fails it.
    TimedOut,
    /// Set by the controller: the device never started downloading before the delivery
    /// deadline (typically it was offline). Not a failure: the release never ran there.
    Unreachable,
    /// Set by the caller before the rollout starts: the release does not fit the device
    /// (architecture, app not allowlisted). Outside every batch and count.
    Incompatible,
    /// After an abort with revert: the device was told to return to its previous release.
    Reverting,
    /// The device is back on its previous release.
    Reverted,
    /// The rollout was aborted before the device was sent anything.
    Untouched,
}

impl DeviceState {
    pub const ALL: [DeviceState; 14] = [
        Self::Pending,
        Self::Queued,
        Self::Downloading,
        Self::Installing,
        Self::Healthy,
        Self::RolledBack,
        Self::FailedUnrecoverable,
        Self::Failed,
        Self::TimedOut,
        Self::Unreachable,
        Self::Incompatible,
        Self::Reverting,
        Self::Reverted,
        Self::Untouched,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Queued => "queued",
            Self::Downloading => "downloading",
            Self::Installing => "installing",
            Self::Healthy => "healthy",
            Self::RolledBack => "rolled_back",
            Self::FailedUnrecoverable => "failed_unrecoverable",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Unreachable => "unreachable",
            Self::Incompatible => "incompatible",
            Self::Reverting => "reverting",
            Self::Reverted => "reverted",
            Self::Untouched => "untouched",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The device's outcome in this rollout is settled: no more progress is expected
    /// ([`Self::after_report`] lists the few late corrections a device may still send).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            Self::Pending | Self::Queued | Self::Downloading | Self::Installing | Self::Reverting
        )
    }

    /// Does this outcome count against the release (success threshold, abort rule)?
    /// Unreachable and incompatible devices never ran it, so they do not.
    pub fn counts_as_failure(self) -> bool {
        matches!(
            self,
            Self::RolledBack | Self::FailedUnrecoverable | Self::Failed | Self::TimedOut
        )
    }

    /// A device that ran the release to a verdict: healthy or failed. Success ratios are
    /// taken over these.
    pub fn has_result(self) -> bool {
        self == Self::Healthy || self.counts_as_failure()
    }

    /// Counts against the download cap: sent a deploy command and not yet past the
    /// download (a queued device starts downloading as soon as the command arrives).
    pub fn holds_download_slot(self) -> bool {
        matches!(self, Self::Queued | Self::Downloading)
    }

    /// The state a device's progress report moves it to, or `None` to ignore the report.
    ///
    /// - Progress only moves forward; a report for a device never sent the release
    ///   (pending, incompatible) is stale and ignored.
    /// - A device's own final verdict stands, except that a healthy device may still roll
    ///   back: the agent's guard window after the commit catches crash loops.
    /// - The controller's verdicts yield to the device's word: an `unreachable` or
    ///   `untouched` device that reports progress did get the command (it was on the wire
    ///   before the deadline or the abort), so it is tracked again. A `timed_out` device
    ///   takes only a final result: its install deadline has already passed, so going back
    ///   to `installing` would only time it out again.
    /// - Only a reverting device reports a revert; a revert that failed before changing
    ///   anything leaves the device healthy on the release (the caller stops retrying it).
    pub fn after_report(self, report: DeviceReport) -> Option<DeviceState> {
        use DeviceReport as R;
        let next = match (self, report) {
            (Self::Pending | Self::Incompatible, _) => return None,
            (Self::Reverting, R::Reverted) => Self::Reverted,
            (Self::Reverting, R::FailedUnrecoverable) => Self::FailedUnrecoverable,
            (Self::Reverting, R::Failed) => Self::Healthy,
            (Self::Reverting, _) | (_, R::Reverted) => return None,
            (Self::Healthy, R::RolledBack) => Self::RolledBack,
            (Self::TimedOut, R::Downloading | R::Installing) => return None,
            (
                Self::Healthy
                | Self::RolledBack
                | Self::FailedUnrecoverable
                | Self::Failed
                | Self::Reverted,
                _,
            ) => {
                return None;
            }
            (_, R::Downloading) => Self::Downloading,
            (_, R::Installing) => Self::Installing,
            (_, R::Healthy) => Self::Healthy,
            (_, R::RolledBack) => Self::RolledBack,
            (_, R::FailedUnrecoverable) => Self::FailedUnrecoverable,
            (_, R::Failed) => Self::Failed,
        };
        // Within one delivery, progress only moves forward.
        let in_flight = matches!(self, Self::Queued | Self::Downloading | Self::Installing);
        (!in_flight || next.progress() > self.progress()).then_some(next)
    }

    /// Order of progress within one delivery, for [`Self::after_report`].
    fn progress(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::Queued => 1,
            Self::Downloading => 2,
            Self::Installing => 3,
            _ => 4,
        }
    }
}

/// What a device reports about its deployment (carried by its progress events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceReport {
    Downloading,
    Installing,
    Healthy,
    RolledBack,
    FailedUnrecoverable,
    /// The device is back on its previous release after a revert command.
    Reverted,
    /// The device refused or could not carry out the command before changing anything.
    Failed,
}

impl DeviceReport {
    pub const ALL: [DeviceReport; 7] = [
        Self::Downloading,
        Self::Installing,
        Self::Healthy,
        Self::RolledBack,
        Self::FailedUnrecoverable,
        Self::Reverted,
        Self::Failed,
    ];
}
