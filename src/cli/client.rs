//! Client commands against a running server (`--endpoint`, `--token`, TLS).

use std::path::PathBuf;

use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::api::convert;
use crate::api::proto::authzed::api::v1 as pb;
use crate::api::proto::authzed::api::v1::permissions_service_client::PermissionsServiceClient;
use crate::api::proto::authzed::api::v1::schema_service_client::SchemaServiceClient;
use crate::api::proto::authzed::api::v1::watch_service_client::WatchServiceClient;
use crate::api::proto::kinbar::v1::admin_service_client::AdminServiceClient;
use crate::api::proto::kinbar::v1::audit_service_client::AuditServiceClient;
use crate::model::{ObjectRef, Relationship, SubjectRef};

/// Connection flags shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Server address: http://host:port (plaintext), https://host:port (TLS),
    /// or host:port as grpcurl and zed take it (TLS when --ca-cert or
    /// --client-cert is given, else plaintext).
    #[arg(
        long,
        global = true,
        env = "KINBAR_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// Preshared key, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "KINBAR_TOKEN")]
    pub token: Option<String>,
    /// CA certificate (PEM) to verify an https endpoint.
    #[arg(long, global = true, env = "KINBAR_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM) for mTLS.
    #[arg(long, global = true, env = "KINBAR_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, global = true, env = "KINBAR_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// Why this change is made; recorded in the audit trail with relationship writes.
    #[arg(long, global = true)]
    pub reason: Option<String>,
}

#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

pub struct Client {
    pub permissions: PermissionsServiceClient<Intercepted>,
    pub schema: SchemaServiceClient<Intercepted>,
    pub watch: WatchServiceClient<Intercepted>,
    pub audit: AuditServiceClient<Intercepted>,
    pub admin: AdminServiceClient<Intercepted>,
}

impl Connection {
    /// The endpoint as a URL: `host:port` gets `https://` when TLS flags
    /// are given, else `http://`.
    pub fn url(&self) -> String {
        if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else if self.ca_cert.is_some() || self.client_cert.is_some() {
            format!("https://{}", self.endpoint)
        } else {
            format!("http://{}", self.endpoint)
        }
    }

    pub async fn connect(&self) -> Result<Client, String> {
        let url = self.url();
        let mut endpoint = Channel::from_shared(url.clone())
            .map_err(|e| format!("invalid --endpoint `{}`: {e}", self.endpoint))?;
        let tls_on = url.starts_with("https://");
        if tls_on {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &self.ca_cert {
                let pem =
                    std::fs::read(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(c), Some(k)) = (&self.client_cert, &self.client_key) {
                let cert =
                    std::fs::read(c).map_err(|e| format!("cannot read {}: {e}", c.display()))?;
                let key =
                    std::fs::read(k).map_err(|e| format!("cannot read {}: {e}", k.display()))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            // tonic's error says only "transport error": name the causes.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            format!(
                "cannot connect to {url} ({}): {why}; is `kinbar serve` listening there?",
                if tls_on { "TLS" } else { "plaintext" }
            )
        })?;
        let bearer = match &self.token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                "the token contains characters not allowed in metadata".to_string()
            })?),
            None => None,
        };
        let b = Bearer(bearer);
        Ok(Client {
            permissions: PermissionsServiceClient::with_interceptor(channel.clone(), b.clone()),
            schema: SchemaServiceClient::with_interceptor(channel.clone(), b.clone()),
            watch: WatchServiceClient::with_interceptor(channel.clone(), b.clone()),
            audit: AuditServiceClient::with_interceptor(channel.clone(), b.clone()),
            admin: AdminServiceClient::with_interceptor(channel, b),
        })
    }
}

/// Hands each message of a server stream to `each` until the stream ends;
/// the first failure (of the stream or of `each`) ends it with a message.
pub async fn drain<T>(
    mut stream: tonic::Streaming<T>,
    mut each: impl FnMut(T) -> Result<(), String>,
) -> Result<(), String> {
    while let Some(message) = stream.message().await.map_err(|s| describe(&s))? {
        each(message)?;
    }
    Ok(())
}

