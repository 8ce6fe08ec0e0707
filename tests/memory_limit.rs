//! A `kinbar serve` process under a 1 GiB memory limit survives every
//! request of the randomized recursive-schema test (issue 17 acceptance):
//! on random recursive schemas over random data with cycles, every Check,
//! Expand and lookup over gRPC is answered or refused with a clean code
//! (FAILED_PRECONDITION for a cycle through an exclusion,
//! RESOURCE_EXHAUSTED for a budget, DEADLINE_EXCEEDED) — never a dropped
//! connection, INTERNAL or UNKNOWN — and the process is still alive and
//! answering at the end.
//!
//! The limit is `RLIMIT_DATA` (`prlimit --data`): since Linux 4.7 it caps
//! the heap and every private anonymous mapping, so an allocation past
//! 1 GiB fails and Rust aborts the process — which this test would see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::{Child, Command, Stdio};

use kinbar::api::proto::authzed::api::v1 as pb;
use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::Code;
use tonic::transport::Channel;

mod common;
use common::recursive::{NODES, PERMS, USERS, expr, relationship, schema};
use common::{check_req, full, obj, subj, touch_all};

const LIMIT: u64 = 1 << 30;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A refusal a client can act on; anything else is a failure.
fn clean(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::FailedPrecondition | Code::ResourceExhausted | Code::DeadlineExceeded
    )
}

async fn case(ch: &Channel, perms: &[String], rels: &[String]) -> Result<(), TestCaseError> {
    let mut schemas = SchemaServiceClient::new(ch.clone());
    let mut client = PermissionsServiceClient::new(ch.clone());
    // Start from no relationships, so any schema may be written.
    client
        .delete_relationships(pb::DeleteRelationshipsRequest {
            relationship_filter: Some(pb::RelationshipFilter {
                resource_type: "node".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(|s| TestCaseError::fail(format!("delete: {s}")))?;
    if schemas
        .write_schema(pb::WriteSchemaRequest {
            schema: schema(perms),
        })
        .await
        .is_err()
    {
        // A generated expression the type checker refuses.
        return Ok(());
    }
    let mut unique: Vec<&str> = rels.iter().map(String::as_str).collect();
    unique.sort_unstable();
    unique.dedup();
    if !unique.is_empty() {
        client
            .write_relationships(touch_all(&unique))
            .await
            .map_err(|s| TestCaseError::fail(format!("write: {s}")))?;
    }
    let answered = |what: String, r: Result<(), tonic::Status>| match r {
        Ok(()) => Ok(()),
        Err(s) if clean(&s) => Ok(()),
        Err(s) => Err(TestCaseError::fail(format!(
            "{what}: {} {}",
            s.code(),
            s.message()
        ))),
    };
    for n in 0..NODES {
        for p in PERMS {
            let r = client
                .expand_permission_tree(pb::ExpandPermissionTreeRequest {
                    consistency: full(),
                    resource: obj("node", &format!("n{n}")),
                    permission: p.into(),
                })
                .await;
            answered(format!("expand n{n}#{p}"), r.map(|_| ()))?;
            for u in 0..USERS {
                let r = client
                    .check_permission(check_req(
                        &format!("node:n{n}"),
                        p,
                        &format!("user:u{u}"),
                        full(),
                    ))
                    .await;
                answered(format!("check n{n}#{p}@u{u}"), r.map(|_| ()))?;
            }
        }
    }
    for p in PERMS {
        let r = async {
            let mut s = client
                .lookup_resources(pb::LookupResourcesRequest {
                    consistency: full(),
                    resource_object_type: "node".into(),
                    permission: p.into(),
                    subject: subj("user", "u0", ""),
                    ..Default::default()
                })
                .await?
                .into_inner();
            while s.message().await?.is_some() {}
            let mut s = client
                .lookup_subjects(pb::LookupSubjectsRequest {
                    consistency: full(),
                    resource: obj("node", "n0"),
                    permission: p.into(),
                    subject_object_type: "user".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            while s.message().await?.is_some() {}
            Ok(())
        }
        .await;
        answered(format!("lookups {p}"), r)?;
    }
    Ok(())
}

#[test]
fn a_server_under_a_1_gib_limit_survives_every_recursive_request() {
    let addr = common::free_addr();
    let server = Serve(
        Command::new("prlimit")
            .arg(format!("--data={LIMIT}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_kinbar"))
            .args(["serve", "--grpc-addr", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prlimit (util-linux) runs kinbar serve"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ch = rt.block_on(common::channel(addr));
    // The limit is in force on the server process.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.0.id())).unwrap();
    let data = limits
        .lines()
        .find(|l| l.starts_with("Max data size"))
        .unwrap();
    assert!(data.contains(&LIMIT.to_string()), "{data}");

    // A first schema, so that each case can start by deleting.
    let viewer = vec!["viewer".to_string(); 3];
    rt.block_on(
        SchemaServiceClient::new(ch.clone()).write_schema(pb::WriteSchemaRequest {
            schema: schema(&viewer),
        }),
    )
    .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 60,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(expr(2), 3),
        prop::collection::vec(relationship(), 0..60),
    );
    let result = runner.run(&strategy, |(perms, rels)| {
        rt.block_on(case(&ch, &perms, &rels))
    });
    let mut server = server;
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server died under its 1 GiB limit"
    );
    result.unwrap();
    // And it still answers.
    let status = rt.block_on(common::health_status(ch)).unwrap();
    assert_eq!(status, 1);
}
