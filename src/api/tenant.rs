//! A confined key's view of the schema (DESIGN.md §6, SECURITY.md
//! "Tenants"): the definitions under its prefixes, cut from the schema
//! text with their comments, and the merge that replaces only those.

use tonic::Status;

use super::auth::{Caller, Tenant};
use crate::schema::ast::{Item, Member};
use crate::schema::{self, Limits, Schema};

/// The schema text split into the tenant's definitions and everything
/// else, each definition with the comments before it, in source order.
pub(crate) struct Parts {
    pub own: String,
    pub others: String,
}

pub(crate) fn partition(text: &str, tenant: &Tenant, limits: &Limits) -> Result<Parts, Status> {
    // The stored text was compiled when written: it parses.
    let ast = schema::parse_ast(text, limits)
        .map_err(|e| Status::internal(format!("stored schema does not parse: {e}")))?;
    let mut parts = Parts {
        own: String::new(),
        others: String::new(),
    };
    let mut from = 0;
    for item in &ast.items {
        let (end, inside) = match item {
            Item::Definition(d) => (d.span.end, tenant.allows(&d.name.name)),
            Item::Caveat(c) => (c.span.end, false),
            Item::UseDirective(u) => (u.span.end, false),
        };
        let slice = text
            .get(from..end)
            .ok_or_else(|| Status::internal("schema span outside its text"))?;
        if inside {
            parts.own.push_str(slice);
        } else {
            parts.others.push_str(slice);
        }
        from = end;
    }
    parts.others.push_str(text.get(from..).unwrap_or(""));
    Ok(parts)
}

/// The tenant's own definitions of `text`, as text (trimmed).
pub(crate) fn own_text(text: &str, tenant: &Tenant, limits: &Limits) -> Result<String, Status> {
    if !tenant.is_confined() {
        return Ok(text.to_string());
    }
    let own = partition(text, tenant, limits)?.own;
    Ok(format!("{}\n", own.trim()))
}

/// Refuses a confined key's schema text that defines or names a type
/// outside its prefixes (a relation allowing another tenant's type would
/// link the two).
pub(crate) fn confine_schema(caller: &Caller, text: &str, limits: &Limits) -> Result<(), Status> {
    if !caller.tenant.is_confined() {
        return Ok(());
    }
    // A text that does not parse is refused by the compiler, with its
    // diagnostic, when it is written.
    let Ok(ast) = schema::parse_ast(text, limits) else {
        return Ok(());
    };
    let mut names: Vec<&str> = Vec::new();
    for item in &ast.items {
        let Item::Definition(d) = item else {
            continue;
        };
        names.push(&d.name.name);
        for m in &d.members {
            if let Member::Relation(r) = m {
                names.extend(r.allowed.iter().map(|a| a.type_name.name.as_str()));
            }
        }
    }
    caller.confine(names)
}

/// A confined key's schema write: its definitions replaced by `text`,
/// every other tenant's kept as they are (`current`: the text in force).
pub(crate) fn merge(
    current: Option<&str>,
    text: &str,
    tenant: &Tenant,
    limits: &Limits,
) -> Result<String, Status> {
    let others = match current {
        Some(c) if tenant.is_confined() => partition(c, tenant, limits)?.others,
        _ => return Ok(text.to_string()),
    };
    let others = others.trim();
    if others.is_empty() {
        return Ok(text.to_string());
    }
    Ok(format!("{others}\n\n{}", text.trim_start()))
}

/// The compiled schema cut to the tenant's definitions (reflection, diffs).
pub(crate) fn own_schema(schema: &Schema, tenant: &Tenant) -> Schema {
    let mut own = schema.clone();
    own.definitions.retain(|name, _| tenant.allows(name));
    own
}
