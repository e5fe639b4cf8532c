//! `tether demo` as a user runs it: the member lines, a count through the proxy, failover after
//! `kill -9` of the serving member, and no member left behind after SIGTERM.

mod session_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use session_support::{alive, Client, KillOnDrop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_members_counts_fails_over_and_cleans_up() {
    let listen = tether::demo::free_port().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["demo", "--members", "3", "--listen", &listen.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let mut demo = KillOnDrop(demo);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut members = Vec::new();
    for _ in 0..4 {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("demo output");
        if line.starts_with("proxy ") {
            break;
        }
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 6, "{line}");
        assert_eq!(
            (parts[0], parts[2], parts[4]),
            ("member", "pid", "addr"),
            "{line}"
        );
        assert_eq!(parts[1], format!("c{}", members.len() + 1));
        let pid: u32 = parts[3].parse().unwrap();
        let addr: std::net::SocketAddr = parts[5].parse().unwrap();
        members.push((parts[1].to_owned(), pid, addr));
    }
    assert_eq!(members.len(), 3);

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = Client::default();
    let first = loop {
        match session_support::get(listen, "/count", None).await {
            Ok(r) if r.status == 200 => break r,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("proxy never answered: {other:?}"),
        }
    };
    let j = first.json();
    let exact = format!(
        r#"{{"member":"{}","session":"{}","count":1}}"#,
        j["member"].as_str().unwrap(),
        j["session"].as_str().unwrap()
    );
    assert_eq!(first.body, exact, "the documented JSON shape");
    client.cookie = first.session_cookie();
    assert_eq!(client.get(listen, "/count").await.count(), 2);
    let page = client.get(listen, "/").await;
    assert!(
        page.body.contains("<button") && page.body.contains("/count"),
        "{}",
        page.body
    );

    // kill -9 the member serving us: the count continues on another member.
    let serving = client.get(listen, "/count").await;
    assert_eq!(serving.count(), 3);
    let (_, pid, _) = members
        .iter()
        .find(|(c, _, _)| *c == serving.member())
        .unwrap();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let after = client.get(listen, "/count").await;
    assert_eq!(after.count(), 4, "{}", after.body);
    assert_ne!(after.member(), serving.member());

    // SIGTERM to the demo: it stops its members (by PID) and exits.
    assert!(Command::new("kill")
        .args(["-TERM", &demo.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "demo did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (clone, pid, _) in &members {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(*pid) {
            assert!(
                Instant::now() < deadline,
                "member {clone} (pid {pid}) outlived the demo"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
