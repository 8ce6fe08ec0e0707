//! The bad-input battery, generated from the proto descriptors so no field
//! is missed: for every method of `authzed.api.v1` and `kinbar.v1`, a valid
//! request is mutated one field at a time (strings empty, at and past the
//! length limits, with NUL, `#`, `@`, `*`, `|`, look-alikes and case-only
//! differences; numbers at their extremes; enums unknown; messages missing;
//! repeated fields empty and past their limits; a `Struct` nested past the
//! decoder's recursion limit), and whole bodies are truncated, flipped and
//! replaced with garbage. Sent as raw bytes over real gRPC to a real
//! server. Every answer must be a clean status (never INTERNAL, UNKNOWN or
//! DATA_LOSS, never a dropped connection) with a message; a write that is
//! refused must leave the audit head unchanged; the server keeps answering.
//! A final test compares the fields mutated with the descriptors'.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Buf, BufMut};
use common::*;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

const SCHEMA: &str = "definition user {}
definition folder {
    relation viewer: user
    permission view = viewer
}
definition document {
    relation viewer: user | user:* | folder#viewer
    relation parent: folder
    permission view = viewer + parent->view
}";

const RES: &str = r#"{"objectType":"document","objectId":"d1"}"#;
const SUBJ: &str = r#"{"object":{"objectType":"user","objectId":"anna"}}"#;
const FULL: &str = r#"{"fullyConsistent":true}"#;

