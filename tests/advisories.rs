//! Regression tests from our peers' security advisories (SpiceDB, OpenFGA,
//! and the Rust HTTP/2 stack): each test names the advisory it guards
//! against. Shapes that fit a validation file live in `tests/advisories/`
//! (one file per advisory id) and run exhaustively — Check ⇔ Expand ⇔
//! LookupResources ⇔ LookupSubjects — here on memory and in
//! `tests/postgres.rs` on Postgres. The rest run over real gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::Duration;

use common::{Server, bulk_answers, bulk_item, check_req, fresh, full, touch_all, written};
use kinbar::api::proto::authzed::api::v1 as pb;
use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use kinbar::config::Config;
use tonic::Code;
use tonic::transport::Channel;

const HAS: i32 = pb::check_permission_response::Permissionship::HasPermission as i32;
const NO: i32 = pb::check_permission_response::Permissionship::NoPermission as i32;

const SCHEMA: &str = "definition user {}
definition group {
    relation member: user | group#member
}
definition doc {
    relation viewer: user | user:* | group | group#member
    relation banned: user
    permission view = viewer - banned
}";

async fn server() -> (Server, PermissionsServiceClient<Channel>) {
    let (server, ch) = Server::with_schema(Config::default(), SCHEMA).await;
    (server, PermissionsServiceClient::new(ch))
}

async fn write(client: &mut PermissionsServiceClient<Channel>, rels: &[String]) -> pb::ZedToken {
    let refs: Vec<&str> = rels.iter().map(String::as_str).collect();
    written(client, touch_all(&refs)).await
}

