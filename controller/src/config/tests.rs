use super::*;

#[test]
fn default_toml_parses_to_defaults() {
    let cfg = Config::parse(DEFAULT_TOML, Path::new("t")).unwrap();
    let def = Config::default();
    assert_eq!(cfg.mqtt.listen, def.mqtt.listen);
    assert_eq!(cfg.https.listen, def.https.listen);
    assert_eq!(cfg.ingest.batch_max_samples, def.ingest.batch_max_samples);
    assert_eq!(cfg.telemetry.retention_days, def.telemetry.retention_days);
    assert_eq!(
        cfg.enrollment.max_token_ttl_s,
        def.enrollment.max_token_ttl_s
    );
    assert_eq!(cfg.auth.argon2_queue, def.auth.argon2_queue);
    assert_eq!(cfg.auth.argon2_concurrency, None);
    assert!(cfg.auth.argon2_concurrency() >= 1);
    let h = (&cfg.https, &def.https);
    assert_eq!(
        (
            h.0.header_timeout_ms,
            h.0.preauth_max,
            h.0.preauth_per_source,
            h.0.max_connections
        ),
        (
            h.1.header_timeout_ms,
            h.1.preauth_max,
            h.1.preauth_per_source,
            h.1.max_connections
        )
    );
    let e = (&cfg.enrollment, &def.enrollment);
    assert_eq!(
        (
            e.0.rate_per_minute,
            e.0.rate_burst,
            e.0.refusal_audit_interval_s
        ),
        (
            e.1.rate_per_minute,
            e.1.rate_burst,
            e.1.refusal_audit_interval_s
        )
    );
    assert_eq!(
        (cfg.auth.rate_per_minute, cfg.auth.rate_burst),
        (def.auth.rate_per_minute, def.auth.rate_burst)
    );
}