/// A valid request per method (proto JSON); others start empty.
fn baseline(method: &str) -> String {
    let rel = format!(r#"{{"resource":{RES},"relation":"viewer","subject":{SUBJ}}}"#);
    match method {
        "CheckPermission" => format!(
            r#"{{"consistency":{FULL},"resource":{RES},"permission":"view","subject":{SUBJ},"withTracing":true}}"#
        ),
        "CheckBulkPermissions" => format!(
            r#"{{"consistency":{FULL},"items":[{{"resource":{RES},"permission":"view","subject":{SUBJ}}}]}}"#
        ),
        "ExpandPermissionTree" => {
            format!(r#"{{"consistency":{FULL},"resource":{RES},"permission":"view"}}"#)
        }
        "ReadRelationships" => format!(
            r#"{{"consistency":{FULL},"relationshipFilter":{{"resourceType":"document","optionalResourceId":"d1","optionalRelation":"viewer","optionalSubjectFilter":{{"subjectType":"user","optionalSubjectId":"anna","optionalRelation":{{"relation":""}}}}}},"optionalLimit":10}}"#
        ),
        "WriteRelationships" => format!(
            r#"{{"updates":[{{"operation":"OPERATION_TOUCH","relationship":{rel}}}],"optionalPreconditions":[{{"operation":"OPERATION_MUST_NOT_MATCH","filter":{{"resourceType":"document","optionalResourceId":"nope"}}}}]}}"#
        ),
        "DeleteRelationships" => r#"{"relationshipFilter":{"resourceType":"document","optionalResourceId":"gone"},"optionalLimit":5,"optionalAllowPartialDeletions":true}"#.to_string(),
        "LookupResources" => format!(
            r#"{{"consistency":{FULL},"resourceObjectType":"document","permission":"view","subject":{SUBJ},"optionalLimit":10}}"#
        ),
        "LookupSubjects" => format!(
            r#"{{"consistency":{FULL},"resource":{RES},"permission":"view","subjectObjectType":"user","optionalConcreteLimit":10}}"#
        ),
        "ImportBulkRelationships" => r#"{"relationships":[{"resource":{"objectType":"document","objectId":"imported"},"relation":"viewer","subject":{"object":{"objectType":"user","objectId":"importer"}}}]}"#.to_string(),
        "ExportBulkRelationships" => format!(
            r#"{{"consistency":{FULL},"optionalLimit":10,"optionalRelationshipFilter":{{"resourceType":"document"}}}}"#
        ),
        "WriteSchema" => serde_json::json!({ "schema": SCHEMA }).to_string(),
        "DiffSchema" => format!(
            r#"{{"consistency":{FULL},"comparisonSchema":{}}}"#,
            serde_json::Value::String(SCHEMA.into())
        ),
        "ComputablePermissions" => format!(
            r#"{{"consistency":{FULL},"definitionName":"document","relationName":"viewer"}}"#
        ),
        "DependentRelations" => format!(
            r#"{{"consistency":{FULL},"definitionName":"document","permissionName":"view"}}"#
        ),
        "ReflectSchema" => format!(r#"{{"consistency":{FULL}}}"#),
        "Watch" => r#"{"optionalObjectTypes":["document"]}"#.to_string(),
        "ReadAudit" => r#"{"optionalActor":"anonymous","optionalLimit":5}"#.to_string(),
        "VerifyAudit" => r#"{"complete":true}"#.to_string(),
        "Offboard" => r#"{"subject":"user:nobody","dryRun":true,"reason":"battery"}"#.to_string(),
        _ => "{}".to_string(),
    }
}

/// The baseline request of `method`, as a message of its input type.
fn baseline_message(method: &MethodDescriptor) -> DynamicMessage {
    let json = baseline(method.name());
    let mut de = serde_json::Deserializer::from_str(&json);
    DynamicMessage::deserialize(method.input(), &mut de)
        .unwrap_or_else(|e| panic!("baseline of {}: {e}", method.name()))
}

/// Methods whose success changes stored state.
fn writes(method: &str) -> bool {
    matches!(
        method,
        "WriteRelationships"
            | "DeleteRelationships"
            | "ImportBulkRelationships"
            | "WriteSchema"
            | "Offboard"
    )
}

/// Passes request and response bytes through unchanged.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Sends `body` to `method` and returns the status the call ends with
/// (`Ok` for a stream still open after a short wait: Watch, followed audit).
async fn call(
    ch: &tonic::transport::Channel,
    method: &MethodDescriptor,
    body: Vec<u8>,
) -> tonic::Status {
    let path: http::uri::PathAndQuery =
        format!("/{}/{}", method.parent_service().full_name(), method.name())
            .parse()
            .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.expect("channel ready");
    let stream_status = |r: Result<tonic::Response<tonic::Streaming<Vec<u8>>>, tonic::Status>| async move {
        let mut s = match r {
            Ok(r) => r.into_inner(),
            Err(e) => return e,
        };
        loop {
            match tokio::time::timeout(Duration::from_millis(300), s.message()).await {
                Err(_) => return tonic::Status::ok("stream still open"),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return tonic::Status::ok(""),
                Ok(Err(e)) => return e,
            }
        }
    };
    match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => match grpc.unary(tonic::Request::new(body), path, Raw).await {
            Ok(_) => tonic::Status::ok(""),
            Err(e) => e,
        },
        (false, true) => {
            stream_status(
                grpc.server_streaming(tonic::Request::new(body), path, Raw)
                    .await,
            )
            .await
        }
        (true, false) => {
            let req = tonic::Request::new(tokio_stream::iter(vec![body]));
            match grpc.client_streaming(req, path, Raw).await {
                Ok(_) => tonic::Status::ok(""),
                Err(e) => e,
            }
        }
        (true, true) => {
            let req = tonic::Request::new(tokio_stream::iter(vec![body]));
            stream_status(grpc.streaming(req, path, Raw).await).await
        }
    }
}

/// A field path from the request message down to a leaf.
type FieldPath = Vec<FieldDescriptor>;

fn path_name(path: &FieldPath) -> String {
    path.iter().map(|f| f.name()).collect::<Vec<_>>().join(".")
}

/// Types mutated as a whole (not descended into).
fn opaque(m: &MessageDescriptor) -> bool {
    m.full_name().starts_with("google.protobuf.")
}

/// Every field path of `desc` (messages descended into once per path).
fn field_paths(
    desc: &MessageDescriptor,
    prefix: &FieldPath,
    seen: &[String],
    out: &mut Vec<FieldPath>,
) {
    for f in desc.fields() {
        let mut path = prefix.clone();
        path.push(f.clone());
        out.push(path.clone());
        if let Kind::Message(m) = f.kind()
            && !f.is_map()
            && !opaque(&m)
            && !seen.contains(&m.full_name().to_string())
            && path.len() < 6
        {
            let mut seen = seen.to_vec();
            seen.push(m.full_name().to_string());
            field_paths(&m, &path, &seen, out);
        }
    }
}

/// Every field path of the request message `input`.
fn request_paths(input: &MessageDescriptor) -> Vec<FieldPath> {
    let mut paths = Vec::new();
    field_paths(
        input,
        &Vec::new(),
        &[input.full_name().to_string()],
        &mut paths,
    );
    paths
}

/// The message holding the last field of `path`, created along the way
/// (a repeated message gets its first element).
fn parent_mut<'m>(msg: &'m mut DynamicMessage, path: &[FieldDescriptor]) -> &'m mut DynamicMessage {
    let Some((first, rest)) = path.split_first() else {
        return msg;
    };
    let value = msg.get_field_mut(first);
    let child = match value {
        Value::List(items) => {
            if items.is_empty() {
                let Kind::Message(m) = first.kind() else {
                    unreachable!("descended into a message")
                };
                items.push(Value::Message(DynamicMessage::new(m)));
            }
            items[0].as_message_mut().unwrap()
        }
        other => other.as_message_mut().unwrap(),
    };
    parent_mut(child, rest)
}

