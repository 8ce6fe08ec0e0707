//! The syntax tree of a schema, with source spans. Produced by the parser,
//! consumed by the compiler (type checking) and the formatter.

use super::diagnostic::Span;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SchemaAst {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Definition(DefinitionAst),
    /// `caveat name(params) { expression }` — parsed, refused by the compiler (phase 2).
    Caveat(CaveatAst),
    /// `use expiration` — parsed, refused by the compiler (phase 2).
    UseDirective(Ident),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionAst {
    pub doc: Option<String>,
    pub name: Ident,
    pub members: Vec<Member>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaveatAst {
    pub doc: Option<String>,
    pub name: Ident,
    /// Parameters and body kept verbatim.
    pub params: String,
    pub body: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Relation(RelationAst),
    Permission(PermissionAst),
}

impl Member {
    pub fn name(&self) -> &Ident {
        match self {
            Member::Relation(r) => &r.name,
            Member::Permission(p) => &p.name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationAst {
    pub doc: Option<String>,
    pub name: Ident,
    pub allowed: Vec<AllowedTypeAst>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedTypeAst {
    pub type_name: Ident,
    pub kind: AllowedKind,
    /// `with caveat_name` (phase 2).
    pub caveat: Option<Ident>,
    /// `with expiration` (phase 2).
    pub expiration: Option<Span>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedKind {
    /// `user`
    Direct,
    /// `team#member`
    Userset(Ident),
    /// `user:*`
    Wildcard,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionAst {
    pub doc: Option<String>,
    pub name: Ident,
    pub expr: Expr,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArrowKind {
    /// `rel->perm` or `rel.any(perm)`
    Any,
    /// `rel.all(perm)`
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Union,
    Intersection,
    Exclusion,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Union => "+",
            BinOp::Intersection => "&",
            BinOp::Exclusion => "-",
        }
    }

    /// Binding strength: higher binds tighter (DESIGN.md §2).
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Union => 3,
            BinOp::Intersection => 2,
            BinOp::Exclusion => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Nil(Span),
    /// A relation or permission of the same definition.
    Ref(Ident),
    Arrow {
        relation: Ident,
        target: Ident,
        kind: ArrowKind,
        /// Written `rel.any(p)` rather than `rel->p` (kept so the formatter
        /// preserves the author's choice).
        function_form: bool,
        span: Span,
    },
    Binary {
        op: BinOp,
        left: Box<Expr>,
        right: Box<Expr>,
        span: Span,
    },
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Nil(s) => *s,
            Expr::Ref(i) => i.span,
            Expr::Arrow { span, .. } | Expr::Binary { span, .. } => *span,
        }
    }

    /// Number of leaves (names, arrows, nil) in the expression.
    pub fn term_count(&self) -> usize {
        match self {
            Expr::Binary { left, right, .. } => left.term_count() + right.term_count(),
            _ => 1,
        }
    }
}

impl SchemaAst {
    /// The same tree with every span zeroed: two schemas that differ only in
    /// layout compare equal after this.
    pub fn without_spans(&self) -> SchemaAst {
        fn id(i: &Ident) -> Ident {
            Ident {
                name: i.name.clone(),
                span: Span::default(),
            }
        }
        fn expr(e: &Expr) -> Expr {
            match e {
                Expr::Nil(_) => Expr::Nil(Span::default()),
                Expr::Ref(i) => Expr::Ref(id(i)),
                Expr::Arrow {
                    relation,
                    target,
                    kind,
                    function_form,
                    ..
                } => Expr::Arrow {
                    relation: id(relation),
                    target: id(target),
                    kind: *kind,
                    function_form: *function_form,
                    span: Span::default(),
                },
                Expr::Binary {
                    op, left, right, ..
                } => Expr::Binary {
                    op: *op,
                    left: Box::new(expr(left)),
                    right: Box::new(expr(right)),
                    span: Span::default(),
                },
            }
        }
        let items = self
            .items
            .iter()
            .map(|item| match item {
                Item::Definition(d) => Item::Definition(DefinitionAst {
                    doc: d.doc.clone(),
                    name: id(&d.name),
                    span: Span::default(),
                    members: d
                        .members
                        .iter()
                        .map(|m| match m {
                            Member::Relation(r) => Member::Relation(RelationAst {
                                doc: r.doc.clone(),
                                name: id(&r.name),
                                span: Span::default(),
                                allowed: r
                                    .allowed
                                    .iter()
                                    .map(|a| AllowedTypeAst {
                                        type_name: id(&a.type_name),
                                        kind: match &a.kind {
                                            AllowedKind::Userset(r) => AllowedKind::Userset(id(r)),
                                            k => k.clone(),
                                        },
                                        caveat: a.caveat.as_ref().map(id),
                                        expiration: a.expiration.map(|_| Span::default()),
                                        span: Span::default(),
                                    })
                                    .collect(),
                            }),
                            Member::Permission(p) => Member::Permission(PermissionAst {
                                doc: p.doc.clone(),
                                name: id(&p.name),
                                expr: expr(&p.expr),
                                span: Span::default(),
                            }),
                        })
                        .collect(),
                }),
                Item::Caveat(c) => Item::Caveat(CaveatAst {
                    doc: c.doc.clone(),
                    name: id(&c.name),
                    params: c.params.clone(),
                    body: c.body.clone(),
                    span: Span::default(),
                }),
                Item::UseDirective(i) => Item::UseDirective(id(i)),
            })
            .collect();
        SchemaAst { items }
    }
}
