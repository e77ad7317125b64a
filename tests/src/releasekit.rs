//! Releases for the end-to-end tests: what a test deploys, with a health gate short enough
//! that a deploy settles in about a second, the archive it holds, and the agent's
//! `[apps.demo]` allowlist. Like the tests, these helpers assert and panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use pifleet_controller::releases::NewRelease;
use pifleet_shared::release::HealthSpec;

use crate::harness::FakeBin;

/// A release of `app` at `version` for `arches` (empty: any), started within 10 s, healthy
/// after a one-second soak, no probe or hooks.
pub fn quick_release(app: &str, version: String, arches: Vec<String>) -> NewRelease {
    NewRelease {
        app: app.into(),
        version,
        arches,
        health: HealthSpec {
            start_timeout_s: 10,
            soak_s: 1,
            probe: None,
            probe_passes: 1,
            probe_interval_s: 1,
        },
        hooks: vec![],
        created_by: "test".into(),
    }
}

/// The agent's `[commands]` (the fakes' directory as its PATH) and `[apps.demo]` (unit
/// `demo.service`, run as the current user, installed under `app_dir`).
pub fn demo_app_toml(fake: &FakeBin, app_dir: &Path) -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    format!(
        "[commands]\npath = \"{}\"\n\n[apps.demo]\nunit = \"demo.service\"\nuser = \"{user}\"\n\
         dir = \"{}\"\nreserve_bytes = 1024\n",
        fake.dir.display(),
        app_dir.display()
    )
}

/// A gzip-compressed tar holding `index.html` (`text`), `data.bin` (`data` pseudo-random
/// bytes, which gzip cannot shrink) and `bin/`.
pub fn write_site(path: &Path, text: &str, data: usize) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    tar.append_data(&mut dir, "bin", std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(text.len() as u64);
    tar.append_data(&mut h, "index.html", text.as_bytes())
        .unwrap();
    let mut x = 0x2545_f491_u32;
    let noise: Vec<u8> = (0..data)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(noise.len() as u64);
    tar.append_data(&mut h, "data.bin", noise.as_slice())
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}
