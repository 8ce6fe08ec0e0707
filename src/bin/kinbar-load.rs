//! Load generator: CheckPermission throughput and latency over loopback at
//! several concurrencies, beside an empty-RPC baseline (gRPC health check)
//! measured in the same run against the same server.
//!
//! By default it starts an in-process server on 127.0.0.1:0 with the CRM
//! example schema and a seeded dataset; `--endpoint` targets a running
//! server instead (loopback only). Request loops are bounded by count.
//!
//! `--datastore postgres` runs the in-process server on a throwaway Postgres
//! cluster (started and removed by the tool) instead of the memory store;
//! `--customers N` scales the dataset (3 relationships per customer);
//! `--cache-capacity 0` measures uncached evaluation; `--writes` adds write
//! throughput (one relationship per write, and batches of 1,000) and, on
//! Postgres, the cost of a garbage-collection pass.
//!
//! `cargo run --release --bin kinbar-load -- [--requests N] [--concurrency 1,8,32,64]
//!   [--datastore memory|postgres] [--customers N] [--cache-capacity N] [--writes] [--lookups]`
//!
//! `--lookups` adds LookupResources and LookupSubjects over gRPC: time to
//! the first streamed result and to the last, for a user who sees one
//! customer, for one who sees every customer (the sales team), and for the
//! subjects of one customer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark tool: failing loudly is right

use std::time::{Duration, Instant};

use kinbar::api::proto::authzed::api::v1 as pb;
use kinbar::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use kinbar::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
use tonic::transport::Channel;

struct Args {
    requests: usize,
    concurrency: Vec<usize>,
    endpoint: Option<String>,
    datastore: String,
    customers: usize,
    cache_capacity: Option<u64>,
    writes: bool,
    lookups: bool,
}

fn args() -> Args {
    let mut a = Args {
        requests: 20_000,
        concurrency: vec![1, 8, 32, 64],
        endpoint: None,
        datastore: "memory".into(),
        customers: 1000,
        cache_capacity: None,
        writes: false,
        lookups: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--requests" => {
                a.requests = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--requests N")
            }
            "--concurrency" => {
                a.concurrency = it
                    .next()
                    .expect("--concurrency 1,8,32")
                    .split(',')
                    .map(|c| c.parse().expect("number"))
                    .collect()
            }
            "--endpoint" => a.endpoint = it.next(),
            "--datastore" => a.datastore = it.next().expect("--datastore memory|postgres"),
            "--customers" => {
                a.customers = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--customers N")
            }
            "--cache-capacity" => {
                a.cache_capacity = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--cache-capacity N"),
                )
            }
            "--writes" => a.writes = true,
            "--lookups" => a.lookups = true,
            other => panic!(
                "unknown flag {other}; flags: --requests N --concurrency 1,8,32 --endpoint URL \
                 --datastore memory|postgres --customers N --cache-capacity N --writes --lookups"
            ),
        }
    }
    a
}

async fn seed(channel: Channel, customers: usize) -> Option<pb::ZedToken> {
    let mut schema = SchemaServiceClient::new(channel.clone());
    schema
        .write_schema(pb::WriteSchemaRequest {
            schema: include_str!("../../examples/crm/schema.zed").into(),
        })
        .await
        .expect("write schema");
    let mut perms = PermissionsServiceClient::new(channel);
    let mut texts = vec![
        "team:sales#member@team:juniors#member".to_string(),
        "team:juniors#member@user:jules".to_string(),
    ];
    for i in 0..customers {
        texts.push(format!("customer:c{i}#sales_rep@team:sales#membership"));
        texts.push(format!("customer:c{i}#owner@user:o{i}"));
        texts.push(format!("customer:c{i}#signed@user:*"));
    }
    let mut token = None;
    let started = Instant::now();
    for chunk in texts.chunks(1000) {
        let updates = chunk
            .iter()
            .map(|t| pb::RelationshipUpdate {
                operation: pb::relationship_update::Operation::Touch as i32,
                relationship: Some(kinbar::api::convert::relationship_pb(&t.parse().unwrap())),
            })
            .collect();
        token = perms
            .write_relationships(pb::WriteRelationshipsRequest {
                updates,
                optional_preconditions: vec![],
                optional_transaction_metadata: None,
            })
            .await
            .expect("seed relationships")
            .into_inner()
            .written_at;
    }
    eprintln!(
        "seeded {} relationships in {:.1} s",
        texts.len(),
        started.elapsed().as_secs_f64()
    );
    token
}

fn touches(texts: &[String]) -> pb::WriteRelationshipsRequest {
    pb::WriteRelationshipsRequest {
        updates: texts
            .iter()
            .map(|t| pb::RelationshipUpdate {
                operation: pb::relationship_update::Operation::Touch as i32,
                relationship: Some(kinbar::api::convert::relationship_pb(&t.parse().unwrap())),
            })
            .collect(),
        optional_preconditions: vec![],
        optional_transaction_metadata: None,
    }
}

