//! The one place that turns errors into gRPC statuses (DESIGN.md §6): a code,
//! a message a person can act on, and — like SpiceDB — a `google.rpc.ErrorInfo`
//! detail carrying an `authzed.api.v1.ErrorReason` where one applies.

use prost::Message;
use tonic::{Code, Status};

use super::proto::authzed::api::v1::ErrorReason;
use super::proto::google::rpc;
use crate::engine::Error;
use crate::schema::{SchemaStage, ViolationKind};
use crate::store::StoreError;

/// A status with an `ErrorInfo` detail naming `reason`.
pub fn with_reason(code: Code, message: impl Into<String>, reason: ErrorReason) -> Status {
    let message = message.into();
    let info = rpc::ErrorInfo {
        reason: reason.as_str_name().to_string(),
        domain: "authzed.com".to_string(),
        metadata: Default::default(),
    };
    let details = rpc::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_string(),
            value: info.encode_to_vec(),
        }],
    };
    Status::with_details(code, message, details.encode_to_vec().into())
}

/// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail: the server
/// refused the call before doing any work (load shedding, rate limits);
/// the client should retry after `retry_after`.
pub fn overloaded(message: impl Into<String>, retry_after: std::time::Duration) -> Status {
    let message = message.into();
    let retry = rpc::RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: i64::try_from(retry_after.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(retry_after.subsec_nanos()).unwrap_or(0),
        }),
    };
    let details = rpc::Status {
        code: Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_string(),
            value: retry.encode_to_vec(),
        }],
    };
    Status::with_details(
        Code::ResourceExhausted,
        message,
        details.encode_to_vec().into(),
    )
}

/// The retry delay a status carries in a `RetryInfo` detail, if any.
pub fn retry_after_of(status: &Status) -> Option<std::time::Duration> {
    let details = rpc::Status::decode(status.details()).ok()?;
    let any = details
        .details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.RetryInfo"))?;
    let d = rpc::RetryInfo::decode(any.value.as_slice())
        .ok()?
        .retry_delay?;
    Some(std::time::Duration::new(
        u64::try_from(d.seconds).ok()?,
        u32::try_from(d.nanos).ok()?,
    ))
}

pub fn invalid_argument(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// Maps an engine error to its status.
pub fn from_engine(e: Error) -> Status {
    use ErrorReason as R;
    let msg = e.to_string();
    match e {
        Error::InvalidArgument(_) => Status::invalid_argument(msg),
        Error::NoSchema => Status::failed_precondition(
            "no schema has been written yet; write one with WriteSchema (`kinbar schema write`)",
        ),
        Error::UnknownType(_) => with_reason(Code::FailedPrecondition, msg, R::UnknownDefinition),
        Error::UnknownMember { .. } => with_reason(
            Code::FailedPrecondition,
            msg,
            R::UnknownRelationOrPermission,
        ),
        Error::Schema(se) => {
            let reason = match se.stage {
                SchemaStage::Parse => R::SchemaParseError,
                SchemaStage::Type => R::SchemaTypeError,
            };
            with_reason(
                Code::InvalidArgument,
                format!("invalid schema: {}", se.render("schema")),
                reason,
            )
        }
        Error::SchemaViolation { ref reason, .. } => {
            let r = match reason.kind {
                ViolationKind::IsAPermission => R::CannotUpdatePermission,
                ViolationKind::SubjectNotAllowed => R::InvalidSubjectType,
                ViolationKind::UnknownRelation => R::UnknownRelationOrPermission,
                ViolationKind::UnknownDefinition => R::UnknownDefinition,
            };
            with_reason(Code::FailedPrecondition, msg, r)
        }
        Error::SchemaWouldOrphan(_) => {
            with_reason(Code::FailedPrecondition, msg, R::SchemaTypeError)
        }
        Error::DepthExceeded { .. } => {
            with_reason(Code::FailedPrecondition, msg, R::MaximumDepthExceeded)
        }
        Error::DeadlineExceeded => Status::deadline_exceeded(msg),
        Error::BudgetExceeded { .. } => with_reason(
            Code::ResourceExhausted,
            msg,
            R::ExceedsMaximumAllowableLimit,
        ),
        // Like SpiceDB, a cycle is the schema's and data's problem, not a
        // transient one: FAILED_PRECONDITION, never an answer.
        Error::CycleThroughExclusion { .. } => {
            with_reason(Code::FailedPrecondition, msg, R::MaximumDepthExceeded)
        }
        Error::Store(s) => from_store(s),
    }
}

/// Maps a datastore error to its status.
pub fn from_store(e: StoreError) -> Status {
    use ErrorReason as R;
    let msg = e.to_string();
    match e {
        StoreError::RevisionTooOld { .. } => Status::failed_precondition(format!(
            "{msg}; retry with a newer ZedToken or with minimize_latency / fully_consistent"
        )),
        StoreError::RevisionInFuture(_) | StoreError::InvalidRevision(_) => {
            Status::invalid_argument(msg)
        }
        StoreError::DuplicateInImport(_) => Status::invalid_argument(msg),
        StoreError::AlreadyExists(_) => {
            with_reason(Code::AlreadyExists, msg, R::AttemptToRecreateRelationship)
        }
        StoreError::PreconditionFailed { .. } => with_reason(
            Code::FailedPrecondition,
            msg,
            R::WriteOrDeletePreconditionFailure,
        ),
        StoreError::TooManyToDelete { .. } => with_reason(
            Code::FailedPrecondition,
            msg,
            R::TooManyRelationshipsForTransactionalDelete,
        ),
        StoreError::SchemaChanged | StoreError::ChangedConcurrently { .. } => {
            with_reason(Code::Aborted, msg, R::SerializationFailure)
        }
        StoreError::Unavailable(_) => Status::unavailable(msg),
        StoreError::Internal(_) => Status::internal(msg),
    }
}

/// The `ErrorReason` name carried by a status, if any (for tests and the CLI).
pub fn reason_of(status: &Status) -> Option<String> {
    let details = rpc::Status::decode(status.details()).ok()?;
    details
        .details
        .iter()
        .find(|a| a.type_url.ends_with("google.rpc.ErrorInfo"))
        .and_then(|a| rpc::ErrorInfo::decode(a.value.as_slice()).ok())
        .map(|i| i.reason)
}