fn long(n: usize) -> String {
    "a".repeat(n)
}

/// The values a leaf field is set to.
fn mutations(f: &FieldDescriptor, current: &Value) -> Vec<(String, Option<Value>)> {
    let mut out: Vec<(String, Option<Value>)> = vec![("missing".into(), None)];
    let scalar: Vec<(String, Value)> = match f.kind() {
        Kind::String => {
            let cur = current.as_str().unwrap_or("").to_string();
            let mut v: Vec<(String, Value)> = [
                "",
                "\0",
                "#",
                "@",
                "*",
                "|",
                ":",
                "a#b@c",
                "user:*",
                "../..",
                "%00",
                "\u{202e}x",
                "ｄｏｃｕｍｅｎｔ",
                "😀",
            ]
            .iter()
            .map(|s| (format!("{s:?}"), Value::String(s.to_string())))
            .collect();
            for n in [63, 64, 65, 127, 128, 129, 1024, 1025, 4097, 100 * 1024 + 1] {
                v.push((format!("{n} chars"), Value::String(long(n))));
            }
            v.push(("upper case".into(), Value::String(cur.to_uppercase())));
            v.push(("trailing space".into(), Value::String(format!("{cur} "))));
            v.push(("with NUL".into(), Value::String(format!("{cur}\0"))));
            v
        }
        Kind::Bytes => vec![
            ("empty".into(), Value::Bytes(Default::default())),
            ("garbage".into(), Value::Bytes(vec![0xff; 64].into())),
        ],
        Kind::Bool => vec![
            ("true".into(), Value::Bool(true)),
            ("false".into(), Value::Bool(false)),
        ],
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => [0, 1, -1, i32::MAX, i32::MIN]
            .iter()
            .map(|n| (n.to_string(), Value::I32(*n)))
            .collect(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => [0, 1, -1, i64::MAX, i64::MIN]
            .iter()
            .map(|n| (n.to_string(), Value::I64(*n)))
            .collect(),
        Kind::Uint32 | Kind::Fixed32 => [0, 1, 1000, 1001, u32::MAX]
            .iter()
            .map(|n| (n.to_string(), Value::U32(*n)))
            .collect(),
        Kind::Uint64 | Kind::Fixed64 => [0, 1, 1000, 1001, u64::MAX]
            .iter()
            .map(|n| (n.to_string(), Value::U64(*n)))
            .collect(),
        Kind::Float => vec![
            ("nan".into(), Value::F32(f32::NAN)),
            ("-1".into(), Value::F32(-1.0)),
        ],
        Kind::Double => vec![
            ("nan".into(), Value::F64(f64::NAN)),
            ("-1".into(), Value::F64(-1.0)),
        ],
        Kind::Enum(e) => {
            let mut v: Vec<(String, Value)> = e
                .values()
                .map(|x| (x.name().to_string(), Value::EnumNumber(x.number())))
                .collect();
            v.push(("unknown 999".into(), Value::EnumNumber(999)));
            v.push(("negative".into(), Value::EnumNumber(-1)));
            v
        }
        Kind::Message(m) => {
            let mut v = vec![(
                "empty".into(),
                Value::Message(DynamicMessage::new(m.clone())),
            )];
            if matches!(
                m.full_name(),
                "google.protobuf.Timestamp" | "google.protobuf.Duration"
            ) {
                // Times at the ends of their range (a filter time past
                // u64::MAX milliseconds overflowed ReadAudit once).
                for (seconds, nanos) in [
                    (i64::MAX, 999_999_999),
                    (i64::MIN, 0),
                    (-1, 0),
                    (0, -1),
                    (0, 1_000_000_000),
                    (253_402_300_800, 0), // year 10000
                    (i64::MAX / 1000 + 1, i32::MAX),
                ] {
                    let mut t = DynamicMessage::new(m.clone());
                    t.set_field_by_name("seconds", Value::I64(seconds));
                    t.set_field_by_name("nanos", Value::I32(nanos));
                    v.push((
                        format!("{{seconds: {seconds}, nanos: {nanos}}}"),
                        Value::Message(t),
                    ));
                }
            }
            if m.full_name() == "google.protobuf.Struct" {
                v.push((
                    "nested 200 deep".into(),
                    Value::Message(deep_struct(&m, 200)),
                ));
                v.push(("one big field".into(), Value::Message(big_struct(&m))));
            }
            v
        }
    };
    if f.is_list() {
        let one = match current.as_list().and_then(|l| l.first()) {
            Some(x) => x.clone(),
            None => scalar
                .first()
                .map(|(_, v)| v.clone())
                .unwrap_or(Value::Bool(false)),
        };
        out.push(("empty list".into(), Some(Value::List(vec![]))));
        for n in [1000, 1001, 10_001] {
            out.push((
                format!("{n} items"),
                Some(Value::List(vec![one.clone(); n])),
            ));
        }
        for (name, v) in scalar {
            out.push((format!("[{name}]"), Some(Value::List(vec![v]))));
        }
    } else if f.is_map() {
        out.push(("empty map".into(), Some(Value::Map(Default::default()))));
    } else {
        out.extend(scalar.into_iter().map(|(n, v)| (n, Some(v))));
    }
    out
}

/// `{"a": {"a": ... 1}}` nested `depth` times, built through the wire
/// format (serde's own recursion limit would stop a JSON parse first);
/// prost-reflect may refuse to decode it too, then an empty Struct stands in
/// and the raw-bytes case below covers the depth.
fn deep_struct(s: &MessageDescriptor, depth: usize) -> DynamicMessage {
    let mut bytes = Vec::new();
    nested_struct_bytes(depth, &mut bytes);
    DynamicMessage::decode(s.clone(), bytes.as_slice())
        .unwrap_or_else(|_| DynamicMessage::new(s.clone()))
}

/// Wire bytes of a Struct `{"a": {"a": ... 1}}`: Struct.fields (1) is a map
/// entry (key 1, value 2: Value.struct_value = 5).
fn nested_struct_bytes(depth: usize, out: &mut Vec<u8>) {
    fn len_prefixed(tag: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        prost::encoding::encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    let mut inner: Vec<u8> = Vec::new();
    // innermost Value: number_value = 2 (double)
    let mut value = vec![0x11];
    value.extend_from_slice(&1f64.to_le_bytes());
    for _ in 0..depth {
        let mut entry = Vec::new();
        len_prefixed(0x0a, b"a", &mut entry);
        len_prefixed(0x12, &value, &mut entry);
        inner.clear();
        len_prefixed(0x0a, &entry, &mut inner);
        // Value.struct_value = 5
        value.clear();
        len_prefixed(0x2a, &inner, &mut value);
    }
    out.extend_from_slice(&inner);
}

fn big_struct(s: &MessageDescriptor) -> DynamicMessage {
    let json = serde_json::json!({ "big": "x".repeat(64 * 1024) }).to_string();
    let mut de = serde_json::Deserializer::from_str(&json);
    DynamicMessage::deserialize(s.clone(), &mut de).unwrap()
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(kinbar::api::proto::FILE_DESCRIPTOR_SET).unwrap()
}

fn methods(pool: &DescriptorPool) -> Vec<MethodDescriptor> {
    pool.services()
        .filter(|s| s.package_name() == "authzed.api.v1" || s.package_name() == "kinbar.v1")
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect()
}

/// The audit chain's head (hash, length): changes with every committed write.
async fn audit_head(ch: &tonic::transport::Channel) -> (String, u64) {
    use kinbar::api::proto::kinbar::v1::audit_service_client::AuditServiceClient;
    let r = AuditServiceClient::new(ch.clone())
        .verify_audit(kinbar::api::proto::kinbar::v1::VerifyAuditRequest { complete: false })
        .await
        .unwrap()
        .into_inner();
    (r.head_hash, r.verified_transactions)
}

const CLEAN: &[Code] = &[
    Code::Ok,
    Code::InvalidArgument,
    Code::FailedPrecondition,
    Code::NotFound,
    Code::AlreadyExists,
    Code::OutOfRange,
    Code::ResourceExhausted,
    Code::PermissionDenied,
    Code::Aborted,
    Code::Unimplemented,
];

struct Outcome {
    covered: BTreeSet<String>,
    calls: usize,
    by_code: BTreeMap<String, usize>,
}

async fn battery(ch: &tonic::transport::Channel, only: Option<&str>) -> Outcome {
    let pool = pool();
    let mut covered = BTreeSet::new();
    let mut calls = 0;
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for method in methods(&pool) {
        if only.is_some_and(|m| m != method.name()) {
            continue;
        }
        let input = method.input();
        let base = baseline_message(&method);
        let status = call(ch, &method, base.encode_to_vec()).await;
        assert!(
            matches!(status.code(), Code::Ok | Code::Unimplemented),
            "baseline {} failed: {status:?}",
            method.name()
        );
        if status.code() == Code::Unimplemented {
            assert!(
                !status.message().is_empty(),
                "{}: empty UNIMPLEMENTED",
                method.name()
            );
        }
        let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
        let paths = request_paths(&input);
        for path in &paths {
            let (leaf, parents) = path.split_last().unwrap();
            let current = {
                let mut m = base.clone();
                parent_mut(&mut m, parents).get_field(leaf).into_owned()
            };
            for (what, value) in mutations(leaf, &current) {
                let mut m = base.clone();
                let parent = parent_mut(&mut m, parents);
                match value {
                    None => parent.clear_field(leaf),
                    Some(v) => parent.set_field(leaf, v),
                }
                bodies.push((format!("{} = {what}", path_name(path)), m.encode_to_vec()));
            }
            covered.insert(format!("{}.{}", input.full_name(), path_name(path)));
        }
        // Whole bodies: truncated, bytes flipped, garbage, empty.
        let encoded = base.encode_to_vec();
        for cut in (0..encoded.len()).step_by((encoded.len() / 24).max(1)) {
            bodies.push((format!("truncated to {cut}"), encoded[..cut].to_vec()));
        }
        for i in (0..encoded.len()).step_by((encoded.len() / 24).max(1)) {
            let mut b = encoded.clone();
            b[i] ^= 0xa5;
            bodies.push((format!("byte {i} flipped"), b));
        }
        // A Struct nested past the decoders' recursion limit, appended as
        // raw bytes (a later occurrence of a field merges into it).
        for f in input.fields() {
            if let Kind::Message(m) = f.kind()
                && m.full_name() == "google.protobuf.Struct"
            {
                let mut nested = Vec::new();
                nested_struct_bytes(200, &mut nested);
                let mut b = encoded.clone();
                prost::encoding::encode_key(
                    f.number(),
                    prost::encoding::WireType::LengthDelimited,
                    &mut b,
                );
                prost::encoding::encode_varint(nested.len() as u64, &mut b);
                b.extend_from_slice(&nested);
                bodies.push((format!("{} nested 200 deep (raw)", f.name()), b));
            }
        }
        bodies.push(("garbage".into(), (0..=255u8).rev().collect()));
        bodies.push((
            "huge length prefix".into(),
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ));
        for (what, body) in bodies {
            let before = if writes(method.name()) {
                Some(audit_head(ch).await)
            } else {
                None
            };
            let status = call(ch, &method, body).await;
            calls += 1;
            *by_code.entry(format!("{:?}", status.code())).or_default() += 1;
            assert!(
                CLEAN.contains(&status.code()),
                "{} with {what}: {:?} {}",
                method.name(),
                status.code(),
                status.message()
            );
            if status.code() != Code::Ok {
                assert!(
                    !status.message().is_empty(),
                    "{} with {what}: {:?} without a message",
                    method.name(),
                    status.code()
                );
                if let Some(before) = before {
                    assert_eq!(
                        audit_head(ch).await,
                        before,
                        "{} with {what} was refused ({:?}) but changed the store",
                        method.name(),
                        status.code()
                    );
                }
            }
        }
        // Still answering after each method's battery.
        let check = pool
            .get_service_by_name("authzed.api.v1.PermissionsService")
            .unwrap();
        let check = check
            .methods()
            .find(|m| m.name() == "CheckPermission")
            .unwrap();
        let body = baseline_message(&check).encode_to_vec();
        let status = call(ch, &check, body).await;
        assert_eq!(
            status.code(),
            Code::Ok,
            "after {}: {status:?}",
            method.name()
        );
    }
    Outcome {
        covered,
        calls,
        by_code,
    }
}

async fn server() -> (Server, tonic::transport::Channel) {
    Server::with_schema(kinbar::config::Config::default(), SCHEMA).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_every_request_gets_a_clean_answer() {
    let (server, ch) = server().await;
    let out = battery(&ch, None).await;
    // Every field path of every request message was mutated.
    let pool = pool();
    let mut all = BTreeSet::new();
    for m in methods(&pool) {
        let input = m.input();
        for p in request_paths(&input) {
            all.insert(format!("{}.{}", input.full_name(), path_name(&p)));
        }
    }
    let missed: Vec<_> = all.difference(&out.covered).collect();
    assert!(missed.is_empty(), "fields never mutated: {missed:?}");
    assert!(out.calls > 4_000, "only {} calls", out.calls);
    eprintln!(
        "bad-input battery: {} calls over {} fields: {:?}",
        out.calls,
        all.len(),
        out.by_code
    );
    server.stop().await;
}
