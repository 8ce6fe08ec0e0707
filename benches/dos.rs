//! Denial-of-service figures (issue 17's DoS acceptance), printed as the
//! markdown table BENCHMARKS.md quotes: a `kinbar serve` process (memory
//! datastore, two keys limited to `RATE` requests/s each) is measured by a
//! well-behaved Check client — key `b`, paced at `PACE` calls/s from 4
//! tasks — while one attack runs:
//!
//! - 1,000 idle connections (TCP open, nothing sent);
//! - 200 slow-preface connections (one byte every 200 ms);
//! - a rapid-reset flood (an `h2` client opening and cancelling streams),
//!   reconnecting when cut off;
//! - a CONTINUATION flood (HEADERS without END_HEADERS, endless
//!   CONTINUATION frames), reconnecting when cut off;
//! - key `a` calling as fast as it can from 8 tasks on a connection of its
//!   own, far over its limit.
//!
//! Each attacker is a process of its own (this binary again, one thread),
//! as a separate client would be, at `nice` 19 unless `KINBAR_DOS_NICE`
//! says otherwise (see [`attack_nice`]). Each attack runs [`ROUNDS`] times,
//! each right after a baseline window of its own; the row is the round
//! with the median ratio. For each: the client's achieved rate and p50/p99
//! latency, errors, the ratio of its p99 to its baseline's, the server's
//! resident memory, and the CPU server and attacker used (CPU seconds per
//! second). Run: `cargo bench --bench dos`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // benchmark harness

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kinbar::api::proto::authzed::api::v1 as pb;
use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

const RATE: u32 = 1_500;
const PACE: u64 = 1_000;
const WINDOW: Duration = Duration::from_secs(4);
/// Rounds per attack (odd: the middle one is the median).
const ROUNDS: usize = 3;

/// Resident memory of process `pid`, and its peak so far, in MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) process `pid` has used so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn check(token: &pb::ZedToken) -> pb::CheckPermissionRequest {
    let r: kinbar::Relationship = "doc:1#view@user:a".parse().unwrap();
    let p = kinbar::api::convert::relationship_pb(&r);
    pb::CheckPermissionRequest {
        consistency: Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(token.clone())),
        }),
        resource: p.resource,
        permission: "view".into(),
        subject: p.subject,
        context: None,
        with_tracing: false,
    }
}

struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    rss: (f64, f64),
    /// CPU seconds per second of the window: server, attacker.
    cpu: (f64, f64),
}