/// After an attack: an ordinary check at `token` is still answered, allowed.
async fn still_answers(client: &mut PermissionsServiceClient<Channel>, token: &pb::ZedToken) {
    let r = client
        .check_permission(check_req("doc:1", "view", "user:a", fresh(token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.permissionship, HAS);
}

/// The validation-file advisories, exhaustively, on the memory store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_validation_files_pass_exhaustively() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/advisories");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    let options = kinbar::validate::Options { exhaustive: true };
    for f in &files {
        let report = kinbar::validate::validate_file(f, &options).await;
        assert!(
            report.error.is_none() && report.failures.is_empty() && report.passed > 10,
            "{}",
            report.render()
        );
    }
}

/// SpiceDB CVE-2024-27101 (GHSA-h3m7-rqc4-7h9p): more than 65,535
/// relationships on one resource overflowed a chunking counter (missed
/// elements, panics). 70,000 viewers: the last one is found by Check and
/// CheckBulk, and LookupSubjects returns every one exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cve_2024_27101_more_than_65535_relationships_on_one_resource() {
    let (server, mut client) = server().await;
    let n = 70_000;
    let mut token = None;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let rels: Vec<String> = chunk
            .iter()
            .map(|i| format!("doc:big#viewer@user:u{i:05}"))
            .collect();
        token = Some(write(&mut client, &rels).await);
    }
    let token = token.unwrap();
    let last = format!("user:u{:05}", n - 1);
    let r = client
        .check_permission(check_req("doc:big", "view", &last, fresh(&token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.permissionship, HAS);
    let item = |s: &str| bulk_item("doc:big", "view", s);
    let bulk = client
        .check_bulk_permissions(pb::CheckBulkPermissionsRequest {
            consistency: fresh(&token),
            items: vec![item("user:u00000"), item(&last), item("user:u70000")],
            with_tracing: false,
        })
        .await
        .unwrap()
        .into_inner();
    let got = bulk_answers(&bulk);
    assert_eq!(got, [HAS, HAS, NO]);
    let mut stream = client
        .lookup_subjects(pb::LookupSubjectsRequest {
            consistency: fresh(&token),
            resource: common::obj("doc", "big"),
            permission: "view".into(),
            subject_object_type: "user".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::HashSet::new();
    while let Some(r) = stream.message().await.unwrap() {
        let id = r.subject.unwrap().subject_object_id;
        assert!(seen.insert(id.clone()), "{id} twice");
    }
    assert_eq!(seen.len(), n);
    server.stop().await;
}

/// SpiceDB GHSA-vhvq-fv9f-wh4q: a garbage cursor reached a `MustParse` and
/// panicked the process (unauthenticated DoS). Every single-byte change
/// and every truncation of a real cursor and a real ZedToken is answered
/// with a clean status — never INTERNAL or UNKNOWN — and the server keeps
/// serving. ZedTokens carry a checksum, so a changed token is always
/// INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghsa_vhvq_fv9f_wh4q_garbage_cursors_and_tokens_never_crash() {
    let (server, mut client) = server().await;
    let rels: Vec<String> = (0..5).map(|i| format!("doc:{i}#viewer@user:a")).collect();
    let token = write(&mut client, &rels).await;
    let read = |cursor: Option<pb::Cursor>, consistency| pb::ReadRelationshipsRequest {
        consistency,
        relationship_filter: Some(pb::RelationshipFilter {
            resource_type: "doc".into(),
            ..Default::default()
        }),
        optional_limit: 2,
        optional_cursor: cursor,
    };
    let mut first = client
        .read_relationships(read(None, full()))
        .await
        .unwrap()
        .into_inner();
    let cursor = first
        .message()
        .await
        .unwrap()
        .unwrap()
        .after_result_cursor
        .unwrap()
        .token;
    let mutants = |s: &str| {
        let mut out = Vec::new();
        let bytes = s.as_bytes();
        for i in 0..bytes.len() {
            for delta in [1u8, 0x20, 0x80] {
                let mut b = bytes.to_vec();
                b[i] ^= delta;
                out.push(String::from_utf8_lossy(&b).into_owned());
            }
            out.push(String::from_utf8_lossy(&bytes[..i]).into_owned());
        }
        out
    };
    let clean = |code: Code| {
        matches!(
            code,
            Code::Ok | Code::InvalidArgument | Code::FailedPrecondition
        )
    };
    for m in mutants(&cursor) {
        let r = client
            .read_relationships(read(Some(pb::Cursor { token: m.clone() }), None))
            .await;
        let code = match r.map(|s| s.into_inner()) {
            Ok(mut s) => loop {
                match s.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break Code::Ok,
                    Err(e) => break e.code(),
                }
            },
            Err(e) => e.code(),
        };
        assert!(clean(code), "cursor {m:?}: {code:?}");
    }
    for m in mutants(&token.token) {
        let e = client
            .check_permission(check_req(
                "doc:1",
                "view",
                "user:a",
                fresh(&pb::ZedToken { token: m.clone() }),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "token {m:?}: {e:?}");
    }
    // Oversized cursors and tokens are refused before decoding, by name.
    let huge = "A".repeat(100 * 1024 + 1);
    let e = client
        .read_relationships(read(
            Some(pb::Cursor {
                token: huge.clone(),
            }),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit of 102400"), "{}", e.message());
    let e = client
        .check_permission(check_req(
            "doc:1",
            "view",
            "user:a",
            fresh(&pb::ZedToken { token: huge }),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("limit of 102400"), "{}", e.message());
    still_answers(&mut client, &token).await;
    server.stop().await;
}

/// SpiceDB CVE-2025-64529: a write above what the datastore can bind was
/// reported as a success. A write at the limit (1,000 updates) commits all
/// of them; one over is refused with nothing written. (Postgres binds
/// keys as arrays; the conformance suite runs 1,000-update writes there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cve_2025_64529_writes_at_the_limit_are_all_or_nothing() {
    let (server, mut client) = server().await;
    let at_limit: Vec<String> = (0..1_000)
        .map(|i| format!("doc:w#viewer@user:u{i}"))
        .collect();
    let token = write(&mut client, &at_limit).await;
    let over: Vec<String> = (0..1_001)
        .map(|i| format!("doc:x#viewer@user:u{i}"))
        .collect();
    let refs: Vec<&str> = over.iter().map(String::as_str).collect();
    let e = client
        .write_relationships(touch_all(&refs))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("1000"), "{}", e.message());
    let count = |resource: &'static str| {
        let mut client = client.clone();
        async move {
            let mut s = client
                .read_relationships(pb::ReadRelationshipsRequest {
                    consistency: full(),
                    relationship_filter: Some(pb::RelationshipFilter {
                        resource_type: "doc".into(),
                        optional_resource_id: resource.into(),
                        ..Default::default()
                    }),
                    optional_limit: 0,
                    optional_cursor: None,
                })
                .await
                .unwrap()
                .into_inner();
            let mut n = 0;
            while s.message().await.unwrap().is_some() {
                n += 1;
            }
            n
        }
    };
    assert_eq!(count("w").await, 1_000);
    assert_eq!(count("x").await, 0);
    let _ = token;
    server.stop().await;
}

/// OpenFGA CVE-2024-56323, CVE-2025-46331, CVE-2026-41131 and friends:
/// cache entries reused for a different question. Two checks that differ
/// in one field only — the subject's relation, or the revision — never
/// share an answer, in either order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openfga_cache_keys_never_cross_questions() {
    let (server, mut client) = server().await;
    let before = write(&mut client, &["group:g#member@user:x".to_string()]).await;
    let after = write(&mut client, &["doc:1#viewer@group:g#member".to_string()]).await;
    let ask = |s: &'static str, t: pb::ZedToken| {
        let mut client = client.clone();
        async move {
            client
                .check_permission(check_req("doc:1", "view", s, Some(exact(t))))
                .await
                .unwrap()
                .into_inner()
                .permissionship
        }
    };
    fn exact(t: pb::ZedToken) -> pb::Consistency {
        pb::Consistency {
            requirement: Some(pb::consistency::Requirement::AtExactSnapshot(t)),
        }
    }
    // Subject relation: the userset is granted, the bare group is not.
    assert_eq!(ask("group:g#member", after.clone()).await, HAS);
    assert_eq!(ask("group:g", after.clone()).await, NO);
    assert_eq!(ask("group:g#member", after.clone()).await, HAS);
    // Revision: before the grant, no; after, yes; and before again, no.
    assert_eq!(ask("user:x", before.clone()).await, NO);
    assert_eq!(ask("user:x", after.clone()).await, HAS);
    assert_eq!(ask("user:x", before).await, NO);
    server.stop().await;
}