/// Every relationship matching `filter`, read fully consistent.
pub async fn read_relationships(
    client: &mut Client,
    filter: pb::RelationshipFilter,
) -> Result<Vec<Relationship>, String> {
    let req = pb::ReadRelationshipsRequest {
        consistency: fully_consistent(),
        relationship_filter: Some(filter),
        optional_limit: 0,
        optional_cursor: None,
    };
    let stream = client
        .permissions
        .read_relationships(req)
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    let mut out = Vec::new();
    drain(stream, |r| {
        if let Some(rel) = r.relationship.as_ref() {
            out.push(convert::relationship(Some(rel), "relationship").map_err(|s| describe(&s))?);
        }
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Formats a failed call for a person: code, message and reason.
pub fn describe(status: &tonic::Status) -> String {
    let reason = crate::api::status::reason_of(status)
        .map(|r| format!(" [{r}]"))
        .unwrap_or_default();
    format!("{:?}: {}{reason}", status.code(), status.message())
}

/// `type[:id][#relation][@subject_type[:subject_id][#subject_relation]]` → filter.
pub fn parse_filter(text: &str) -> Result<pb::RelationshipFilter, String> {
    let (res, subj) = match text.split_once('@') {
        Some((r, s)) => (r, Some(s)),
        None => (text, None),
    };
    let (res_obj, relation) = match res.split_once('#') {
        Some((o, r)) => (o, r.to_string()),
        None => (res, String::new()),
    };
    let (resource_type, resource_id) = match res_obj.split_once(':') {
        Some((t, i)) => (t.to_string(), i.to_string()),
        None => (res_obj.to_string(), String::new()),
    };
    let optional_subject_filter = subj.map(|s| {
        let (obj, rel) = match s.split_once('#') {
            Some((o, r)) => (o, Some(r)),
            None => (s, None),
        };
        let (t, id) = match obj.split_once(':') {
            Some((t, i)) => (t.to_string(), i.to_string()),
            None => (obj.to_string(), String::new()),
        };
        pb::SubjectFilter {
            subject_type: t,
            optional_subject_id: id,
            optional_relation: rel.map(|r| pb::subject_filter::RelationFilter {
                relation: r.to_string(),
            }),
        }
    });
    Ok(pb::RelationshipFilter {
        resource_type,
        optional_resource_id: resource_id,
        optional_resource_id_prefix: String::new(),
        optional_relation: relation,
        optional_subject_filter,
    })
}

pub fn fully_consistent() -> Option<pb::Consistency> {
    Some(pb::Consistency {
        requirement: Some(pb::consistency::Requirement::FullyConsistent(true)),
    })
}

pub fn check_request(
    resource: &ObjectRef,
    permission: &str,
    subject: &SubjectRef,
) -> pb::CheckPermissionRequest {
    pb::CheckPermissionRequest {
        consistency: fully_consistent(),
        resource: Some(convert::object_pb(resource)),
        permission: permission.to_string(),
        subject: Some(convert::subject_pb(subject)),
        context: None,
        with_tracing: false,
    }
}

pub fn update(op: crate::model::Operation, rel: &Relationship) -> pb::RelationshipUpdate {
    pb::RelationshipUpdate {
        operation: convert::operation_pb(op),
        relationship: Some(convert::relationship_pb(rel)),
    }
}

/// Renders an expand tree, one node per line.
pub fn render_tree(t: &pb::PermissionRelationshipTree, indent: usize, out: &mut String) {
    use pb::permission_relationship_tree::TreeType;
    let pad = "  ".repeat(indent);
    let name = match &t.expanded_object {
        Some(o) => format!("{}:{}#{}", o.object_type, o.object_id, t.expanded_relation),
        None => t.expanded_relation.clone(),
    };
    match &t.tree_type {
        Some(TreeType::Leaf(l)) => {
            let subjects: Vec<String> = l
                .subjects
                .iter()
                .map(|s| {
                    let o = s.object.as_ref();
                    let base = format!(
                        "{}:{}",
                        o.map(|o| o.object_type.as_str()).unwrap_or(""),
                        o.map(|o| o.object_id.as_str()).unwrap_or("")
                    );
                    if s.optional_relation.is_empty() {
                        base
                    } else {
                        format!("{base}#{}", s.optional_relation)
                    }
                })
                .collect();
            out.push_str(&format!("{pad}{name}: [{}]\n", subjects.join(", ")));
        }
        Some(TreeType::Intermediate(i)) => {
            let op = match pb::algebraic_subject_set::Operation::try_from(i.operation) {
                Ok(pb::algebraic_subject_set::Operation::Union) => "union",
                Ok(pb::algebraic_subject_set::Operation::Intersection) => "intersection",
                Ok(pb::algebraic_subject_set::Operation::Exclusion) => "exclusion",
                _ => "?",
            };
            out.push_str(&format!("{pad}{name} ({op})\n"));
            for c in &i.children {
                render_tree(c, indent + 1, out);
            }
        }
        None => out.push_str(&format!("{pad}{name}: (empty)\n")),
    }
}
