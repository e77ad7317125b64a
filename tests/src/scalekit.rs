//! A scale-out cluster for end-to-end tests and benchmarks: one PostgreSQL fleet database,
//! Debian's Mosquitto configured from the first controller's data dir, and controllers
//! `ctl-1`… in external-broker mode on that database; and the waits the tests share.

// Test support only: a failure here is a failed test, said where it happens.
#![allow(clippy::expect_used, clippy::panic)]

use std::time::Duration;

use anyhow::Result;
use sqlx::postgres::PgPool;

use crate::broker::{Broker, CONTROLLERS};
use crate::harness::{Controller, merge_config, wait_for};
use crate::pgkit::{PgFleet, counts};

/// PostgreSQL, Mosquitto and the controllers (`ctls[0]` is `ctl-1`, whose data dir the
/// others copy).
#[derive(Debug)]
pub struct Cluster {
    pub ctls: Vec<Controller>,
    pub broker: Broker,
    pub db: PgFleet,
}

impl Cluster {
    /// Starts `n` controllers (at most [`CONTROLLERS`]' count) with `overrides` merged into
    /// the first one's configuration, devices' presence timing out after `presence_s`.
    /// The first controller is initialised on the database, the broker is configured from
    /// its data dir, then it switches to the broker and the others start from copies.
    pub async fn start(n: usize, overrides: &str, presence_s: u64) -> Result<Self> {
        anyhow::ensure!(
            (1..=CONTROLLERS.len()).contains(&n),
            "1 to {} controllers",
            CONTROLLERS.len()
        );
        let db = PgFleet::start().await;
        let mut first = Controller::start_init(&db.init_args(), overrides).await?;
        let broker = Broker::start(&first).await?;
        first.stop();
        merge_config(
            &first.data.join("config.toml"),
            &broker.controller_config(CONTROLLERS[0], presence_s),
        )?;
        first.serve().await?;
        let mut ctls = vec![first];
        for name in &CONTROLLERS[1..n] {
            let replica = ctls[0]
                .replica(&broker.controller_config(name, presence_s))
                .await?;
            ctls.push(replica);
        }
        Ok(Self { ctls, broker, db })
    }

    pub fn pool(&self) -> PgPool {
        self.db.pool.clone()
    }

    /// Every controller's log and the broker's, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (name, c) in CONTROLLERS.iter().zip(&self.ctls) {
            out.push_str(&format!("{name}:\n{}\n", c.log()));
        }
        out + "broker:\n" + &self.broker.log()
    }
}

/// Waits (a minute at most) until `devices` devices have samples and each one's highest
/// seq grew by `by` over what `before` said. Panics with `logs()` otherwise.
pub async fn wait_rows(
    pool: &PgPool,
    devices: usize,
    before: &[(String, i64, i64, i64)],
    by: i64,
    why: &str,
    logs: impl Fn() -> String,
) {
    wait_for(Duration::from_secs(60), why, || {
        let pool = pool.clone();
        async move {
            let c = counts(&pool).await;
            (c.len() == devices
                && c.iter().all(|(d, _, _, max)| {
                    let then = before.iter().find(|b| &b.0 == d).map_or(0, |b| b.3);
                    *max >= then + by
                }))
            .then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
}

/// What `pifleet-controller ARGS` printed (on `ctl`'s data dir, unless `--data-dir` is
/// among `args`). Panics if it failed.
pub fn stdout(ctl: &Controller, args: &[&str]) -> String {
    let out = if args.contains(&"--data-dir") {
        std::process::Command::new(crate::harness::bin("pifleet-controller").expect("the binary"))
            .args(args)
            .output()
            .expect("running pifleet-controller")
    } else {
        ctl.cli(args).expect("running pifleet-controller")
    };
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
