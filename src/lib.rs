//! Kinbar: a Zanzibar-style authorization service, as a library.
//!
//! Kinbar answers "may subject S do P on resource R?" from a schema and a set
//! of relationships. The server (`kinbar serve`) and the CLI are thin layers
//! over [`Engine`]; a Rust program can embed it directly:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use kinbar::{Operation, Relationship, TxnMetadata, Update};
//!
//! let engine = kinbar::in_memory();
//! engine.write_schema(r#"
//!     definition user {}
//!     definition document {
//!         relation owner: user
//!         relation viewer: user | user:*
//!         permission view = viewer + owner
//!     }
//! "#, TxnMetadata::default()).await?;
//!
//! let rel: Relationship = "document:q3#owner@user:anna".parse()?;
//! engine.write_relationships(
//!     vec![Update { operation: Operation::Touch, relationship: rel }],
//!     vec![],
//!     TxnMetadata::default(),
//! ).await?;
//!
//! let allowed = engine.check(&"document:q3".parse()?, "view", &"user:anna".parse()?).await?;
//! assert!(allowed.is_allowed());
//! let denied = engine.check(&"document:q3".parse()?, "view", &"user:bob".parse()?).await?;
//! assert!(!denied.is_allowed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Reading guide
//!
//! The layers, with dependencies pointing one way
//! (`cli`/`api` → `engine` → `schema`, `store` → `model`):
//!
//! - [`model`]: plain types (objects, subjects, relationships, revisions).
//!   Start here.
//! - [`schema`]: the schema language — parser, type checker, formatter,
//!   compiler-style diagnostics.
//! - [`store`]: the [`store::Datastore`] trait and its backends (memory,
//!   Postgres).
//! - [`engine`]: Check and Expand semantics, validated writes, caching.
//! - [`validate`]: SpiceDB validation files (`kinbar validate`).
//! - [`cli`]: the `kinbar` command line.
//!
//! Errors fail closed: a store error or an exceeded limit is an error, never
//! a `true` or a `false`.

pub mod api;
pub mod audit;
pub mod cli;
pub mod config;
pub mod engine;
#[cfg(feature = "test-util")]
pub mod fuzzing;
pub mod model;
pub mod schema;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod validate;

pub use engine::{Budget, Decision, Engine, EngineConfig, Error};

/// An engine over a fresh embedded memory store with default settings.
pub fn in_memory() -> Engine {
    Engine::new(
        std::sync::Arc::new(store::memory::MemoryStore::default()),
        EngineConfig::default(),
    )
}
pub use model::{
    Change, CommittedTxn, Consistency, DeleteByFilter, Imported, ObjectRef, Operation, Page,
    Precondition, PreconditionKind, Relationship, RelationshipFilter, Revision, SubjectFilter,
    SubjectRef, TxnMetadata, Update,
};
