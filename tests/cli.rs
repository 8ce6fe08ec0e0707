//! The `kinbar` binary: `validate` output and exit codes, `schema check|fmt`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;

fn kinbar(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kinbar"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run kinbar");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kinbar serve` on a free loopback port with `args`, once it accepts
/// connections, and its endpoint.
fn serve_with(args: &[&str], stderr: std::process::Stdio) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new(env!("CARGO_BIN_EXE_kinbar"))
        .args(["serve", "--grpc-addr", &format!("127.0.0.1:{port}")])
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(stderr)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (server, format!("http://127.0.0.1:{port}"))
}

/// The CLI against `endpoint` with `--token token`.
fn as_key(endpoint: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--endpoint", endpoint, "--token", token];
    all.extend_from_slice(args);
    kinbar(&all)
}

#[test]
fn our_validation_files_pass_exhaustively() {
    let mut files: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/validation"))
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    files.push("examples/crm/crm.yaml".into());
    let mut args = vec!["validate", "--exhaustive"];
    args.extend(files.iter().map(String::as_str));
    let (code, out, err) = kinbar(&args);
    assert_eq!(code, 0, "{out}{err}");
    for f in &files {
        assert!(out.contains(&format!("ok  {f}  (")), "{out}");
    }
    let last = out.lines().last().unwrap();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
}

#[test]
fn failing_assertions_exit_1_with_file_and_line() {
    let (code, out, _) = kinbar(&["validate", "tests/validation_bad/failing_assertion.yaml"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  tests/validation_bad/failing_assertion.yaml  (1 passed, 2 failed)"),
        "{out}"
    );
    assert!(
        out.contains(
            "tests/validation_bad/failing_assertion.yaml:12: assertTrue doc:1#view@user:bob failed"
        ),
        "{out}"
    );
    assert!(
        out.contains("failing_assertion.yaml:14: assertFalse doc:1#view@user:anna failed"),
        "{out}"
    );
    assert_eq!(out.lines().last().unwrap(), "1 passed, 2 failed");
}

#[test]
fn unparseable_files_exit_2_with_compiler_style_errors() {
    let (code, out, _) = kinbar(&["validate", "tests/validation_bad/bad_schema.yaml"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("ERROR  tests/validation_bad/bad_schema.yaml"),
        "{out}"
    );
    assert!(out.contains("error: unknown type `usr`"), "{out}");
    assert!(out.contains("3 |   relation viewer: usr"), "{out}");
    assert!(out.contains("hint: did you mean `user`?"), "{out}");

    let (code, out, _) = kinbar(&["validate", "tests/validation_bad/bad_relationship.yaml"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("relation `editor` not found on definition `doc`"),
        "{out}"
    );

    let (code, out, _) = kinbar(&["validate", "tests/validation_bad/no_such_file.yaml"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot read"), "{out}");
}

#[test]
fn caveats_fail_cleanly() {
    let (code, out, err) = kinbar(&["validate", "tests/validation_bad/caveated.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("caveats are not supported yet"), "{out}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn errors_in_one_file_do_not_hide_others() {
    let (code, out, _) = kinbar(&[
        "validate",
        "tests/validation/deep_arrows.yaml",
        "tests/validation_bad/failing_assertion.yaml",
        "tests/validation_bad/bad_schema.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(
        out.contains("ok  tests/validation/deep_arrows.yaml  (4 assertions)"),
        "{out}"
    );
    assert_eq!(out.lines().last().unwrap(), "5 passed, 2 failed");
}

#[test]
fn schema_check_and_fmt() {
    let (code, out, err) = kinbar(&["schema", "check", "examples/crm/schema.zed"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("ok  examples/crm/schema.zed  (6 definitions"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let messy = dir.path().join("messy.zed");
    std::fs::write(&messy, "definition user{}  definition doc{relation viewer:user|user:*\npermission view=viewer+  (viewer&viewer)}").unwrap();
    let (code, out, err) = kinbar(&["schema", "fmt", messy.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "definition user {}\n\ndefinition doc {\n    relation viewer: user | user:*\n    permission view = viewer + (viewer & viewer)\n}\n"
    );
    let (code, _, _) = kinbar(&["schema", "fmt", "--write", messy.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(&messy).unwrap(), out);

    std::fs::write(&messy, "definition doc { relation viewer: nope }").unwrap();
    let (code, _, err) = kinbar(&["schema", "check", messy.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("error: unknown type `nope`") && err.contains("messy.zed:1:35"),
        "{err}"
    );
}

/// Client commands against a real `kinbar serve` process.
/// A child process killed when the test ends, also when it fails (a
/// leftover server would keep the test runner's output pipe open).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kinbar serve` on a free loopback port, up and accepting; killed on drop.
fn serve_on_free_port() -> (KillOnDrop, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_kinbar"))
            .args(["serve", "--grpc-addr", &format!("127.0.0.1:{port}")])
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (server, port)
}

