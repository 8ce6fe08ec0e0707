//! Expand: the userset tree of `resource#member`, like Zanzibar's Expand.
//!
//! Permissions expand through their expression (union / intersection /
//! exclusion nodes); references to other members of the same object and
//! arrows expand recursively; a relation is a leaf listing its direct
//! subjects, usersets included but not expanded further (one level deep per
//! node).
//!
//! Each `(object, member)` is expanded at most once per response: a node met
//! again — on the current path (a data cycle) or elsewhere (a shared
//! sub-tree, e.g. every document of a folder cycle reaching the same
//! folders) — is a leaf whose only subject is the userset `object#member`
//! itself, meaning "the members of that node, expanded above". The response
//! is therefore linear in the distinct nodes reached, where unfolding every
//! path was exponential (one request could allocate gigabytes). The set a
//! tree describes is unchanged: a userset leaf stands for exactly its
//! members, and by the fixpoint property plugging a node's members back in
//! gives the same set. The response's size is bounded by
//! [`super::Budget::max_expand_elements`] (nodes plus leaf subjects), and
//! its nesting by [`MAX_TREE_NESTING`]: protobuf decoders refuse messages
//! nested past 100 levels (prost, upb), so a deeper node is rendered as
//! the userset leaf `object#member`, which the client can expand on its own.

use std::collections::BTreeSet;

use futures::future::BoxFuture;

use super::{Error, Evaluator};

/// Tree levels rendered before nodes become userset leaves. Each level is
/// two protobuf messages (a tree and its set), a leaf three more, under the
/// decoders' limit of 100 with room to spare.
pub const MAX_TREE_NESTING: u32 = 40;
use crate::model::{ObjectRef, SubjectRef};
use crate::schema::{ArrowKind, MemberKind, Rewrite};

/// A node of an expand tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandTree {
    /// The object and member this node describes.
    pub object: ObjectRef,
    pub relation: String,
    pub kind: ExpandKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpandKind {
    /// Direct subjects (objects, usersets, wildcards).
    Leaf(Vec<SubjectRef>),
    Union(Vec<ExpandTree>),
    Intersection(Vec<ExpandTree>),
    /// The first child minus the rest.
    Exclusion(Vec<ExpandTree>),
}

impl ExpandTree {
    /// Renders the tree with indentation, one node per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out, 0);
        out
    }

    fn render_into(&self, out: &mut String, indent: usize) {
        let pad = "  ".repeat(indent);
        let name = format!("{}#{}", self.object, self.relation);
        match &self.kind {
            ExpandKind::Leaf(subjects) => {
                let list: Vec<String> = subjects.iter().map(|s| s.to_string()).collect();
                out.push_str(&format!("{pad}{name}: [{}]\n", list.join(", ")));
            }
            ExpandKind::Union(c) | ExpandKind::Intersection(c) | ExpandKind::Exclusion(c) => {
                let op = match &self.kind {
                    ExpandKind::Union(_) => "union",
                    ExpandKind::Intersection(_) => "intersection",
                    _ => "exclusion",
                };
                out.push_str(&format!("{pad}{name} ({op})\n"));
                for child in c {
                    child.render_into(out, indent + 1);
                }
            }
        }
    }
}

