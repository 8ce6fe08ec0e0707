//! `kinbar.v1.AdminService`: offboarding in one audited transaction
//! (`kinbar offboard`, `kinbar rel handover`). Write scope.

use tonic::{Request, Response, Status};

use super::auth::Scope;
use super::proto::kinbar::v1 as kpb;
use super::proto::kinbar::v1::admin_service_server::AdminService;
use super::{Api, status};
use crate::model::SubjectRef;

/// The AdminService implementation.
#[derive(Clone)]
pub struct AdminApi(pub Api);

fn subject(text: &str, field: &str) -> Result<SubjectRef, Status> {
    text.parse::<SubjectRef>()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn offboard(
        &self,
        request: Request<kpb::OffboardRequest>,
    ) -> Result<Response<kpb::OffboardResponse>, Status> {
        let caller = self.0.authorize(&request, Scope::Write)?;
        let req = request.get_ref();
        let departing = subject(&req.subject, "subject")?;
        let successor = match req.optional_successor.as_str() {
            "" => None,
            s => Some(subject(s, "optional_successor")?),
        };
        caller.confine(
            std::iter::once(&departing)
                .chain(successor.as_ref())
                .map(|s| s.object.object_type.as_str()),
        )?;
        if caller.tenant.is_confined() {
            // A link an unconfined key made from another tenant's type to
            // this subject is not this key's to remove: refuse, naming none.
            let planned = self
                .0
                .engine
                .offboard(&departing, successor.as_ref(), Default::default(), true)
                .await
                .map_err(status::from_engine)?;
            if planned
                .relationships
                .iter()
                .any(|r| !caller.tenant.allows(&r.resource.object_type))
            {
                return Err(caller.refuse(format!(
                    "`{departing}` is also named by relationships outside {}; an unconfined key must offboard it",
                    caller.tenant.describe()
                )));
            }
        }
        let mut metadata = self.0.write_metadata(&request, caller.actor, None);
        let reason = match (&req.reason, &successor) {
            (r, _) if !r.is_empty() => r.clone(),
            (_, Some(s)) => format!("offboarding: {departing} hands over to {s}"),
            (_, None) => format!("offboarding: {departing}"),
        };
        metadata
            .fields
            .insert("reason".to_string(), serde_json::json!(reason));
        let done = self
            .0
            .engine
            .offboard(&departing, successor.as_ref(), metadata, req.dry_run)
            .await
            .map_err(status::from_engine)?;
        Ok(Response::new(kpb::OffboardResponse {
            revision_token: self.0.token(&done.revision).token,
            relationships: done.relationships.iter().map(|r| r.to_string()).collect(),
            committed: done.committed,
        }))
    }
}
