//! Check latency on a small CRM-like dataset: deep team nesting, a wide
//! relation, exclusion and arrows. Each case runs uncached (cache capacity 0:
//! full evaluation every time) and cached; the baseline is one datastore
//! read of one relationship, measured in the same run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use kinbar::store::memory::MemoryStore;
use kinbar::store::{Datastore, Operation, Page, RelationshipFilter, TxnMetadata, Update};
use kinbar::{Engine, EngineConfig, ObjectRef, Relationship, SubjectRef};

const SCHEMA: &str = include_str!("../examples/crm/schema.zed");

fn dataset() -> Vec<String> {
    let mut rels = vec![
        "platform:main#super_admin@user:root".to_string(),
        "team:sales#platform@platform:main".to_string(),
    ];
    // Deep nesting: team t0 ⊃ t1 ⊃ ... ⊃ t9 ∋ user:deep.
    for i in 0..9 {
        rels.push(format!("team:t{i}#member@team:t{}#member", i + 1));
    }
    rels.push("team:t9#member@user:deep".into());
    // Department chain of 5 managers.
    for i in 0..5 {
        rels.push(format!("department:d{i}#parent@department:d{}", i + 1));
    }
    rels.push("department:d5#manager@user:boss".into());
    // A customer with a wide support relation and 1,000 sales reps.
    rels.push("customer:wide#department@department:d0".into());
    rels.push("customer:wide#sales_rep@team:t0#membership".into());
    for i in 0..1000 {
        rels.push(format!("customer:wide#support@user:s{i}"));
    }
    rels.push("customer:wide#support@user:boss".into());
    rels.push("customer:wide#signed@user:*".into());
    // Background: 2,000 other customers.
    for i in 0..2000 {
        rels.push(format!("customer:c{i}#owner@user:o{}", i % 100));
    }
    rels
}

fn engine(store: Arc<dyn Datastore>, cache: u64) -> Engine {
    Engine::new(
        store,
        EngineConfig {
            cache_capacity: cache,
            ..Default::default()
        },
    )
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store: Arc<dyn Datastore> = Arc::new(MemoryStore::default());
    let setup = engine(store.clone(), 0);
    rt.block_on(async {
        setup
            .write_schema(SCHEMA, TxnMetadata::default())
            .await
            .unwrap();
        let updates: Vec<Update> = dataset()
            .iter()
            .map(|r| Update {
                operation: Operation::Touch,
                relationship: r.parse::<Relationship>().unwrap(),
            })
            .collect();
        for chunk in updates.chunks(1000) {
            setup
                .write_relationships(chunk.to_vec(), vec![], TxnMetadata::default())
                .await
                .unwrap();
        }
    });
    let head = rt.block_on(store.head_revision()).unwrap();

    let mut g = c.benchmark_group("check");
    let baseline = RelationshipFilter::exact(&"customer:c7#owner@user:o7".parse().unwrap());
    g.bench_function("baseline_store_read", |b| {
        b.iter(|| {
            rt.block_on(store.query(&head, &baseline, &Page::default()))
                .unwrap()
        })
    });
    let cases = [
        ("direct_owner", "customer:c42#view@user:o42", true),
        (
            "deep_nesting_10",
            "customer:wide#add_friend@user:deep",
            true,
        ),
        (
            "wide_relation_miss",
            "customer:wide#view@user:nobody",
            false,
        ),
        (
            "exclusion_arrow_chain",
            "customer:wide#delete@user:boss",
            false,
        ),
        ("arrow_chain_5", "customer:wide#edit@user:boss", true),
    ];
    for (cache, label) in [(0, "uncached"), (100_000, "cached")] {
        let e = engine(store.clone(), cache);
        for (name, text, expected) in cases {
            let r: Relationship = text.parse().unwrap();
            let (res, perm, subj): (ObjectRef, String, SubjectRef) =
                (r.resource, r.relation, r.subject);
            let got = rt
                .block_on(e.check_at(head.clone(), &res, &perm, &subj))
                .unwrap();
            assert_eq!(got.is_allowed(), expected, "{text}");
            g.bench_function(format!("{name}/{label}"), |b| {
                b.iter(|| {
                    rt.block_on(e.check_at(head.clone(), &res, &perm, &subj))
                        .unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
