//! The process's life, end to end with a real `datagate` process: readiness only once the
//! proxy port accepts, SIGTERM lets an in-flight request finish and `/readyz` says
//! draining meanwhile, slow clients are cut off at the head deadline, the per-IP
//! connection bound closes the extra connection, and an idle process does no work.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::gateway::{Gateway, GatewayOptions};
use support::{ChildProcess, spawn_upstream};

const ROUTES: &str = r#"
unmatched: deny
table:
  - name: chart-read
    methods: [GET]
    path: /api/v1/chart/{pk}
    permissions:
      any_of: ["can_read on Chart"]
"#;

const GRANTS: &str = "p, role:Public, Chart, can_read\n";

fn options(upstream: SocketAddr) -> GatewayOptions {
    let mut options = GatewayOptions::new(upstream);
    options.routes_yaml = Some(ROUTES.to_string());
    options.policy_files = Some(vec![("10-grants.csv".to_string(), GRANTS.to_string())]);
    options
}

/// An upstream that answers every request after `delay` (a real HTTP server on its own
/// threads); counts the requests it received.
fn slow_upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                // The head ends at the blank line; these test requests have no body.
                while reader.read_line(&mut line).is_ok_and(|read| read > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(delay);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow",
                );
            });
        }
    });
    (address, received)
}

fn readyz(admin: SocketAddr) -> (u16, serde_json::Value) {
    match ureq::get(&format!("http://{admin}/readyz"))
        .timeout(Duration::from_secs(2))
        .call()
    {
        Ok(response) => (response.status(), response.into_json().unwrap()),
        Err(ureq::Error::Status(code, response)) => (code, response.into_json().unwrap()),
        Err(error) => panic!("{error}"),
    }
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_readyz_says_draining() {
    let (upstream, received) = slow_upstream(Duration::from_secs(2));
    let mut options = options(upstream);
    options.extra_yaml = Some("shutdown:\n  grace_period: 20s\n".to_string());
    let mut gateway = Gateway::start(options);
    let url = gateway.url("/api/v1/chart/1");
    let in_flight = std::thread::spawn(move || {
        let response = ureq::get(&url).timeout(Duration::from_secs(15)).call();
        let response = response.unwrap();
        (response.status(), response.into_string().unwrap())
    });
    assert!(Gateway::eventually(Duration::from_secs(5), || {
        received.load(Ordering::SeqCst) == 1
    }));
    let killed = unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    assert_eq!(killed, 0);
    // Draining is visible at once, while the request is still upstream.
    assert!(Gateway::eventually(Duration::from_secs(2), || {
        readyz(gateway.admin).0 == 503
    }));
    let (_, body) = readyz(gateway.admin);
    assert_eq!(body["status"], "draining", "{body}");
    assert!(body["message"].as_str().unwrap().contains("shutting down"));
    // The request that was in flight completes with the upstream's answer...
    let (status, text) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(text, "slow");
    // ...and then the process exits on its own, cleanly, well before the grace period.
    let exit = gateway.process.wait_for_exit(Duration::from_secs(10));
    assert!(exit.is_some_and(|status| status.success()), "{exit:?}");
    assert!(TcpStream::connect_timeout(&gateway.proxy, Duration::from_millis(200)).is_err());
    assert_eq!(received.load(Ordering::SeqCst), 1);
}

/// `/readyz` must not send traffic to a process whose proxy port would refuse it.
#[test]
fn readyz_never_answers_200_before_the_proxy_port_accepts() {
    let (_upstream_process, upstream) = spawn_upstream(&[]);
    let mut gateway = Gateway::start(options(upstream));
    gateway.process.kill();
    for _ in 0..3 {
        let child = Command::new(env!("CARGO_BIN_EXE_datagate"))
            .arg("run")
            .arg("--config")
            .arg(&gateway.config_path)
            .env("DATAGATE_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut process = ChildProcess::new(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut answered_not_ready = false;
        loop {
            assert!(Instant::now() < deadline, "never became ready");
            match ureq::get(&gateway.admin_url("/readyz"))
                .timeout(Duration::from_millis(500))
                .call()
            {
                Ok(response) => {
                    assert_eq!(response.status(), 200);
                    // Right after the first 200, the proxy port must take a connection.
                    TcpStream::connect_timeout(&gateway.proxy, Duration::from_secs(1))
                        .expect("readyz said ready but the proxy port refused");
                    break;
                }
                Err(ureq::Error::Status(503, response)) => {
                    let body: serde_json::Value = response.into_json().unwrap();
                    assert_eq!(body["status"], "starting", "{body}");
                    answered_not_ready = true;
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = answered_not_ready;
        process.kill();
    }
}

#[test]
fn a_client_trickling_its_request_head_is_cut_off_at_the_deadline() {
    let (upstream, received) = slow_upstream(Duration::ZERO);
    let mut options = options(upstream);
    options.listen_yaml = Some("header_timeout: 1s\n".to_string());
    let gateway = Gateway::start(options);
    let mut stream = TcpStream::connect(gateway.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let head = b"GET /api/v1/chart/1 HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut closed = false;
    for byte in head.iter() {
        if stream.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        // One byte every 300 ms: each read succeeds, only the head as a whole is late.
        let mut buffer = [0u8; 256];
        match stream.read(&mut buffer) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("answered a trickled head"),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never cut off");
    }
    assert!(closed, "the whole head went through without a cut-off");
    assert_eq!(
        received.load(Ordering::SeqCst),
        0,
        "the upstream saw nothing"
    );
    // A prompt client is served as before.
    let response = ureq::get(&gateway.url("/api/v1/chart/1")).call().unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn connections_beyond_the_per_ip_bound_are_closed_at_once() {
    let (upstream, received) = slow_upstream(Duration::ZERO);
    let mut options = options(upstream);
    options.listen_yaml = Some("max_connections_per_ip: 2\nheader_timeout: 30s\n".to_string());
    let gateway = Gateway::start(options);
    // Readiness probes and the start-up check have closed their connections by now.
    std::thread::sleep(Duration::from_millis(300));
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(gateway.proxy).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(gateway.proxy).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(b"GET /api/v1/chart/1 HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buffer = [0u8; 64];
    let read = extra.read(&mut buffer);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the third connection was served: {read:?}"
    );
    assert_eq!(received.load(Ordering::SeqCst), 0);
    assert!(
        gateway.metric_with("datagate_connections_refused_total", &[r#"bound="per_ip""#]) >= 1.0
    );
    // Closing one frees its slot.
    drop(idle);
    assert!(Gateway::eventually(Duration::from_secs(5), || {
        ureq::get(&gateway.url("/api/v1/chart/1"))
            .call()
            .is_ok_and(|response| response.status() == 200)
    }));
}
