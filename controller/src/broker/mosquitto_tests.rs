use super::*;

fn opts(run_as: &str) -> Options {
    Options {
        device_listen: "0.0.0.0:8883".parse().unwrap(),
        controller_listen: "127.0.0.1:8884".parse().unwrap(),
        hostnames: vec!["broker.example".into()],
        controllers: vec![ControllerName::parse("main").unwrap()],
        run_as: run_as.into(),
        force: false,
    }
}

/// Whoever runs the tests (root in CI: the broker's key then goes to that user).
fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .unwrap()
        .unwrap()
        .name
}

async fn data_dir(tmp: &Path) -> DataDir {
    let root = tmp.join("d");
    crate::setup::init(&root, &[], None).await.unwrap();
    DataDir::new(&root)
}

#[tokio::test]
async fn the_configuration_names_every_file_absolutely() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = data_dir(tmp.path()).await;
    let out = tmp.path().join("broker");
    let g = generate(&dd, &out, &opts(&me())).unwrap();
    assert!(g.written);
    let conf = std::fs::read_to_string(&g.conf).unwrap();
    let lines: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
    for want in [
        "per_listener_settings true",
        "persistence false",
        "listener 8883 0.0.0.0",
        "listener 8884 127.0.0.1",
        "use_username_as_clientid true",
        &format!("max_packet_size {}", crate::mqtt::max_packet_size()),
    ] {
        assert!(lines.contains(&want), "{want:?} missing from\n{conf}");
    }
    // The TLS block is in both listeners; only the device listener forces client ids.
    for line in ["require_certificate true", "allow_anonymous false"] {
        assert_eq!(lines.iter().filter(|l| **l == line).count(), 2, "{line}");
    }
    // Each listener trusts its own CA: the devices' (with their CRL) on the device
    // listener, the controllers' on the controller listener.
    let cafiles: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("cafile "))
        .collect();
    let dir = BrokerDir::new(std::fs::canonicalize(&out).unwrap());
    assert_eq!(
        cafiles,
        [
            dir.ca().to_str().unwrap(),
            dir.controllers_ca().to_str().unwrap()
        ]
    );
    let controller_block = conf.split("listener 8884").nth(1).unwrap();
    assert!(!controller_block.contains("crlfile"), "{controller_block}");
    assert_eq!(
        std::fs::read(dir.controllers_ca()).unwrap(),
        std::fs::read(dd.controllers_ca_cert()).unwrap()
    );
    assert_ne!(
        std::fs::read(dir.controllers_ca()).unwrap(),
        std::fs::read(dir.ca()).unwrap()
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("use_username_as_clientid"))
            .count(),
        1
    );
    for line in &lines {
        for key in [
            "cafile ",
            "certfile ",
            "keyfile ",
            "crlfile ",
            "acl_file ",
            "pid_file ",
        ] {
            if let Some(path) = line.strip_prefix(key) {
                assert!(Path::new(path).is_absolute(), "{line}");
                if key != "pid_file " {
                    assert!(Path::new(path).is_file(), "{line}");
                }
            }
        }
    }
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(out.join("server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let acl = std::fs::read_to_string(out.join("acl-controllers")).unwrap();
    assert!(acl.contains("user pifleet-controller#main\n"), "{acl}");
    let acl = std::fs::read_to_string(out.join("acl-devices")).unwrap();
    assert!(acl.contains("pattern write fleet/%u/up/#\n"), "{acl}");
    assert!(acl.contains("pattern read fleet/%u/down/#\n"), "{acl}");
}

#[tokio::test]
async fn a_different_configuration_is_replaced_only_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = data_dir(tmp.path()).await;
    let out = tmp.path().join("broker");
    generate(&dd, &out, &opts(&me())).unwrap();
    let cert = std::fs::read(out.join("server.crt")).unwrap();
    // The same again: nothing rewritten (the broker's certificate stays).
    let again = generate(&dd, &out, &opts(&me())).unwrap();
    assert!(!again.written);
    assert_eq!(std::fs::read(out.join("server.crt")).unwrap(), cert);
    // Different: refused, nothing touched.
    let mut other = opts(&me());
    other.controller_listen = "127.0.0.1:9884".parse().unwrap();
    let conf = std::fs::read(out.join("mosquitto.conf")).unwrap();
    assert!(matches!(
        generate(&dd, &out, &other),
        Err(BrokerError::Exists(_))
    ));
    assert_eq!(std::fs::read(out.join("mosquitto.conf")).unwrap(), conf);
    assert_eq!(std::fs::read(out.join("server.crt")).unwrap(), cert);
    other.force = true;
    assert!(generate(&dd, &out, &other).unwrap().written);
    let conf = std::fs::read_to_string(out.join("mosquitto.conf")).unwrap();
    assert!(conf.contains("\nlistener 9884 127.0.0.1\n"));
    assert_ne!(std::fs::read(out.join("server.crt")).unwrap(), cert);
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dd = data_dir(tmp.path()).await;
    let out = tmp.path().join("broker");
    let mut o = opts(&me());
    o.controllers.clear();
    assert!(matches!(
        generate(&dd, &out, &o),
        Err(BrokerError::NoControllers)
    ));
    let mut o = opts(&me());
    o.controller_listen = o.device_listen;
    assert!(matches!(
        generate(&dd, &out, &o),
        Err(BrokerError::SameListener(_))
    ));
    for user in ["", "a b", "x\nuser root"] {
        assert!(matches!(
            generate(&dd, &out, &opts(user)),
            Err(BrokerError::NoUser(_))
        ));
    }
    let mut o = opts(&me());
    o.hostnames = vec!["not a host".into()];
    assert!(matches!(generate(&dd, &out, &o), Err(BrokerError::Pki(_))));
    assert!(!out.join("mosquitto.conf").exists());
    let spaced = tmp.path().join("a b");
    assert!(matches!(
        generate(&dd, &spaced, &opts(&me())),
        Err(BrokerError::UnusablePath { .. })
    ));
}