#[test]
fn client_commands_against_a_running_server() {
    let (server, port) = serve_on_free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let mut all = vec!["--endpoint", endpoint.as_str()];
        all.extend_from_slice(args);
        kinbar(&all)
    };
    let (code, out, err) = run(&["schema", "write", "examples/crm/schema.zed"]);
    assert_eq!(code, 0, "{out}{err}");
    // host:port, as grpcurl and zed take it (plaintext without TLS flags).
    let (code, out, err) = kinbar(&["--endpoint", &format!("127.0.0.1:{port}"), "schema", "read"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("definition customer"), "{out}");
    // Nobody listening: the error says what was tried and why it failed.
    let (code, _, err) = kinbar(&["--endpoint", "127.0.0.1:1", "schema", "read"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot connect to http://127.0.0.1:1 (plaintext)")
            && err.to_lowercase().contains("refused"),
        "{err}"
    );
    let (code, out, err) = run(&[
        "rel",
        "touch",
        "team:sales#member@user:anna",
        "customer:c42#sales_rep@team:sales#membership",
        "customer:c42#signed@user:*",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("3 relationship(s) touched at "), "{out}");
    assert_eq!(
        run(&["check", "customer:c42", "add_friend", "user:anna"]).0,
        0
    );
    let (code, out, _) = run(&["check", "customer:c42", "view", "user:bob", "--json"]);
    assert_eq!(code, 1);
    assert!(out.contains("\"allowed\":false"), "{out}");
    let (code, _, err) = run(&["check", "customer:c42", "nope", "user:bob"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("FailedPrecondition")
            && err.contains("ERROR_REASON_UNKNOWN_RELATION_OR_PERMISSION"),
        "{err}"
    );
    let (code, out, _) = run(&[
        "check",
        "customer:c42",
        "add_friend",
        "user:anna",
        "--explain",
    ]);
    assert_eq!(code, 0);
    assert!(out.starts_with("allowed\n"), "{out}");
    assert!(
        out.contains("customer:c42#signed: [user:*]   <- user:anna"),
        "{out}"
    );
    let (_, out, _) = run(&["expand", "customer:c42", "view"]);
    assert!(
        out.contains("customer:c42#sales_rep: [team:sales#membership]"),
        "{out}"
    );
    let (_, out, _) = run(&["lookup-resources", "customer", "view", "user:anna"]);
    assert_eq!(out, "customer:c42\n");
    let (_, out, _) = run(&["lookup-subjects", "customer:c42", "view", "user"]);
    assert_eq!(out, "user:anna\n");
    let (_, out, _) = run(&["rel", "read", "customer:c42#signed"]);
    assert_eq!(out, "customer:c42#signed@user:*\n");
    let (code, _, err) = run(&["rel", "create", "customer:c42#signed@user:*"]);
    assert_eq!(code, 2);
    assert!(err.contains("AlreadyExists"), "{err}");
    assert_eq!(run(&["rel", "delete", "customer:c42#signed@user:*"]).0, 0);
    assert_eq!(
        run(&["check", "customer:c42", "add_friend", "user:anna"]).0,
        1
    );
    let (_, out, _) = run(&["schema", "read"]);
    assert!(out.contains("definition customer {"), "{out}");

    // The audit trail records who and why.
    assert_eq!(
        run(&[
            "--reason",
            "handover to sam",
            "rel",
            "touch",
            "customer:c42#owner@user:sam"
        ])
        .0,
        0
    );
    let (code, out, err) = run(&["audit", "read", "--object", "user:sam"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("by anonymous {\"reason\":\"handover to sam\"}")
            && out.contains("    touch customer:c42#owner@user:sam"),
        "{out}"
    );
    let (code, out, _) = run(&["audit", "verify"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ok  "), "{out}");
    let (code, out, _) = run(&["audit", "verify", "--complete"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stored relationships accounted for"), "{out}");

    // Access review at one revision, CSV and JSON; lookups as JSON lines.
    let (code, out, err) = run(&["review", "--subject", "user:anna"]);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("resource,permission,subject,revision"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 4), "{out}");
    assert!(
        rows.iter()
            .any(|r| r[0] == "customer:c42" && r[1] == "view" && r[2] == "user:anna"),
        "{out}"
    );
    let revisions: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[3]).collect();
    assert_eq!(
        revisions.len(),
        1,
        "one revision for the whole review: {out}"
    );
    let (code, out, err) = run(&["review", "--resource", "customer:c42", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        v["grants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["permission"] == "view" && g["subject"] == "user:anna"),
        "{out}"
    );
    let (code, out, err) = run(&[
        "lookup-resources",
        "customer",
        "view",
        "user:anna",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["subject"], "user:anna");
    assert!(
        first["revision"].as_str().is_some_and(|r| !r.is_empty()),
        "{out}"
    );
    assert_eq!(run(&["review"]).0, 2, "--subject or --resource is required");

    // Offboarding: everything anna had moves to sam in one transaction.
    assert_eq!(run(&["rel", "touch", "task:t1#assignee@user:anna"]).0, 0);
    let (code, out, err) = run(&["rel", "handover", "user:anna", "user:sam"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("2 relationship(s) handed over from user:anna to user:sam"),
        "{out}"
    );
    assert_eq!(run(&["rel", "read", "@user:anna"]).1, "");
    let (_, out, _) = run(&["rel", "read", "@user:sam"]);
    assert!(
        out.contains("task:t1#assignee@user:sam") && out.contains("team:sales#member@user:sam"),
        "{out}"
    );
    let (_, out, _) = run(&[
        "audit",
        "read",
        "--actor",
        "anonymous",
        "--object",
        "user:anna",
    ]);
    assert!(
        out.contains("offboarding: user:anna hands over to user:sam")
            && out.contains("delete task:t1#assignee@user:anna"),
        "{out}"
    );

    // `kinbar offboard`: a dry run lists, the real run removes, --json reports.
    assert_eq!(run(&["rel", "touch", "task:t2#assignee@user:sam"]).0, 0);
    let (code, out, err) = run(&["offboard", "user:sam", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("dry run: 4 relationship(s) of user:sam would be removed"),
        "{out}"
    );
    assert!(out.contains("  task:t2#assignee@user:sam"), "{out}");
    let (code, out, err) = run(&["offboard", "user:sam", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["committed"], true);
    assert_eq!(v["relationships"].as_array().unwrap().len(), 4);
    assert_eq!(run(&["rel", "read", "@user:sam"]).1, "");

    // import / export round trip.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rels.txt");
    std::fs::write(
        &file,
        "// offboarding handover
customer:c50#owner@user:sam

customer:c51#owner@user:sam
",
    )
    .unwrap();
    let (code, out, err) = run(&["import", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "imported 2 relationship(s)\n");
    let (_, out, _) = run(&["export"]);
    assert!(
        out.contains("customer:c50#owner@user:sam\ncustomer:c51#owner@user:sam\n"),
        "{out}"
    );
    // --json on the read commands: one document or one object per line.
    let (_, out, _) = run(&["export", "--json"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["relationship"] == "customer:c50#owner@user:sam"),
        "{out}"
    );
    let (_, out, _) = run(&["schema", "read", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["schema"]
            .as_str()
            .unwrap()
            .contains("definition customer"),
        "{out}"
    );
    assert!(!v["read_at"].as_str().unwrap().is_empty(), "{out}");
    let (code, out, _) = run(&["audit", "verify", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["intact"], true, "{out}");
    assert!(v["verified_transactions"].as_u64().unwrap() >= 2, "{out}");
    std::fs::write(&file, "customer:c52#owner@user:sam\nnot a relationship\n").unwrap();
    let (code, _, err) = run(&["import", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("rels.txt:2:"), "{err}");

    // watch prints changes as they commit.
    let line = first_watched_change(&endpoint, &[], |i| {
        assert_eq!(
            run(&["rel", "touch", &format!("customer:w{i}#owner@user:wes")]).0,
            0
        )
    });
    assert!(
        line.starts_with("+ customer:w") && line.contains("#owner@user:wes "),
        "{line}"
    );
    assert!(line.contains("\"actor\":\"anonymous\""), "{line}");

    // watch --json: one object per transaction.
    let line = first_watched_change(&endpoint, &["--json"], |i| {
        assert_eq!(
            run(&["rel", "touch", &format!("customer:j{i}#owner@user:jo")]).0,
            0
        )
    });
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["changes"][0]["operation"], "write", "{line}");
    assert!(
        v["changes"][0]["relationship"]
            .as_str()
            .unwrap()
            .starts_with("customer:j"),
        "{line}"
    );
    assert!(!v["revision"].as_str().unwrap().is_empty(), "{line}");
    assert_eq!(v["metadata"]["actor"], "anonymous", "{line}");

    // watch --since REVISION: a consumer that stopped after that revision
    // resumes with the next change, made while nobody was watching.
    let seen = v["revision"].as_str().unwrap().to_string();
    assert_eq!(
        run(&[
            "--reason",
            "while away",
            "rel",
            "touch",
            "customer:after#owner@user:jo"
        ])
        .0,
        0
    );
    let line = first_watched_change(&endpoint, &["--json", "--since", &seen], |_| {});
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v["changes"][0]["relationship"], "customer:after#owner@user:jo",
        "{line}"
    );
    assert_eq!(v["metadata"]["reason"], "while away", "{line}");
    let (code, _, err) = run(&["watch", "--since", "not-a-token"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("InvalidArgument"), "{err}");
    drop(server);
}

#[test]
fn serve_reads_kinbar_env_variables() {
    let out = Command::new(env!("CARGO_BIN_EXE_kinbar"))
        .args(["serve", "--grpc-addr", "127.0.0.1:0"])
        .env("KINBAR_PRESHARED_KEY", "ops:longenough:superuser")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown scope `superuser`"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_kinbar"))
        .args(["serve"])
        .env("KINBAR_GRPC_ADDR", "0.0.0.0:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve without authentication on 0.0.0.0:"),
        "{err}"
    );
}

/// The vendored SpiceDB corpus (tests/conformance, unchanged upstream
/// files): exactly 73 files, of which the 50 listed in `phase1.txt` pass
/// exhaustively (Check ⇔ Expand ⇔ lookups over every object and subject).
#[test]
fn spicedb_phase1_corpus_passes_exhaustively() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance");
    let all = std::fs::read_dir(format!("{dir}/spicedb"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert_eq!(all, 73, "vendored corpus files");
    let list = std::fs::read_to_string(format!("{dir}/phase1.txt")).unwrap();
    let files: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("tests/conformance/spicedb/{l}"))
        .collect();
    assert_eq!(files.len(), 50, "phase-1 files");
    let mut args = vec!["validate", "--exhaustive"];
    args.extend(files.iter().map(String::as_str));
    let (code, out, err) = kinbar(&args);
    assert_eq!(code, 0, "{out}{err}");
    for f in &files {
        assert!(
            out.contains(&format!("ok  {f}  (")),
            "{f} missing from: {out}"
        );
    }
}

/// Refused calls are security events on the `kinbar::security` log
/// target — key name or `anonymous`, peer, method, reason — and the
/// presented token never appears in any output.
#[test]
fn refused_calls_are_logged_as_security_events_without_tokens() {
    let (server, endpoint) = serve_with(
        &[
            "--log-format",
            "json",
            "--preshared-key",
            "crm-reader:ReaderKey123:check",
        ],
        std::process::Stdio::piped(),
    );
    let run = |token: &str, args: &[&str]| as_key(&endpoint, token, args);
    // An unknown key, then a known key without the scope.
    let (code, _, err) = run("WrongKey456789", &["schema", "read"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run("ReaderKey123", &["rel", "touch", "doc:1#viewer@user:a"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    let mut server = server;
    server.kill().unwrap();
    let out = server.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "kinbar::security")
        .collect();
    assert_eq!(events.len(), 2, "{log}");
    assert_eq!(events[0]["fields"]["key"], "anonymous", "{log}");
    assert!(
        events[0]["fields"]["method"]
            .as_str()
            .unwrap()
            .ends_with("SchemaService/ReadSchema"),
        "{log}"
    );
    assert_eq!(events[1]["fields"]["key"], "crm-reader", "{log}");
    // Every line logged during a call carries the call's request id (the
    // `rpc` span), distinct per call.
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["span"]["request_id"].as_str().unwrap_or_default())
        .collect();
    assert!(
        ids.iter().all(|id| id.len() >= 16) && ids[0] != ids[1],
        "{log}"
    );
    assert!(
        events[1]["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        !log.contains("WrongKey456789") && !log.contains("ReaderKey123"),
        "a token reached the log: {log}"
    );
}

/// docs/OPERATIONS.md names every `kinbar serve` flag, its environment
/// variable and every configuration key, so the reference cannot drift.
#[test]
fn operations_guide_names_every_setting() {
    let guide = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/OPERATIONS.md"),
    )
    .unwrap();
    let (code, help, _) = kinbar(&["serve", "--help"]);
    assert_eq!(code, 0);
    let mut named = 0;
    for word in help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        let word = word.trim_end_matches('=');
        if (word.starts_with("--") && word.len() > 2 && word != "--help")
            || word.starts_with("KINBAR_")
        {
            assert!(
                guide.contains(word),
                "docs/OPERATIONS.md does not mention {word}"
            );
            named += 1;
        }
    }
    assert!(
        named > 40,
        "parsed only {named} flags and variables from --help"
    );
    let (code, config, _) = kinbar(&[
        "serve",
        "--print-config",
        "--metrics-addr",
        "127.0.0.1:9090",
        "--tls-cert",
        "c",
        "--tls-key",
        "k",
        "--tls-client-ca",
        "ca",
        "--postgres-read-replica",
        "postgres://r/db",
    ]);
    assert_eq!(code, 0, "{config}");
    for line in config.lines() {
        let key = line.split(" = ").next().unwrap();
        assert!(
            guide.contains(&format!("`{key}`")),
            "docs/OPERATIONS.md does not mention the configuration key `{key}`"
        );
    }
    // Each key's row gives the default the code has (`--print-config`
    // with nothing set): the reference cannot drift from the code.
    let (code, defaults, _) = kinbar(&["serve", "--print-config"]);
    assert_eq!(code, 0, "{defaults}");
    let mut compared = 0;
    for line in defaults.lines() {
        let (key, value) = line.split_once(" = ").unwrap();
        let row = guide
            .lines()
            .find(|l| {
                l.starts_with('|')
                    && l.split('|').nth(3).map(str::trim) == Some(&format!("`{key}`"))
            })
            .unwrap_or_else(|| panic!("docs/OPERATIONS.md has no table row for `{key}`"));
        let documented = row.split('|').nth(4).unwrap().trim().trim_matches('`');
        let expected = match value.trim_matches('"') {
            "[]" => "none",
            "false" => "off",
            v => v,
        };
        assert_eq!(
            documented, expected,
            "docs/OPERATIONS.md gives `{key}` the default {documented}, the code {value}"
        );
        compared += 1;
    }
    assert!(compared > 30, "compared only {compared} defaults");
}

/// Reads shell text as bash does for quotes and comments: where its first
/// `# comment` starts (a `#` outside quotes at the start of a word —
/// `team:sales#member` is not one; a comment runs to the end of its line,
/// its apostrophes aside) and whether the text ends inside a quoted string.
fn shell_scan(text: &str) -> (Option<usize>, bool) {
    let (mut quote, mut comment, mut prev) = (None, false, ' ');
    let mut first_comment = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            _ if comment => comment = c != '\n',
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') if prev.is_whitespace() => {
                comment = true;
                first_comment.get_or_insert(i);
            }
            _ => {}
        }
        prev = c;
    }
    (first_comment, quote.is_some())
}

/// Splits a shell line into its command and its trailing `# comment`.
fn split_comment(line: &str) -> (&str, &str) {
    match shell_scan(line).0 {
        Some(i) => (line[..i].trim_end(), line[i + 1..].trim()),
        None => (line.trim_end(), ""),
    }
}

/// The shell lines of a walkthrough's ```sh blocks, continuations joined,
/// from the heading `from` (when given) to the next heading of its level;
/// the build steps (`cargo …`, `K=…`) are left out (the test supplies the
/// binary) and grpcurl lines too (tests/clients/test_grpcurl.sh runs them).
fn walkthrough_lines(doc: &str, from: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    let (mut in_block, mut in_section) = (false, from.is_none());
    let mut pending = String::new();
    for line in doc.lines() {
        if let Some(heading) = from {
            if line == heading {
                in_section = true;
            } else if in_section && line.starts_with("## ") {
                break;
            }
        }
        if !in_section {
            continue;
        }
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            pending.push_str(part);
            continue;
        }
        pending.push_str(line);
        if shell_scan(&pending).1 {
            // A quoted argument spanning lines (grpcurl's JSON bodies).
            pending.push('\n');
            continue;
        }
        let whole = std::mem::take(&mut pending);
        let command = split_comment(&whole).0;
        if command.is_empty()
            || ["cargo ", "K=", "grpcurl "]
                .iter()
                .any(|p| command.starts_with(p))
        {
            continue;
        }
        lines.push(whole);
    }
    lines
}

/// Runs a walkthrough's lines as written, in one bash session, against a
/// fresh `kinbar serve` (`$K` is this build's binary, `KINBAR_ENDPOINT` its
/// address), in a scratch directory where `examples/` is the repository's.
/// Each line must exit 0, or 1 when its comment starts with "denied"; a
/// line ending in `&` runs in the background until the end.
fn run_walkthrough(name: &str, lines: &[String]) {
    let (_server, port) = serve_on_free_port();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"),
        dir.path().join("examples"),
    )
    .unwrap();
    let mut script = String::from("set -u\n");
    for (i, line) in lines.iter().enumerate() {
        if split_comment(line).0.ends_with('&') {
            script.push_str(line);
            script.push('\n');
        } else {
            // The newline before `}` ends the line's comment.
            script.push_str(&format!(
                "{{ {line}\n}} > out.{i} 2>&1 < /dev/null; echo $? > status.{i}\n"
            ));
        }
    }
    script.push_str("kill $(jobs -p) 2>/dev/null; wait; true\n");
    let status = Command::new("timeout")
        .args(["300", "bash", "-c", &script])
        .current_dir(dir.path())
        .env("K", env!("CARGO_BIN_EXE_kinbar"))
        .env("KINBAR_ENDPOINT", format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{name}: the walkthrough's shell failed");
    for (i, line) in lines.iter().enumerate() {
        let (command, comment) = split_comment(line);
        if command.ends_with('&') {
            continue;
        }
        let read = |f: String| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
        let code = read(format!("status.{i}"));
        let want = if comment.starts_with("denied") {
            "1"
        } else {
            "0"
        };
        assert_eq!(
            code.trim(),
            want,
            "{name}: `{line}` exited {code}:\n{}",
            read(format!("out.{i}"))
        );
    }
}

/// README.md's "Try it" and examples/crm/README.md run as written: every
/// command, in order, with its shell syntax (quotes, redirections, pipes,
/// a background consumer); "denied" lines must exit 1.
#[test]
fn walkthroughs_run_as_written() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines = walkthrough_lines(&readme, Some("## Try it"));
    assert!(lines.len() >= 12, "README's Try it: {lines:?}");
    run_walkthrough("README.md", &lines);
    let crm = std::fs::read_to_string(root.join("examples/crm/README.md")).unwrap();
    let lines = walkthrough_lines(&crm, None);
    assert!(lines.len() >= 30, "the CRM walkthrough: {lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("$K ") || !l.contains("kinbar ")),
        "{lines:?}"
    );
    run_walkthrough("examples/crm/README.md", &lines);
}

/// Starts `kinbar watch EXTRA...`, makes writes with `write(i)` until it
/// prints a line (the watch starts at the head when the server gets it;
/// bounded), stops it and returns that line.
fn first_watched_change(endpoint: &str, extra: &[&str], write: impl Fn(usize)) -> String {
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_kinbar"))
        .args(["--endpoint", endpoint, "watch"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut seen = None;
    for i in 0..50 {
        write(i);
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            seen = Some(line);
            break;
        }
    }
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    seen.expect("watch printed a change")
}

/// Security events are stored (issue 17 item 8): an authenticated key's
/// refusals one by one, calls without a valid key aggregated per peer and
/// minute, readable with `kinbar audit read --security` (admin scope) and
/// never holding a presented token.
#[test]
fn refused_calls_are_stored_as_security_events() {
    let (mut server, endpoint) = serve_with(
        &[
            "--preshared-key",
            "crm-reader:ReaderKey123:check",
            "--preshared-key",
            "root:RootKey123456:admin",
        ],
        std::process::Stdio::null(),
    );
    let run = |token: &str, args: &[&str]| as_key(&endpoint, token, args);
    for i in 0..3 {
        let (code, _, err) = run(
            "ReaderKey123",
            &["rel", "touch", &format!("doc:{i}#viewer@user:a")],
        );
        assert_eq!(code, 2, "{err}");
    }
    for _ in 0..12 {
        let (code, _, err) = run("WrongKey456789", &["schema", "read"]);
        assert_eq!(code, 2, "{err}");
    }
    // Reading them needs the admin scope (and that refusal is one more).
    let (code, _, err) = run("ReaderKey123", &["audit", "read", "--security"]);
    assert_eq!(code, 2, "{err}");
    // Stored within a second or two.
    let mut events: Vec<serde_json::Value> = Vec::new();
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (code, out, err) = run("RootKey123456", &["audit", "read", "--security", "--json"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            !out.contains("ReaderKey123") && !out.contains("WrongKey456789"),
            "{out}"
        );
        events = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let anonymous: u64 = events
            .iter()
            .filter(|e| e["key"] == "anonymous")
            .map(|e| e["count"].as_u64().unwrap())
            .sum();
        if events.iter().filter(|e| e["key"] == "crm-reader").count() == 4 && anonymous == 12 {
            break;
        }
    }
    let reader: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["key"] == "crm-reader").collect();
    assert_eq!(reader.len(), 4, "{events:?}");
    assert!(
        reader[..3].iter().all(|e| e["method"]
            .as_str()
            .unwrap()
            .ends_with("/WriteRelationships")
            && e["code"] == "PermissionDenied"
            && e["count"] == 1),
        "{events:?}"
    );
    assert!(
        reader[3]["method"]
            .as_str()
            .unwrap()
            .ends_with("/ReadSecurityEvents")
    );
    let anonymous: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["key"] == "anonymous").collect();
    // One row per peer and minute (two if the calls straddled a minute).
    assert!(matches!(anonymous.len(), 1 | 2), "{events:?}");
    assert_eq!(
        anonymous
            .iter()
            .map(|e| e["count"].as_u64().unwrap())
            .sum::<u64>(),
        12,
        "{events:?}"
    );
    assert!(
        anonymous
            .iter()
            .all(|e| e["peer"] == "127.0.0.1" && e["code"] == "Unauthenticated")
    );
    let (code, text, err) = run("RootKey123456", &["audit", "read", "--security"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("anonymous from 127.0.0.1"), "{text}");
    server.kill().unwrap();
    server.wait().unwrap();
}
