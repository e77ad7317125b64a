use std::os::unix::process::ExitStatusExt;

use super::*;
use crate::pki::{Ca, Revoked};

fn revoked(serials: &[&str]) -> Vec<Revoked> {
    serials
        .iter()
        .map(|s| Revoked {
            serial_hex: (*s).to_owned(),
            revoked_at_unix: 1_700_000_000,
        })
        .collect()
}

/// A broker directory holding `ca`'s certificate and a CRL of it numbered 1.
fn broker_dir(tmp: &Path, ca: &Ca) -> BrokerDir {
    let broker = BrokerDir::new(tmp);
    std::fs::write(broker.ca(), &ca.cert_pem).unwrap();
    std::fs::write(broker.crl(), ca.crl(&[], 1, 30).unwrap()).unwrap();
    broker
}

#[test]
fn a_crl_of_the_brokers_ca_is_installed_with_its_number_and_serials() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::generate("broker").unwrap();
    let broker = broker_dir(tmp.path(), &ca);
    assert_eq!(installed(&broker).unwrap().number, 1);
    let pem = ca.crl(&revoked(&["0A0b", "ff"]), 7, 30).unwrap();
    let info = install(&broker, pem.as_bytes()).unwrap();
    assert_eq!(info.number, 7);
    assert_eq!(
        info.serials,
        HashSet::from(["a0b".to_owned(), "ff".to_owned()])
    );
    assert_eq!(std::fs::read_to_string(broker.crl()).unwrap(), pem);
    assert_eq!(installed(&broker), Some(info));
}

/// A CRL signed by another CA (or not a CRL at all) is refused and the installed file is
/// left as it was.
#[test]
fn a_crl_of_another_ca_is_refused_and_the_installed_one_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::generate("broker").unwrap();
    let broker = broker_dir(tmp.path(), &ca);
    let before = std::fs::read(broker.crl()).unwrap();
    let other = Ca::generate("other").unwrap();
    // Another CA, even under the same name: its key is not the broker's CA's.
    let same_name = Ca::generate("broker").unwrap();
    let not_signed = [
        other.crl(&revoked(&["1"]), 9, 30).unwrap(),
        same_name.crl(&revoked(&["1"]), 9, 30).unwrap(),
        // The broker's CA's CRL first is not enough when a second claims its name falsely.
        ca.crl(&[], 9, 30).unwrap() + &same_name.crl(&[], 9, 30).unwrap(),
    ];
    for pem in not_signed {
        let err = install(&broker, pem.as_bytes()).unwrap_err();
        assert!(
            matches!(err, BrokerError::Refused(CrlRefusal::NotSigned { .. })),
            "{err}"
        );
        assert_eq!(std::fs::read(broker.crl()).unwrap(), before);
    }
    for pem in [
        "",
        "garbage",
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    ] {
        let err = install(&broker, pem.as_bytes()).unwrap_err();
        assert!(matches!(err, BrokerError::Refused(_)), "{pem:?}: {err}");
        assert_eq!(std::fs::read(broker.crl()).unwrap(), before);
    }
    // During a CA rotation the previous CA's CRL follows the current one's; one of a CA the
    // broker does not know is let through (it changes nothing there).
    let pem = ca.crl(&[], 10, 30).unwrap() + &other.crl(&[], 10, 30).unwrap();
    assert_eq!(install(&broker, pem.as_bytes()).unwrap().number, 10);
    // No temp file left behind.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().contains(".tmp")),
        "{names:?}"
    );
}

/// A pass installs a newer stored CRL and sends the broker SIGHUP; an older or equal one,
/// or one signed by another CA, is left alone and no signal is sent.
#[tokio::test]
async fn a_pass_installs_the_newer_stored_crl_and_reloads_the_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::generate("broker").unwrap();
    let broker = broker_dir(tmp.path(), &ca);
    let (_guard, store) = crate::store::testkit::store().await;
    // A stand-in for the broker: SIGHUP ends it (also when this process was started with
    // SIGHUP ignored, as under nohup: an ignored signal stays ignored across exec).
    let mut child = std::process::Command::new("env")
        .args(["--default-signal=HUP", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let opts = Options {
        broker: broker.clone(),
        process: BrokerProcess::Pid(pid),
        kick: ControllerClientConfig::from_identity_dir(tmp.path(), "localhost", 1),
        check: Duration::from_secs(1),
        settle: Duration::ZERO,
    };
    let mut sync = BrokerSync::new(store.clone(), opts);
    assert_eq!(sync.pass().await.unwrap(), Pass::Unchanged);
    // Not newer than the installed one.
    store
        .store_crl(1, &ca.crl(&revoked(&["5"]), 1, 30).unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(sync.pass().await.unwrap(), Pass::Unchanged);
    // Signed by another CA.
    let other = Ca::generate("other").unwrap();
    store
        .store_crl(2, &other.crl(&revoked(&["5"]), 2, 30).unwrap(), 2)
        .await
        .unwrap();
    assert_eq!(sync.pass().await.unwrap(), Pass::Refused { number: 2 });
    assert_eq!(installed(&broker).unwrap().number, 1);
    assert!(child.try_wait().unwrap().is_none(), "no SIGHUP yet");
    // Newer and the broker's CA's: installed, the broker signalled; no certificate of a
    // device has serial 5, so nobody is kicked.
    let pem = ca.crl(&revoked(&["5"]), 3, 30).unwrap();
    store.store_crl(3, &pem, 3).await.unwrap();
    assert_eq!(
        sync.pass().await.unwrap(),
        Pass::Installed {
            number: 3,
            devices: Vec::new()
        }
    );
    assert_eq!(std::fs::read_to_string(broker.crl()).unwrap(), pem);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGHUP));
    assert_eq!(sync.pass().await.unwrap(), Pass::Unchanged);
}