/// Write throughput: relationships per second, one per write and batched.
/// Results, time to the first streamed result and to the end of the stream.
type Timed = (usize, Duration, Duration);

async fn timed_stream<T>(
    stream: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    started: Instant,
) -> Timed {
    let mut stream = stream.expect("lookup").into_inner();
    let mut first = None;
    let mut n = 0;
    while let Some(_item) = stream.message().await.expect("lookup stream") {
        first.get_or_insert_with(|| started.elapsed());
        n += 1;
    }
    let all = started.elapsed();
    (n, first.unwrap_or(all), all)
}

async fn lookup_latency(channel: Channel, consistency: Option<pb::Consistency>, customers: usize) {
    let mut p = PermissionsServiceClient::new(channel);
    let user = |id: String| pb::SubjectReference {
        object: Some(pb::ObjectReference {
            object_type: "user".into(),
            object_id: id,
        }),
        optional_relation: String::new(),
    };
    let resources = |subject| pb::LookupResourcesRequest {
        consistency: consistency.clone(),
        resource_object_type: "customer".into(),
        permission: "view".into(),
        subject: Some(subject),
        ..Default::default()
    };
    println!();
    println!(
        "| lookup over gRPC | queries | results / query | first result (mean) | all results (mean) | all results (max) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut rows: Vec<(String, Vec<Timed>)> = Vec::new();
    let mut one = Vec::new();
    for k in 0..20 {
        let t = Instant::now();
        let req = resources(user(format!("o{}", (k * 7919) % customers)));
        one.push(timed_stream(p.lookup_resources(req).await, t).await);
    }
    rows.push((
        "LookupResources customer#view, owner of one customer".into(),
        one,
    ));
    let mut all = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        all.push(timed_stream(p.lookup_resources(resources(user("jules".into()))).await, t).await);
    }
    rows.push((
        format!("LookupResources customer#view, sales team (all {customers})"),
        all,
    ));
    let mut subjects = Vec::new();
    for k in 0..20 {
        let t = Instant::now();
        let req = pb::LookupSubjectsRequest {
            consistency: consistency.clone(),
            resource: Some(pb::ObjectReference {
                object_type: "customer".into(),
                object_id: format!("c{}", (k * 7919) % customers),
            }),
            permission: "view".into(),
            subject_object_type: "user".into(),
            ..Default::default()
        };
        subjects.push(timed_stream(p.lookup_subjects(req).await, t).await);
    }
    rows.push(("LookupSubjects customer#view of type user".into(), subjects));
    for (name, runs) in rows {
        let n = runs.len().max(1) as f64;
        let mean = |f: fn(&Timed) -> Duration| {
            runs.iter().map(|r| f(r).as_secs_f64()).sum::<f64>() / n * 1e3
        };
        println!(
            "| {name} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
            runs.len(),
            runs.iter().map(|r| r.0).sum::<usize>() as f64 / n,
            mean(|r| r.1),
            mean(|r| r.2),
            runs.iter()
                .map(|r| r.2)
                .max()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
        );
    }
}

async fn write_throughput(channel: Channel) {
    println!();
    println!("| writes | concurrency | writes/s | relationships/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    for (batch, concurrency, writes) in [(1, 1, 500), (1, 8, 2000), (1000, 1, 20), (1000, 4, 40)] {
        let ch = channel.clone();
        let stats = measure(concurrency, writes, move |i| {
            let mut p = PermissionsServiceClient::new(ch.clone());
            let texts: Vec<String> = (0..batch)
                .map(|j| format!("customer:w{i}x{j}#owner@user:writer{j}"))
                .collect();
            async move {
                p.write_relationships(touches(&texts)).await.unwrap();
            }
        })
        .await;
        println!(
            "| {batch} per write | {concurrency} | {:.0} | {:.0} | {:.0} µs | {:.0} µs |",
            stats.rps,
            stats.rps * batch as f64,
            stats.p50.as_secs_f64() * 1e6,
            stats.p99.as_secs_f64() * 1e6,
        );
    }
}

