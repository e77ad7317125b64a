//! The health gate alone, against the fake unit and real probes: a loopback HTTP server
//! on an ephemeral port and a probe program.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::apps::health::{Gate, GateFailure, Prober, gate, parse_status};
use crate::commands::exec::{Context, Invocation};

/// A fake unit whose current release behaves as `b`.
fn unit(b: Behavior) -> (tempfile::TempDir, FakeSystemd) {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(tmp.path());
    l.ensure(None).unwrap();
    std::fs::create_dir(l.release("1-00000001")).unwrap();
    l.switch("1-00000001").unwrap();
    let s = FakeSystemd::new(tmp.path());
    s.set(1, b);
    (tmp, s)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn plain(soak: Duration) -> Gate<'static> {
    Gate {
        unit: UNIT,
        start_timeout: ms(300),
        soak,
        probe: None,
        poll: ms(20),
    }
}

#[tokio::test]
async fn a_unit_that_starts_and_stays_up_passes_after_the_soak() {
    let (_tmp, s) = unit(Behavior::Starts);
    let t = Instant::now();
    gate(&s, &plain(ms(200))).await.unwrap();
    assert!(t.elapsed() >= ms(200), "{:?}", t.elapsed());
    assert_eq!(s.calls(), ["restart web.service"]);
}

#[tokio::test]
async fn a_unit_that_never_becomes_active_fails_at_the_start_timeout() {
    let (_tmp, s) = unit(Behavior::FailsToStart);
    let t = Instant::now();
    let e = gate(&s, &plain(ms(200))).await.unwrap_err();
    assert!(matches!(e, GateFailure::NotActive { .. }), "{e}");
    assert!(t.elapsed() >= ms(300), "{:?}", t.elapsed());
    assert!(e.to_string().contains("Result=exit-code"), "{e}");
}

#[tokio::test]
async fn a_crash_loop_is_caught_by_its_restart_count() {
    let (_tmp, s) = unit(Behavior::CrashLoops);
    let e = gate(&s, &plain(ms(500))).await.unwrap_err();
    assert!(matches!(e, GateFailure::Restarted(1)), "{e}");
}

/// A loopback HTTP server answering every request with `status`; returns its port.
async fn http_server(status: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
                let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

fn http(port: u16) -> Prober {
    Prober::Http {
        port,
        path: "/healthz".into(),
        timeout: ms(500),
    }
}

#[tokio::test]
async fn an_http_probe_must_answer_2xx_the_required_times_in_a_row() {
    let (_tmp, s) = unit(Behavior::Starts);
    let ok = http(http_server("200 OK").await);
    let g = Gate {
        probe: Some((&ok, 3, ms(50))),
        ..plain(ms(0))
    };
    let t = Instant::now();
    gate(&s, &g).await.unwrap();
    // Three passes, one interval apart, even though the soak is shorter.
    assert!(t.elapsed() >= ms(100), "{:?}", t.elapsed());

    let failing = http(http_server("503 Service Unavailable").await);
    let g = Gate {
        probe: Some((&failing, 2, ms(50))),
        ..plain(ms(200))
    };
    let e = gate(&s, &g).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "probe passed 0 of 2 times in a row; last failure: HTTP status 503"
    );

    // Nothing listening: the connection is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closed = http(port);
    let g = Gate {
        probe: Some((&closed, 1, ms(50))),
        ..plain(ms(100))
    };
    let e = gate(&s, &g).await.unwrap_err();
    assert!(matches!(e, GateFailure::Probe { passes: 0, .. }), "{e}");
}

#[tokio::test]
async fn an_http_probe_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and then says nothing.
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let p = Prober::Http {
        port,
        path: "/healthz".into(),
        timeout: ms(100),
    };
    let e = p.probe().await.unwrap_err();
    assert!(e.to_string().starts_with("no answer within"), "{e}");
}

#[tokio::test]
async fn a_command_probe_must_exit_zero() {
    let (_tmp, s) = unit(Behavior::Starts);
    let limits = Limits {
        path: "/usr/bin:/bin".into(),
        timeout: ms(2000),
        max_output: 1024,
    };
    let probe = |program: &str| Prober::Command {
        invocation: Invocation {
            program: program.into(),
            args: vec![],
        },
        context: Context::default(),
        limits: limits.clone(),
    };
    let (t, f) = (probe("true"), probe("false"));
    let g = Gate {
        probe: Some((&t, 2, ms(30))),
        ..plain(ms(0))
    };
    gate(&s, &g).await.unwrap();
    let g = Gate {
        probe: Some((&f, 1, ms(30))),
        ..plain(ms(100))
    };
    let e = gate(&s, &g).await.unwrap_err();
    assert!(e.to_string().contains("exit code 1"), "{e}");
}

#[test]
fn systemctl_show_output_is_parsed() {
    let s = parse_status("ActiveState=active\nSubState=running\nNRestarts=3\nResult=success\n")
        .unwrap();
    assert!(s.is_active());
    assert_eq!(s.n_restarts, 3);
    assert_eq!(
        s.to_string(),
        "ActiveState=active SubState=running Result=success NRestarts=3"
    );
    let s =
        parse_status("Result=exit-code\nActiveState=activating\nSubState=auto-restart\n").unwrap();
    assert!(!s.is_active());
    assert_eq!((s.n_restarts, s.result.as_str()), (0, "exit-code"));
    assert_eq!(parse_status("garbage\n"), None);
}

#[tokio::test]
async fn systemctl_and_journalctl_are_run_by_argv_through_the_configured_path() {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("calls");
    let fake = |name: &str, body: &str| {
        let p = bin.path().join(name);
        let script = format!(
            "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}\n",
            log.display()
        );
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    fake(
        "systemctl",
        "case \"$1\" in\n\
         show) printf 'NRestarts=2\\nActiveState=active\\nSubState=running\\nResult=success\\n' ;;\n\
         stop) echo 'Failed to stop web.service: Access denied' >&2; exit 4 ;;\n\
         esac",
    );
    fake("journalctl", "printf 'line one\\nline two\\n'");
    let s = crate::apps::Systemctl::new(Limits {
        path: bin.path().display().to_string(),
        timeout: Duration::from_secs(5),
        max_output: 4096,
    });
    s.restart("web.service", Duration::from_secs(5))
        .await
        .unwrap();
    let st = s.show("web.service").await.unwrap();
    assert!(st.is_active());
    assert_eq!(st.n_restarts, 2);
    let tail = s.journal_tail("web.service", 7).await.unwrap();
    assert_eq!(tail, "line one\nline two\n");
    let e = s
        .stop("web.service", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "systemctl stop -- web.service: exit code 4: Failed to stop web.service: Access denied"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "systemctl restart -- web.service\n\
         systemctl show --property=ActiveState,SubState,NRestarts,Result -- web.service\n\
         journalctl -u web.service -n 7 --no-pager -o cat\n\
         systemctl stop -- web.service\n"
    );
}
