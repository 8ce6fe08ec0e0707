//! Kinbar on Postgres over gRPC: no "new enemy" under concurrent writes and
//! checks, Watch with concurrent writers, and a server killed (SIGKILL) in
//! the middle of a stream of writes losing nothing acknowledged, leaving no
//! partial write, with an audit trail that verifies — until a row is
//! altered in SQL, which `kinbar audit verify` then names; offboarding of
//! thousands of relationships in one transaction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use kinbar::api::proto::authzed::api::v1 as pb;
use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
use kinbar::api::proto::authzed::api::v1::watch_service_client::WatchServiceClient;
use tonic::transport::Channel;

const SCHEMA: &str = "definition user {}
definition doc {
    relation viewer: user
    relation editor: user
    relation banned: user
    permission view = viewer + editor - banned
}";

async fn write_schema(addr: std::net::SocketAddr) {
    SchemaServiceClient::new(channel(addr).await)
        .write_schema(pb::WriteSchemaRequest {
            schema: SCHEMA.into(),
        })
        .await
        .unwrap();
}

/// A check at a write's token always sees that write, and a check at the
/// token before it never does — 2,000 rounds (4,000 writes, 6,000 checks),
/// with writers and checkers running concurrently on Postgres.
/// Offboarding 5,001 relationships in one transaction on Postgres (the
/// scenario of `tests/grpc.rs`, on the real datastore).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_in_one_transaction_on_postgres() {
    skip_without_postgres!();
    let url = database().await;
    let (addr, _stop) = serve(&url).await;
    write_schema(addr).await;
    offboarding_scenario(channel(addr).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_new_enemy_under_concurrent_writes_and_checks() {
    skip_without_postgres!();
    let url = database().await;
    let (addr, _stop) = serve(&url).await;
    write_schema(addr).await;
    let channel = channel(addr).await;
    let checks = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut client = PermissionsServiceClient::new(channel.clone());
        let checks = checks.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                let doc = format!("doc:t{t}i{i}");
                let user = format!("user:u{}", i % 7);
                let granted = written(
                    &mut client,
                    touch(&[&format!("{doc}#viewer@{user}")], "grant"),
                )
                .await;
                assert!(
                    allowed(&mut client, check(&doc, "view", &user, fresh(&granted))).await,
                    "{doc}: a check at the grant's token misses the grant"
                );
                let banned = written(
                    &mut client,
                    touch(&[&format!("{doc}#banned@{user}")], "ban"),
                )
                .await;
                assert!(
                    !allowed(&mut client, check(&doc, "view", &user, fresh(&banned))).await,
                    "{doc}: new enemy — the ban is not seen at its token"
                );
                assert!(
                    allowed(&mut client, check(&doc, "view", &user, exact(&granted))).await,
                    "{doc}: the older token sees the later ban"
                );
                checks.fetch_add(3, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(checks.load(Ordering::Relaxed), 6000);
}

/// Watch on Postgres: every change of concurrent writers exactly once,
/// and resuming from a mid-stream token yields exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_concurrent_writes_once_and_resumes() {
    skip_without_postgres!();
    let url = database().await;
    let (addr, _stop) = serve(&url).await;
    write_schema(addr).await;
    let channel = channel(addr).await;
    let start = PermissionsServiceClient::new(channel.clone())
        .write_relationships(touch(&["doc:start#viewer@user:x"], "start"))
        .await
        .unwrap()
        .into_inner()
        .written_at
        .unwrap();
    let watch_from = |token: pb::ZedToken| {
        let channel = channel.clone();
        async move {
            WatchServiceClient::new(channel)
                .watch(pb::WatchRequest {
                    optional_object_types: vec![],
                    optional_start_cursor: Some(token),
                    optional_relationship_filters: vec![],
                    optional_update_kinds: vec![],
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut stream = watch_from(start.clone()).await;
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut client = PermissionsServiceClient::new(channel.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..40 {
                client
                    .write_relationships(touch(
                        &[
                            &format!("doc:w{w}#viewer@user:u{i}"),
                            &format!("doc:w{w}#editor@user:u{i}"),
                        ],
                        "watched",
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    let mut seen: Vec<(String, pb::ZedToken)> = Vec::new();
    while seen.len() < 320 {
        let msg = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        let token = msg.changes_through.clone().unwrap();
        for u in &msg.updates {
            seen.push((text(u), token.clone()));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let unique: BTreeSet<&String> = seen.iter().map(|(r, _)| r).collect();
    assert_eq!(unique.len(), 320, "every change exactly once");
    assert_eq!(seen.len(), 320);
    // Transactions are delivered whole: both updates of a write in one response.
    // Resume from the token of the 100th change: the rest, and nothing else.
    let mid = seen[99].1.clone();
    let delivered_with_mid: usize = seen.iter().filter(|(_, t)| *t == mid).count();
    let first_after = seen.iter().position(|(_, t)| *t == mid).unwrap() + delivered_with_mid;
    let mut resumed = watch_from(mid).await;
    let mut rest = Vec::new();
    while rest.len() < 320 - first_after {
        let msg = tokio::time::timeout(Duration::from_secs(30), resumed.message())
            .await
            .expect("resumed watch stalled")
            .unwrap()
            .unwrap();
        for u in &msg.updates {
            rest.push(text(u));
        }
    }
    assert_eq!(rest.len(), 320 - first_after);
    let expected: BTreeSet<&String> = seen[first_after..].iter().map(|(r, _)| r).collect();
    let got: BTreeSet<&String> = rest.iter().collect();
    assert_eq!(expected, got, "resuming yields exactly the rest");
}

fn text(u: &pb::RelationshipUpdate) -> String {
    let r = u.relationship.as_ref().unwrap();
    let s = r.subject.as_ref().unwrap().object.as_ref().unwrap();
    let o = r.resource.as_ref().unwrap();
    format!(
        "{}:{}#{}@{}:{}",
        o.object_type, o.object_id, r.relation, s.object_type, s.object_id
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kinbar serve` on `url` (as the throwaway cluster's superuser, so with
/// the override flag).
fn spawn_server(url: &str, port: u16) -> std::process::Child {
    spawn_server_as(url, port, true)
}

fn spawn_server_as(url: &str, port: u16, privileged_role: bool) -> std::process::Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinbar"));
    cmd.args([
        "serve",
        "--datastore",
        url,
        "--grpc-addr",
        &format!("127.0.0.1:{port}"),
    ]);
    if privileged_role {
        cmd.arg("--allow-privileged-datastore-role");
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `kinbar serve` on `url` (and `extra` flags) refused at start (exit
/// status 2): its stderr.
/// Bounded: a server that starts serving instead fails the test (after
/// 30 s) rather than hanging it.
fn serve_refused(url: &str, extra: &[&str]) -> String {
    let mut server = Command::new(env!("CARGO_BIN_EXE_kinbar"))
        .args(["serve", "--datastore", url, "--grpc-addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if server.try_wait().unwrap().is_some() {
            let out = server.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(2), "{err}");
            return err;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill().unwrap();
    server.wait().unwrap();
    panic!("kinbar serve {url} {extra:?} was expected to refuse to start, and serves");
}

/// A `kinbar serve` process on `url` with the test schema, its port and a
/// connected client.
async fn start_server(
    url: &str,
    privileged_role: bool,
) -> (std::process::Child, u16, PermissionsServiceClient<Channel>) {
    let port = free_port();
    let server = spawn_server_as(url, port, privileged_role);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    write_schema(addr).await;
    let client = PermissionsServiceClient::new(channel(addr).await);
    (server, port, client)
}

fn kinbar_cli(port: u16, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kinbar"))
        .args(["--endpoint", &format!("http://127.0.0.1:{port}")])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// SIGKILL in the middle of a stream of writes: after a restart every
/// acknowledged write is there with its audit record, every write is all
/// or nothing, and the audit chain verifies; then an audit row altered in
/// SQL makes `kinbar audit verify` fail, naming the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_writes_loses_nothing_acknowledged() {
    skip_without_postgres!();
    let url = database().await;
    let port = free_port();
    let mut server = spawn_server(&url, port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    write_schema(addr).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let attempted = Arc::new(AtomicUsize::new(0));
    let writer = {
        let acked = acked.clone();
        let attempted = attempted.clone();
        let mut client = PermissionsServiceClient::new(channel(addr).await);
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0.. {
                attempted.store(i + 1, Ordering::SeqCst);
                let req = touch(
                    &[
                        &format!("doc:{i}#viewer@user:a"),
                        &format!("doc:{i}#viewer@user:b"),
                        &format!("doc:{i}#editor@user:c"),
                    ],
                    &format!("w{i}"),
                );
                match client.write_relationships(req).await {
                    Ok(_) => {
                        acks.push(i);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return acks,
                }
            }
            acks
        })
    };
    while acked.load(Ordering::SeqCst) < 150 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let acks = writer.await.unwrap();
    let attempted = attempted.load(Ordering::SeqCst);
    assert!(acks.len() >= 150);

    let port = free_port();
    let mut server = spawn_server(&url, port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut client = PermissionsServiceClient::new(channel(addr).await);
    let all = read_all(
        &mut client,
        full(),
        pb::RelationshipFilter {
            resource_type: "doc".into(),
            ..Default::default()
        },
    )
    .await;
    let mut per_doc: BTreeMap<usize, usize> = BTreeMap::new();
    for r in all {
        let id: usize = r.resource.unwrap().object_id.parse().unwrap();
        *per_doc.entry(id).or_default() += 1;
    }
    for i in &acks {
        assert_eq!(per_doc.get(i), Some(&3), "acknowledged write {i} lost");
    }
    for (i, n) in &per_doc {
        assert_eq!(*n, 3, "write {i} is partial");
        assert!(*i < attempted, "write {i} was never sent");
    }
    // Each present write has exactly one audit record with its reason.
    let (code, out) = kinbar_cli(port, &["audit", "read", "--json"]);
    assert_eq!(code, 0, "{out}");
    for i in per_doc.keys() {
        let needle = format!("\"reason\":\"w{i}\"");
        assert_eq!(
            out.matches(&needle).count(),
            1,
            "audit for write {i}: {out}"
        );
    }
    let (code, out) = kinbar_cli(port, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok"), "{out}");

    // Tamper with one audit record in SQL.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // (As someone holding the migration role: a sealed row is otherwise
    // protected by a trigger.)
    sqlx::raw_sql(
        "ALTER TABLE transactions DISABLE TRIGGER transactions_sealed_is_final; \
         UPDATE transactions SET metadata = '{\"reason\": \"nothing to see\"}' WHERE audit_seq = 7",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (code, out) = kinbar_cli(port, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN") && out.contains("transaction 7"),
        "{out}"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A hash chain cannot see its newest records removed: deleting the last
/// transaction (row and changes) in SQL leaves `kinbar audit verify` ok.
/// `--complete` replays the audited changes against the stored
/// relationships and names the relationship no audit record accounts for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_verification_finds_relationships_without_audit() {
    skip_without_postgres!();
    let url = database().await;
    let (mut server, port, mut client) = start_server(&url, true).await;
    for (i, rel) in ["doc:1#viewer@user:anna", "doc:2#viewer@user:bob"]
        .iter()
        .enumerate()
    {
        written(&mut client, touch(&[rel], &format!("w{i}"))).await;
    }
    let (code, out) = kinbar_cli(port, &["audit", "verify", "--complete"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("complete: all 2 stored relationships accounted for"),
        "{out}"
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "DELETE FROM audit_changes WHERE xid = (SELECT max(xid) FROM transactions); \
         DELETE FROM transactions WHERE xid = (SELECT max(xid) FROM transactions);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (code, out) = kinbar_cli(port, &["audit", "verify"]);
    assert_eq!(code, 0, "the chain alone cannot see it: {out}");
    let (code, out) = kinbar_cli(port, &["audit", "verify", "--complete"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN")
            && out
                .contains("`doc:2#viewer@user:bob` is stored but no audit transaction created it"),
        "{out}"
    );
    assert!(!out.contains("doc:1#viewer@user:anna"), "{out}");
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Least privilege: `kinbar serve` refuses the (superuser) migration role
/// without the override flag; a runtime role with exactly the grants of
/// `kinbar migrate --print-grants` serves writes, checks, sealing and audit
/// verification, and cannot change or remove audit rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_runtime_role() {
    skip_without_postgres!();
    let url = database().await;
    // The migration role (a superuser here) is refused by default.
    let err = serve_refused(&url, &[]);
    assert!(
        err.contains("privileged Postgres role")
            && err.contains("is a superuser")
            && err.contains("--print-grants")
            && err.contains("--allow-privileged-datastore-role"),
        "{err}"
    );
    // Create the runtime role with the printed grants.
    let out = Command::new(env!("CARGO_BIN_EXE_kinbar"))
        .args(["migrate", "--print-grants", "kinbar_rt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let grants = String::from_utf8(out.stdout).unwrap();
    assert!(grants.contains("GRANT SELECT, INSERT ON transactions, audit_changes TO kinbar_rt"));
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN CREATE ROLE kinbar_rt LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; {grants}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let runtime_url = url.replacen("postgres://postgres@", "postgres://kinbar_rt@", 1);
    assert_ne!(runtime_url, url);
    let (mut server, port, mut client) = start_server(&runtime_url, false).await;
    let token = written(&mut client, touch(&["doc:1#viewer@user:anna"], "grant")).await;
    written(
        &mut client,
        write(
            pb::relationship_update::Operation::Delete,
            &["doc:1#viewer@user:anna"],
            "revoke",
        ),
    )
    .await;
    assert!(
        allowed(
            &mut client,
            check("doc:1", "view", "user:anna", exact(&token))
        )
        .await
    );
    let (code, out) = kinbar_cli(port, &["audit", "verify", "--complete"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 audit transactions verified"), "{out}");
    // The runtime role stores security events (aggregated ones add up).
    let store = kinbar::store::postgres::PostgresStore::open(
        &runtime_url,
        kinbar::store::postgres::PostgresOptions {
            seal_interval: None,
            gc_interval: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let refused = kinbar::audit::SecurityEvent {
        at_ms: 1,
        key: "anonymous".into(),
        peer: "10.1.2.3".into(),
        method: "/authzed.api.v1.SchemaService/ReadSchema".into(),
        code: "Unauthenticated".into(),
        reason: "unknown preshared key".into(),
        count: 1,
        aggregate: Some("anonymous|10.1.2.3|0".into()),
    };
    use kinbar::store::Datastore as _;
    for _ in 0..2 {
        store
            .record_security_events(std::slice::from_ref(&refused))
            .await
            .unwrap();
    }
    let stored = store.read_security_events(0, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].event.count, 2);
    // As the runtime role, audit rows cannot be changed or removed.
    let runtime = sqlx::PgPool::connect(&runtime_url).await.unwrap();
    for sql in [
        "UPDATE transactions SET metadata = '{}'",
        "UPDATE transactions SET hash = NULL WHERE audit_seq = 1",
        "DELETE FROM transactions",
        "DELETE FROM audit_changes",
        "UPDATE audit_changes SET relationship = 'x'",
        "TRUNCATE audit_changes",
        "DROP TABLE relationships",
    ] {
        let e = sqlx::raw_sql(sql).execute(&runtime).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("permission denied")
                || text.contains("must be owner")
                || text.contains("is sealed"),
            "{sql}: {text}"
        );
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `kinbar serve` refuses an unmigrated database with a clear message;
/// `kinbar migrate` applies the migrations once and is then a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_command_and_serve_refusal() {
    skip_without_postgres!();
    let url = cluster().fresh_database().await.unwrap();
    let err = serve_refused(&url, &[]);
    assert!(
        err.contains("not migrated") && err.contains("kinbar migrate"),
        "{err}"
    );
    let migrate = || {
        let out = Command::new(env!("CARGO_BIN_EXE_kinbar"))
            .args(["migrate", "--datastore", &url])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(
        migrate(),
        (
            Some(0),
            "applied migration 1\napplied migration 2\napplied migration 3\n".to_string()
        )
    );
    assert_eq!(
        migrate(),
        (Some(0), "the database is up to date\n".to_string())
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kinbar"))
        .args(["migrate", "--datastore", "memory"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The datastore password can stay out of the URL, the environment and
/// the process list: with none in the URL, Postgres's password file
/// (`PGPASSFILE`, else `~/.pgpass`, mode 0600) supplies it. Here a role
/// whose logins need a password (scram-sha-256) migrates its database with
/// the password in a file only; without the file it is refused, and the
/// password appears in no output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_can_come_from_pgpassfile() {
    use std::os::unix::fs::PermissionsExt as _;
    skip_without_postgres!();
    let admin_url = database().await;
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    let role = format!("kinbar_pw_{:08x}", rand::random::<u32>());
    let password = format!("pw-{:016x}", rand::random::<u64>());
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        format!("CREATE DATABASE {role} OWNER {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    // This role's socket logins need its password (first matching line).
    let hba: String = sqlx::query_scalar("SHOW hba_file")
        .fetch_one(&admin)
        .await
        .unwrap();
    let lines = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all {role} scram-sha-256\n{lines}")).unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&admin)
        .await
        .unwrap();
    let host = admin_url.split("host=").nth(1).unwrap().to_string();
    let url = format!("postgres://{role}@localhost/{role}?host={host}");
    let migrate = |passfile: Option<&std::path::Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kinbar"));
        cmd.args(["migrate", "--datastore", &url]);
        cmd.env_remove("PGPASSWORD");
        match passfile {
            Some(p) => cmd.env("PGPASSFILE", p),
            None => cmd.env("PGPASSFILE", "/nonexistent/pgpass"),
        };
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(&password), "the password leaked: {text}");
        (out.status.code(), text)
    };
    let (code, text) = migrate(None);
    assert_ne!(code, Some(0), "no password, yet connected: {text}");
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(&passfile, format!("*:*:{role}:{role}:{password}\n")).unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, text) = migrate(Some(&passfile));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("applied migration"), "{text}");
}

/// Backup and restore with `pg_dump`, as docs/OPERATIONS.md gives it. A
/// logical dump restored into *another* cluster carries transaction ids the
/// new cluster has not reached, and revisions are transaction ids: served
/// as it is, every relationship would be invisible and every check denied.
/// `kinbar serve` refuses such a database, saying why and where the fix is
/// documented; once the cluster's transaction ids are advanced past the
/// data's (`pg_resetwal`, as documented) it serves the same answers and the
/// restored audit chain verifies completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logical_dump_restored_into_another_cluster() {
    skip_without_postgres!();
    let source = cluster();
    let url = database().await;
    // Put the source's transaction ids well past a fresh cluster's.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "DO $$ BEGIN FOR i IN 1..5000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let (mut server, _, mut client) = start_server(&url, true).await;
    written(
        &mut client,
        touch(
            &["doc:1#viewer@user:anna", "doc:2#editor@user:bob"],
            "before the backup",
        ),
    )
    .await;
    server.kill().unwrap();
    server.wait().unwrap();
    let dump = source.dir().join("kinbar.dump");
    source
        .run_tool(
            "pg_dump",
            &["-Fc", "-d", &url, "-f", dump.to_str().unwrap()],
        )
        .unwrap();

    // Another cluster, an empty database, the dump restored.
    let target = kinbar::testing::TempPostgres::start().unwrap();
    let restored = target.fresh_database().await.unwrap();
    target
        .run_tool("pg_restore", &["-d", &restored, dump.to_str().unwrap()])
        .unwrap();
    let err = serve_refused(&restored, &["--allow-privileged-datastore-role"]);
    assert!(
        err.contains("restored from a logical dump into another cluster")
            && err.contains("docs/OPERATIONS.md"),
        "{err}"
    );

    // The documented fix, then the same answers and an intact chain.
    let pool = sqlx::PgPool::connect(&restored).await.unwrap();
    let newest: String = sqlx::query_scalar("SELECT max(xid)::text FROM transactions")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    target
        .advance_transaction_ids_past(newest.parse().unwrap())
        .unwrap();
    let port = free_port();
    let mut server = spawn_server(&restored, port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut client = PermissionsServiceClient::new(channel(addr).await);
    assert!(allowed(&mut client, check("doc:1", "view", "user:anna", full())).await);
    assert!(allowed(&mut client, check("doc:2", "view", "user:bob", full())).await);
    assert!(!allowed(&mut client, check("doc:1", "view", "user:bob", full())).await);
    let (code, out) = kinbar_cli(port, &["audit", "verify", "--complete"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("complete: all 2 stored relationships accounted for"),
        "{out}"
    );
    // And it takes writes again.
    written(
        &mut client,
        touch(&["doc:3#viewer@user:cy"], "after the restore"),
    )
    .await;
    assert!(allowed(&mut client, check("doc:3", "view", "user:cy", full())).await);
    server.kill().unwrap();
    server.wait().unwrap();
}