#[test]
fn throttling_settings_are_range_checked() {
    let text = "[enrollment]\nrate_per_minute = 0\nrate_burst = 0\nrefusal_audit_interval_s = 0\n";
    let err = Config::parse(text, Path::new("t")).unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    let ok = "[enrollment]\nrate_per_minute = 1\nrate_burst = 1\nrefusal_audit_interval_s = 1\n";
    assert!(Config::parse(ok, Path::new("t")).is_ok());
    let budgets = |max: usize, preauth: usize, per_source: u32| {
        let text = format!(
            "[https]\nmax_connections = {max}\npreauth_max = {preauth}\n\
             preauth_per_source = {per_source}\n"
        );
        match Config::parse(&text, Path::new("t")) {
            Ok(_) => 0,
            Err(ConfigError::Invalid { problems, .. }) => problems.len(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(budgets(4096, 512, 128), 0);
    assert_eq!(budgets(1, 1, 1), 0);
    assert_eq!(budgets(100, 200, 1), 1, "a pre-auth budget over the total");
    assert_eq!(budgets(100, 50, 51), 1, "a share over the pre-auth budget");
    assert_eq!(budgets(100, 50, 0), 1);
    assert_eq!(budgets(0, 0, 0), 3);
    assert!(Config::parse("[https]\nheader_timeout_ms = 50\n", Path::new("t")).is_err());
}

#[test]
fn argon2_bounds_checked() {
    let ok = Config::parse(
        "[auth]\nargon2_concurrency = 1\nargon2_queue = 0\n",
        Path::new("t"),
    )
    .unwrap();
    assert_eq!((ok.auth.argon2_concurrency(), ok.auth.argon2_queue), (1, 0));
    let err = Config::parse(
        "[auth]\nargon2_concurrency = 0\nargon2_queue = 100001\n",
        Path::new("t"),
    )
    .unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn unknown_field_refused() {
    let err = Config::parse("[mqtt]\nlisten_port = 1\n", Path::new("t")).unwrap_err();
    assert!(err.to_string().contains("listen_port"), "{err}");
}

#[test]
fn all_problems_reported_at_once() {
    let text = "[mqtt]\nhandshake_timeout_ms = 1\n[telemetry]\nretention_days = 0\n[ingest]\nbatch_max_samples = 0\n";
    let err = Config::parse(text, Path::new("t")).unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[cfg(not(feature = "otel"))]
#[test]
fn otlp_endpoint_refused_without_the_feature() {
    let text = "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n";
    let err = Config::parse(text, Path::new("t")).unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("--features otel"), "{problems:?}");
}

#[test]
fn otlp_endpoint_checked() {
    for bad in [
        "https://collector:4318/v1/traces",
        "http://u:p@collector:4318/v1/traces",
        "127.0.0.1:4318",
        "not a url",
    ] {
        let text = format!("[tracing]\notlp_endpoint = {bad:?}\n");
        let err = Config::parse(&text, Path::new("t")).unwrap_err();
        assert!(err.to_string().contains("plain http://"), "{bad}: {err}");
    }
    let text = "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n";
    assert_eq!(
        Config::parse(text, Path::new("t")).is_ok(),
        cfg!(feature = "otel")
    );
    assert!(Config::parse("[tracing]\nservice_name = \"\"\n", Path::new("t")).is_err());
}

#[test]
fn backup_section_is_checked() {
    let cfg = Config::parse(DEFAULT_TOML, Path::new("t")).unwrap();
    assert!(cfg.backup.enabled);
    assert_eq!(cfg.backup.keep, 7);
    assert_eq!(cfg.backup.rescan_s, 60);
    assert_eq!(cfg.backup.schedule(), Some(BackupSchedule::Daily(2, 0)));
    assert_eq!(cfg.backup.dir_in(Path::new("/d")), Path::new("/d/backups"));
    let every = Config::parse("[backup]\ninterval_s = 1\n", Path::new("t")).unwrap();
    assert_eq!(
        every.backup.schedule(),
        Some(BackupSchedule::Every(std::time::Duration::from_secs(1)))
    );
    let err = Config::parse(
        "[backup]\nschedule = \"25:00\"\nkeep = 0\ninterval_s = 0\nrecipient = \"nope\"\nrescan_s = 0\n",
        Path::new("t"),
    )
    .unwrap_err()
    .to_string();
    for key in ["schedule", "keep", "interval_s", "recipient", "rescan_s"] {
        assert!(err.contains(&format!("backup.{key}")), "{key}: {err}");
    }
}

#[test]
fn device_certificate_lifetime_and_renewal_interval() {
    let cfg = Config::parse("", Path::new("t")).unwrap();
    assert_eq!(
        cfg.pki.device_cert_lifetime(&cfg.enrollment),
        std::time::Duration::from_secs(365 * 86_400)
    );
    let cfg = Config::parse(
        "[enrollment]\ndevice_cert_days = 2\n[pki]\nrenew_min_interval_s = 60\n",
        Path::new("t"),
    )
    .unwrap();
    assert_eq!(
        cfg.pki.device_cert_lifetime(&cfg.enrollment),
        std::time::Duration::from_secs(2 * 86_400)
    );
    let cfg = Config::parse(
        "[pki]\ndevice_cert_lifetime_s = 20\nrenew_min_interval_s = 3\n",
        Path::new("t"),
    )
    .unwrap();
    assert_eq!(
        cfg.pki.device_cert_lifetime(&cfg.enrollment),
        std::time::Duration::from_secs(20)
    );
    for bad in [
        "[pki]\ndevice_cert_lifetime_s = 5\nrenew_min_interval_s = 1\n",
        "[pki]\ndevice_cert_lifetime_s = 30\nrenew_min_interval_s = 10\n",
        "[pki]\nrenew_min_interval_s = 0\n",
    ] {
        let err = Config::parse(bad, Path::new("t")).unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { .. }),
            "{bad}: expected Invalid, got {err}"
        );
    }
}

/// The external mode needs its broker, its identity and the port devices are told.
#[test]
fn the_external_mode_is_checked() {
    let base = "[mqtt]\nmode = \"external\"\n";
    let e = Config::parse(base, Path::new("t")).unwrap_err().to_string();
    assert!(e.contains("mqtt.external.address"), "{e}");
    assert!(e.contains("mqtt.public_port"), "{e}");
    let ok = "[mqtt]\nmode = \"external\"\npublic_port = 8883\n[mqtt.external]\n\
              address = \"broker.example:8884\"\nname = \"eu-1\"\nidentity_dir = \"/x\"\n";
    let cfg = Config::parse(ok, Path::new("t")).unwrap();
    assert_eq!(
        cfg.mqtt.external.host_port(),
        Some(("broker.example", 8884))
    );
    let half = format!("{ok}broker_dir = \"/b\"\n");
    let e = Config::parse(&half, Path::new("t"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("broker_dir and pid_file"), "{e}");
    let pw = "[store]\nurl = \"postgres://u:secret@db/p\"\n";
    let e = Config::parse(pw, Path::new("t")).unwrap_err().to_string();
    assert!(e.contains("must not carry a password"), "{e}");
    let e = Config::parse("[store]\nurl = \"mysql://db/p\"\n", Path::new("t"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("postgres://"), "{e}");
    let fine = "[store]\nurl = \"postgres://u@db:5432/p?sslmode=require\"\n";
    assert!(Config::parse(fine, Path::new("t")).is_ok());
}