/// Key `b`'s paced client for one window.
async fn measure(ch: &Channel, token: &pb::ZedToken, pid: u32) -> Measured {
    let started = Instant::now();
    let cpu0 = cpu_s(pid);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let mut client = PermissionsServiceClient::new(ch.clone());
        let errors = errors.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let interval = Duration::from_micros(4 * 1_000_000 / PACE);
            let mut next = tokio::time::Instant::now() + interval * t as u32 / 4;
            while started.elapsed() < WINDOW {
                tokio::time::sleep_until(next).await;
                next += interval;
                let t0 = Instant::now();
                match client
                    .check_permission(keyed(check(&token), "key-b-secret"))
                    .await
                {
                    Ok(_) => lat.push(t0.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort();
    let q = |f: f64| {
        lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let secs = started.elapsed().as_secs_f64();
    Measured {
        cpu: ((cpu_s(pid) - cpu0) / secs, 0.0),
        rate: lat.len() as f64 / secs,
        p50: q(0.5),
        p99: q(0.99),
        errors: errors.load(Ordering::Relaxed),
        rss: rss_mb(pid),
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn rapid_reset(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    conns: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        conns.fetch_add(1, Ordering::Relaxed);
        let Ok((mut h2, connection)) = h2::client::handshake(tcp).await else {
            continue;
        };
        let driver = tokio::spawn(connection);
        while !stop.load(Ordering::Relaxed) {
            h2 = match h2.ready().await {
                Ok(r) => r,
                Err(_) => break,
            };
            let req = http::Request::builder()
                .method("POST")
                .uri("http://kinbar/authzed.api.v1.PermissionsService/CheckPermission")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            match h2.send_request(req, false) {
                Ok((_response, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    // `ready` may never be pending: let the connection's
                    // driver (and the stop timer) run on this one thread.
                    if count.fetch_add(1, Ordering::Relaxed).is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                Err(_) => break,
            }
        }
        driver.abort();
    }
}

async fn continuation_flood(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    conns: Arc<AtomicU64>,
) {
    let mut field = vec![0x10, 0x05];
    field.extend_from_slice(b"x-pad");
    field.extend_from_slice(&[0x7f, 0x81, 0x07]);
    field.extend(std::iter::repeat_n(b'a', 1024));
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        conns.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let _ = tcp.write_all(&frame(0x4, 0, 0, &[])).await;
        let _ = tcp.write_all(&frame(0x1, 0, 1, &field)).await;
        while !stop.load(Ordering::Relaxed) {
            if tcp.write_all(&frame(0x9, 0, 1, &field)).await.is_err() {
                break;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How the attackers run: a process of their own (`KINBAR_DOS_ATTACK`
/// set: this same binary), on one thread, at the `nice` level
/// `KINBAR_DOS_NICE` (default 19). Niced, the attacker's own CPU
/// (sending floods costs the sender as much as the server) models a
/// remote machine's; at 0 it competes with server and client for the same
/// two cores as equals, and the client's latency then also measures the
/// machine's scheduler. BENCHMARKS.md reports both.
fn attack_nice() -> String {
    std::env::var("KINBAR_DOS_NICE").unwrap_or_else(|_| "19".into())
}

/// Runs one attack against `addr` for `secs`, then prints what it did.
fn attacker(kind: &str, addr: std::net::SocketAddr, secs: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let conns = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        match kind {
            "idle" => {
                let mut idle = Vec::new();
                for _ in 0..1_000 {
                    if let Ok(c) = tokio::net::TcpStream::connect(addr).await {
                        idle.push(c);
                    }
                }
                conns.store(idle.len() as u64, Ordering::Relaxed);
                println!("ready");
                tokio::time::sleep(Duration::from_secs(secs)).await;
                drop(idle);
            }
            "slow" => {
                for _ in 0..200 {
                    let (stop, conns) = (stop.clone(), conns.clone());
                    tasks.push(tokio::spawn(async move {
                        let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
                            return;
                        };
                        conns.fetch_add(1, Ordering::Relaxed);
                        for b in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
                            if stop.load(Ordering::Relaxed) || c.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }));
                }
            }
            "rapid" => tasks.push(tokio::spawn(rapid_reset(
                addr,
                stop.clone(),
                count.clone(),
                conns.clone(),
            ))),
            "continuation" => tasks.push(tokio::spawn(continuation_flood(
                addr,
                stop.clone(),
                count.clone(),
                conns.clone(),
            ))),
            "overlimit" => {
                // Key a over a connection of its own.
                let ch = Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let token = pb::ZedToken {
                    token: std::env::var("KINBAR_DOS_TOKEN").unwrap(),
                };
                for _ in 0..8 {
                    let mut client = PermissionsServiceClient::new(ch.clone());
                    let (stop, ok, refused) = (stop.clone(), count.clone(), refused.clone());
                    let token = token.clone();
                    tasks.push(tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            match client
                                .check_permission(keyed(check(&token), "key-a-secret"))
                                .await
                            {
                                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                                    refused.fetch_add(1, Ordering::Relaxed)
                                }
                                Err(_) => 0,
                            };
                        }
                    }));
                }
            }
            other => panic!("unknown attack {other}"),
        }
        if kind != "idle" {
            println!("ready");
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        let (n, c, r) = (
            count.load(Ordering::Relaxed),
            conns.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        );
        match kind {
            "idle" => format!("{c} opened"),
            "slow" => format!("{c} connections, 1 byte / 200 ms"),
            "rapid" => format!("{n} streams opened and reset over {c} connections"),
            "continuation" => format!("{n} 1 KiB frames written over {c} connections"),
            _ => format!("key a: {n} answered, {r} RESOURCE_EXHAUSTED"),
        }
    });
    println!("{summary}");
}

/// Starts attacker `kind` (a process of its own), waits until it is under
/// way, runs `measure`, and returns the attacker's summary.
async fn under_attack<F: std::future::Future<Output = Measured>>(
    kind: &str,
    addr: std::net::SocketAddr,
    token: &pb::ZedToken,
    measure: F,
) -> (Measured, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new("nice")
        .args(["-n", &attack_nice()])
        .arg(std::env::current_exe().unwrap())
        .env("KINBAR_DOS_ATTACK", format!("{kind} {addr}"))
        .env("KINBAR_DOS_TOKEN", &token.token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The attacker's lines, read on a thread of their own.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(lines.recv().await.as_deref(), Some("ready"));
    // Let the attack reach its pace.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attacker_pid = child.id();
    let (started, cpu0) = (Instant::now(), cpu_s(attacker_pid));
    let mut m = measure.await;
    m.cpu.1 = (cpu_s(attacker_pid) - cpu0) / started.elapsed().as_secs_f64();
    let summary = lines.recv().await.unwrap_or_default();
    let _ = child.wait();
    (m, summary)
}

fn main() {
    if let Ok(spec) = std::env::var("KINBAR_DOS_ATTACK") {
        let (kind, addr) = spec.split_once(' ').unwrap();
        attacker(kind, addr.parse().unwrap(), WINDOW.as_secs() + 1);
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

async fn bench() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kinbar.toml");
    std::fs::write(
        &config,
        format!(
            "preshared_keys = [\"a:key-a-secret:admin\", \"b:key-b-secret:admin\"]\nrate_limit_per_key = {RATE}\n"
        ),
    )
    .unwrap();
    let server = Serve(
        std::process::Command::new(env!("CARGO_BIN_EXE_kinbar"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--grpc-addr", &addr.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id();
    let mut ch = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(c) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            ch = Some(c);
            break;
        }
    }
    let ch = ch.expect("kinbar serve came up");
    SchemaServiceClient::new(ch.clone())
        .write_schema(keyed(
            pb::WriteSchemaRequest {
                schema: "definition user {}\ndefinition doc { relation viewer: user\n permission view = viewer }".into(),
            },
            "key-b-secret",
        ))
        .await
        .unwrap();
    let r: kinbar::Relationship = "doc:1#viewer@user:a".parse().unwrap();
    let token = PermissionsServiceClient::new(ch.clone())
        .write_relationships(keyed(
            pb::WriteRelationshipsRequest {
                updates: vec![pb::RelationshipUpdate {
                    operation: pb::relationship_update::Operation::Touch as i32,
                    relationship: Some(kinbar::api::convert::relationship_pb(&r)),
                }],
                optional_preconditions: vec![],
                optional_transaction_metadata: None,
            },
            "key-b-secret",
        ))
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap();

    println!(
        "Attackers: a process of their own at nice {}.\n",
        attack_nice()
    );
    println!(
        "| scenario | client calls/s | p50 | p99 | baseline p99 | p99 × baseline | client errors | server resident MB | CPU server / attacker | attack |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let row = |name: &str, m: &Measured, base: &Measured, attack: &str| {
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} | {} | {:.1} (peak {:.1}) | {:.2} / {:.2} | {attack} |",
            m.rate,
            m.p50.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() * 1e3,
            base.p99.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9),
            m.errors,
            m.rss.0,
            m.rss.1,
            m.cpu.0,
            m.cpu.1
        );
    };
    // Each attack runs ROUNDS times, each time right after a baseline
    // window of its own (this VM's latency drifts within minutes); the
    // row shows the round with the median ratio.
    for (kind, name) in [
        ("idle", "1,000 idle connections"),
        ("slow", "200 slow-preface connections"),
        ("rapid", "rapid-reset flood"),
        ("continuation", "CONTINUATION flood"),
        ("overlimit", "key a over its limit"),
    ] {
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let base = measure(&ch, &token, pid).await;
            let (m, mut summary) =
                under_attack(kind, addr, &token, measure(&ch, &token, pid)).await;
            if kind == "overlimit" {
                summary = format!(
                    "{summary}; key b at {:.0}% of its baseline rate",
                    100.0 * m.rate / base.rate
                );
            }
            let ratio = m.p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9);
            rounds.push((ratio, m, base, summary));
        }
        rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, m, base, summary) = &rounds[ROUNDS / 2];
        row(name, m, base, summary);
    }
}