/// The cost of collecting `n` dead versions on Postgres.
async fn gc_cost(url: &str, n: usize) {
    use kinbar::store::postgres::{PostgresOptions, PostgresStore};
    use kinbar::store::{Datastore, Operation, Update, WriteTxn};
    let store = PostgresStore::open(
        url,
        PostgresOptions {
            seal_interval: None,
            gc_interval: None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        for op in [Operation::Touch, Operation::Delete] {
            let updates = chunk
                .iter()
                .map(|i| Update {
                    operation: op,
                    relationship: format!("customer:gc{i}#owner@user:g").parse().unwrap(),
                })
                .collect();
            store
                .write(&WriteTxn {
                    updates,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    // The first pass publishes the horizon, the second collects.
    store.gc_with_window(Duration::ZERO).await.unwrap();
    // Collection waits until readers have seen the published horizon.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let started = Instant::now();
    let stats = store.gc_with_window(Duration::ZERO).await.unwrap();
    let took = started.elapsed();
    println!();
    println!(
        "GC pass: {} dead versions collected in {:.0} ms ({:.0} versions/s, batches of 1,000)",
        stats.relationships_deleted,
        took.as_secs_f64() * 1e3,
        stats.relationships_deleted as f64 / took.as_secs_f64()
    );
}

struct Stats {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure<F, Fut>(concurrency: usize, requests: usize, call: F) -> Stats
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per_task = requests / concurrency;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let s = Instant::now();
                call(t * per_task + i).await;
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort();
    Stats {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50: all[all.len() / 2],
        p99: all[(all.len() * 99 / 100).min(all.len() - 1)],
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut pg = None;
    let datastore = match a.datastore.as_str() {
        "memory" => "memory".to_string(),
        "postgres" => {
            let cluster = kinbar::testing::TempPostgres::start().expect("throwaway Postgres");
            let url = cluster.fresh_database().await.expect("database");
            kinbar::store::postgres::PostgresStore::migrate(&url)
                .await
                .expect("migrate");
            pg = Some(cluster);
            url
        }
        other => panic!("--datastore memory|postgres, not {other}"),
    };
    let (endpoint, _server) = match &a.endpoint {
        Some(e) => (e.clone(), None),
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut config = kinbar::config::Config {
                revision_quantum_ms: 5_000,
                datastore: datastore.clone(),
                max_updates_per_write: 1000,
                // The throwaway cluster's role is a superuser.
                allow_privileged_datastore_role: true,
                ..Default::default()
            };
            if let Some(c) = a.cache_capacity {
                config.cache_capacity = c;
            }
            let handle = tokio::spawn(kinbar::server::run(
                config,
                listener,
                std::future::pending(),
            ));
            tokio::time::sleep(Duration::from_millis(500)).await;
            (format!("http://{addr}"), Some(handle))
        }
    };
    let channel = Channel::from_shared(endpoint.clone())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    // Checks are at least as fresh as the seed (then the quantized revision).
    let consistency = if a.endpoint.is_none() {
        seed(channel.clone(), a.customers)
            .await
            .map(|t| pb::Consistency {
                requirement: Some(pb::consistency::Requirement::AtLeastAsFresh(t)),
            })
    } else {
        Some(pb::Consistency {
            requirement: Some(pb::consistency::Requirement::MinimizeLatency(true)),
        })
    };
    let customers = a.customers.max(1);
    println!(
        "datastore: {}, {} relationships, cache capacity {}",
        a.datastore,
        a.customers * 3 + 2,
        a.cache_capacity
            .map(|c| c.to_string())
            .unwrap_or_else(|| "default".into())
    );
    println!();
    println!("| concurrency | RPC | requests/s | p50 | p99 | × baseline p50 |");
    println!("|---|---|---|---|---|---|");
    for &c in &a.concurrency {
        // Several HTTP/2 connections, as a real client pool would use.
        let conns = c.clamp(1, 4);
        let mut channels = Vec::new();
        for _ in 0..conns {
            channels.push(
                Channel::from_shared(endpoint.clone())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        let health_chs = channels.clone();
        let base = measure(c, a.requests, move |i| {
            let mut h = tonic_health::pb::health_client::HealthClient::new(
                health_chs[i % health_chs.len()].clone(),
            );
            async move {
                h.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap();
            }
        })
        .await;
        let check_chs = channels.clone();
        let consistency = consistency.clone();
        let check = measure(c, a.requests, move |i| {
            let mut p = PermissionsServiceClient::new(check_chs[i % check_chs.len()].clone());
            let req = pb::CheckPermissionRequest {
                consistency: consistency.clone(),
                resource: Some(pb::ObjectReference {
                    object_type: "customer".into(),
                    object_id: format!("c{}", i % customers),
                }),
                permission: "add_friend".into(),
                subject: Some(pb::SubjectReference {
                    object: Some(pb::ObjectReference {
                        object_type: "user".into(),
                        object_id: if i % 2 == 0 {
                            "jules".into()
                        } else {
                            format!("u{i}")
                        },
                    }),
                    optional_relation: String::new(),
                }),
                context: None,
                with_tracing: false,
            };
            async move {
                p.check_permission(req).await.unwrap();
            }
        })
        .await;
        for (name, s) in [("health (baseline)", &base), ("CheckPermission", &check)] {
            println!(
                "| {c} | {name} | {:.0} | {:.0} µs | {:.0} µs | {:.2} |",
                s.rps,
                s.p50.as_secs_f64() * 1e6,
                s.p99.as_secs_f64() * 1e6,
                s.p50.as_secs_f64() / base.p50.as_secs_f64()
            );
        }
    }
    if a.lookups {
        lookup_latency(channel.clone(), consistency.clone(), customers).await;
    }
    if a.writes {
        write_throughput(channel.clone()).await;
        if pg.is_some() {
            gc_cost(&datastore, 100_000).await;
        }
    }
    drop(pg);
}