impl Evaluator<'_> {
    pub(crate) async fn expand(
        &self,
        resource: &ObjectRef,
        member: &str,
    ) -> Result<ExpandTree, Error> {
        self.expand_member(resource, member, 0, 0).await
    }

    /// Marks `(resource, member)` expanded in this response; false if it
    /// already was.
    fn first_visit(&self, resource: &ObjectRef, member: &str) -> bool {
        match self.expanded.lock() {
            Ok(mut seen) => seen.insert((resource.clone(), member.to_string())),
            // A poisoned lock only follows a panic elsewhere; expanding the
            // node again is still a correct (if larger) answer.
            Err(_) => true,
        }
    }

    /// `level`: tree nodes above this one in the response.
    fn expand_member<'a>(
        &'a self,
        resource: &'a ObjectRef,
        member: &'a str,
        depth: u32,
        level: u32,
    ) -> BoxFuture<'a, Result<ExpandTree, Error>> {
        Box::pin(async move {
            let leaf = |subjects: Vec<SubjectRef>| -> Result<ExpandTree, Error> {
                self.expand_grow(1 + subjects.len() as u64)?;
                Ok(ExpandTree {
                    object: resource.clone(),
                    relation: member.to_string(),
                    kind: ExpandKind::Leaf(subjects),
                })
            };
            if level >= MAX_TREE_NESTING || !self.first_visit(resource, member) {
                let itself = SubjectRef {
                    object: resource.clone(),
                    relation: Some(member.to_string()),
                };
                return leaf(vec![itself]);
            }
            if depth >= self.max_depth {
                return Err(Error::DepthExceeded {
                    depth: self.max_depth,
                });
            }
            self.enter()?;
            let def = self
                .schema
                .definition(&resource.object_type)
                .ok_or_else(|| Error::UnknownType(resource.object_type.clone()))?;
            match def.member_kind(member) {
                Some(MemberKind::Relation) => {
                    let rels = self.read_relation(resource, member).await?;
                    leaf(rels.into_iter().map(|r| r.subject).collect())
                }
                Some(MemberKind::Permission) => {
                    let rewrite = &def.permissions[member].rewrite;
                    self.expand_rewrite(resource, member, rewrite, depth, level)
                        .await
                }
                None => Err(Error::UnknownMember {
                    object_type: resource.object_type.clone(),
                    member: member.to_string(),
                }),
            }
        })
    }

    fn expand_rewrite<'a>(
        &'a self,
        resource: &'a ObjectRef,
        member: &'a str,
        rewrite: &'a Rewrite,
        depth: u32,
        level: u32,
    ) -> BoxFuture<'a, Result<ExpandTree, Error>> {
        Box::pin(async move {
            let node = |kind| -> Result<ExpandTree, Error> {
                self.expand_grow(1)?;
                Ok(ExpandTree {
                    object: resource.clone(),
                    relation: member.to_string(),
                    kind,
                })
            };
            let mut children = Vec::new();
            let kind = match rewrite {
                Rewrite::Nil => return node(ExpandKind::Leaf(Vec::new())),
                Rewrite::Ref(name) => {
                    return self.expand_member(resource, name, depth + 1, level).await;
                }
                Rewrite::Union(cs) | Rewrite::Intersection(cs) => {
                    for c in cs {
                        children.push(
                            self.expand_rewrite(resource, member, c, depth, level + 1)
                                .await?,
                        );
                    }
                    if matches!(rewrite, Rewrite::Union(_)) {
                        ExpandKind::Union(children)
                    } else {
                        ExpandKind::Intersection(children)
                    }
                }
                Rewrite::Exclusion(a, b) => {
                    children.push(
                        self.expand_rewrite(resource, member, a, depth, level + 1)
                            .await?,
                    );
                    children.push(
                        self.expand_rewrite(resource, member, b, depth, level + 1)
                            .await?,
                    );
                    ExpandKind::Exclusion(children)
                }
                Rewrite::Arrow {
                    relation,
                    target,
                    kind,
                } => {
                    let rels = self.read_relation(resource, relation).await?;
                    let objects: BTreeSet<ObjectRef> =
                        rels.into_iter().map(|r| r.subject.object).collect();
                    for object in &objects {
                        let has_target = self
                            .schema
                            .definition(&object.object_type)
                            .is_some_and(|d| d.member_kind(target).is_some());
                        if has_target {
                            children.push(
                                self.expand_member(object, target, depth + 1, level + 1)
                                    .await?,
                            );
                        } else {
                            self.expand_grow(1)?;
                            children.push(ExpandTree {
                                object: object.clone(),
                                relation: target.clone(),
                                kind: ExpandKind::Leaf(Vec::new()),
                            });
                        }
                    }
                    match kind {
                        ArrowKind::Any => ExpandKind::Union(children),
                        ArrowKind::All if children.is_empty() => ExpandKind::Leaf(Vec::new()),
                        ArrowKind::All => ExpandKind::Intersection(children),
                    }
                }
            };
            node(kind)
        })
    }
}