/// OpenFGA CVE-2026-34972 (GHSA-jwvj-g8pc-cx45): BatchCheck with duplicate
/// items answered some of them wrongly. Duplicates get the same answer as
/// a single check, in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cve_2026_34972_bulk_checks_with_duplicates() {
    let (server, mut client) = server().await;
    let token = write(
        &mut client,
        &[
            "doc:1#viewer@user:a".into(),
            "doc:1#banned@user:b".into(),
            "doc:1#viewer@user:b".into(),
        ],
    )
    .await;
    let item = |s: &str| bulk_item("doc:1", "view", s);
    let subjects = ["user:a", "user:b", "user:a", "user:c", "user:b", "user:a"];
    let r = client
        .check_bulk_permissions(pb::CheckBulkPermissionsRequest {
            consistency: fresh(&token),
            items: subjects.iter().map(|s| item(s)).collect(),
            with_tracing: false,
        })
        .await
        .unwrap()
        .into_inner();
    let got = bulk_answers(&r);
    assert_eq!(got, [HAS, NO, HAS, NO, NO, HAS]);
    for (pair, s) in r.pairs.iter().zip(subjects) {
        let subject = pair.request.as_ref().unwrap().subject.as_ref().unwrap();
        assert_eq!(
            format!("user:{}", subject.object.as_ref().unwrap().object_id),
            s
        );
    }
    server.stop().await;
}

/// SpiceDB CVE-2023-46255 (GHSA-jg7w-cxjv-98c2) and CVE-2026-40091
/// (GHSA-jf4f-rr2c-9m58): the datastore password reached the logs (a
/// malformed URI's error; the start-up configuration at info). At trace
/// level, with good and malformed URIs and a preshared key, no output of
/// `kinbar serve` contains either secret.
#[test]
fn cve_2023_46255_no_secret_in_any_log() {
    let password = "Sup3rS3cretPw";
    let key = "Pr3sharedK3y0";
    for url in [
        format!("postgres://kinbar:{password}@127.0.0.1:1/kinbar"),
        format!("postgres://kinbar:{password}@[::1/kinbar"),
        format!("postgres://kinbar:{password}@127.0.0.1:1/kinbar?sslmode=bogus"),
    ] {
        for format in ["text", "json"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_kinbar"))
                .args([
                    "serve",
                    "--grpc-addr",
                    "127.0.0.1:0",
                    "--log-format",
                    format,
                    "--datastore",
                    &url,
                    "--preshared-key",
                    &format!("crm:{key}:check"),
                ])
                .env("RUST_LOG", "trace")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "served without a database? {text}");
            assert!(!text.is_empty(), "no error output at all");
            assert!(
                !text.contains(password) && !text.contains(key),
                "secret in the output of {url} ({format}):\n{text}"
            );
        }
    }
}

