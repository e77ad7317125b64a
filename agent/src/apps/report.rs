//! What the device tells the controller about its apps ([`v1::AppState`]): each allowlisted
//! app, its unit, the live release and the releases kept for a rollback, read from the app
//! directory (`current -> releases/<release>-<digest8>`).

use pifleet_shared::proto::v1;

use super::layout::{Layout, release_of};
use super::{Deployer, Systemd};

impl<S: Systemd> Deployer<S> {
    /// Every allowlisted app as it is on disk now. An unreadable directory reports no
    /// release rather than failing the report.
    pub fn app_states(&self) -> Vec<v1::AppState> {
        self.settings
            .apps
            .iter()
            .map(|(app, cfg)| {
                let layout = Layout::new(&cfg.dir(app));
                let current_dir = layout.current().ok().flatten();
                let mut kept: Vec<u64> = Vec::new();
                for (n, _) in layout.kept() {
                    // Ascending without a sort routine of its own: the list is three long.
                    kept.insert(kept.partition_point(|k| *k < n), n);
                }
                v1::AppState {
                    app: app.clone(),
                    unit: cfg.unit.clone(),
                    current: current_dir.as_deref().and_then(release_of),
                    current_dir,
                    kept,
                }
            })
            .collect()
    }
}