/// RUSTSEC-2023-0034 / CVE-2023-44487 ("rapid reset") and RUSTSEC-2024-0003:
/// a client that opens 20,000 streams and resets each at once, as fast as
/// it can. Cancelled streams leave no work behind (the server also limits
/// resets of streams it has not yet accepted), and a well-behaved client
/// on another connection keeps getting answers throughout and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustsec_2023_0034_rapid_reset_does_not_starve_others() {
    let (server, mut client) = server().await;
    let token = write(&mut client, &["doc:1#viewer@user:a".to_string()]).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let attacker = tokio::spawn(async move {
        let mut h2 = h2;
        let mut sent = 0u32;
        for _ in 0..20_000 {
            let ready = match h2.clone().ready().await {
                Ok(r) => r,
                Err(_) => break,
            };
            h2 = ready;
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
                    sent += 1;
                }
                Err(_) => break,
            }
        }
        sent
    });
    // Meanwhile, and after, an ordinary client is answered.
    for _ in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            client.check_permission(check_req("doc:1", "view", "user:a", fresh(&token))),
        )
        .await
        .expect("an ordinary check must not starve")
        .unwrap()
        .into_inner();
        assert_eq!(r.permissionship, HAS);
    }
    let sent = attacker.await.unwrap();
    eprintln!("rapid reset: {sent} streams opened and reset before the connection ended");
    assert!(sent > 0);
    driver.abort();
    still_answers(&mut client, &token).await;
    server.stop().await;
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A new connection sends the preface and an empty SETTINGS frame: the
/// type of the first frame the server answers with, or None if it closed
/// the connection without one.
async fn first_frame(addr: std::net::SocketAddr) -> Option<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let _ = tcp.write_all(&frame(0x4, 0, 0, &[])).await;
    let mut header = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut header)).await {
        Ok(Ok(_)) => Some(header[3]),
        _ => None,
    }
}

/// One CONTINUATION flood on a new connection: HEADERS without
/// END_HEADERS, then up to 10,000 CONTINUATION frames of 1 KiB. Returns
/// the frames written and whether the server closed the connection within
/// 10 s.
async fn continuation_flood(addr: std::net::SocketAddr) -> (usize, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    tcp.write_all(&frame(0x4, 0, 0, &[])).await.unwrap();
    // A literal header field (never indexed, new name) of ~1 KiB, repeated.
    let mut field = vec![0x10, 0x05];
    field.extend_from_slice(b"x-pad");
    field.push(0x7f); // value length 127 + continuation bytes
    field.push(0x81);
    field.push(0x07); // 127 + 1 + 7*128 = 1,024
    field.extend(std::iter::repeat_n(b'a', 1024));
    let _ = tcp.write_all(&frame(0x1, 0x0, 1, &field)).await;
    let mut sent = 0usize;
    for _ in 0..10_000 {
        if tcp.write_all(&frame(0x9, 0x0, 1, &field)).await.is_err() {
            break;
        }
        sent += 1;
    }
    // The server has answered with GOAWAY and/or closed the connection: a
    // read reaches EOF or an error within a few seconds.
    let mut buf = vec![0u8; 65_536];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
    .unwrap_or(false);
    (sent, closed)
}

/// RUSTSEC-2024-0332 (CONTINUATION flood): HEADERS without END_HEADERS
/// followed by endless CONTINUATION frames. The server bounds the header
/// list (16 KiB) and drops the connection long before the flood ends; other
/// clients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustsec_2024_0332_continuation_flood_is_cut_off() {
    let (server, mut client) = server().await;
    let token = write(&mut client, &["doc:1#viewer@user:a".to_string()]).await;
    let (sent, closed) = continuation_flood(server.addr).await;
    assert!(
        closed,
        "connection still open after {sent} CONTINUATION frames"
    );
    eprintln!("CONTINUATION flood: cut off after {sent} frames");
    still_answers(&mut client, &token).await;
    server.stop().await;
}

/// A flood that `h2` cuts off cannot simply reconnect: once a client
/// address has had `protocol_errors_per_peer` connections ended by
/// protocol errors, its new connections are not served (held unread, no
/// SETTINGS frame, no HTTP/2 setup, then closed), its open connection
/// keeps working, and a second later (one error refilled) it is served
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_that_reconnect_are_not_served() {
    let config = Config {
        protocol_errors_per_peer: 2,
        ..Config::default()
    };
    let (server, ch) = Server::with_schema(config, SCHEMA).await;
    let mut client = PermissionsServiceClient::new(ch);
    let token = write(&mut client, &["doc:1#viewer@user:a".to_string()]).await;
    assert_eq!(
        first_frame(server.addr).await,
        Some(0x4),
        "served: SETTINGS first"
    );
    for round in 0..2 {
        let (sent, closed) = continuation_flood(server.addr).await;
        assert!(closed, "flood {round} not cut off after {sent} frames");
    }
    assert_eq!(
        first_frame(server.addr).await,
        None,
        "two protocol errors spent the budget: not served"
    );
    // The client's open connection (same address) is untouched.
    still_answers(&mut client, &token).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        first_frame(server.addr).await,
        Some(0x4),
        "a second later, one error is forgiven"
    );
    server.stop().await;
}
