//! Recursive-descent parser: tokens → [`SchemaAst`]. Stops at the first
//! syntax error and reports it with a span and a hint. Bounded: nesting depth
//! and expression size are limited so hostile input cannot blow the stack or
//! take long.
//!
//! Reads untrusted input: no indexing, no unchecked arithmetic, no
//! truncating casts (denied here, so a change cannot reintroduce them).
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation
)]

use super::Limits;
use super::ast::*;
use super::diagnostic::{Diagnostic, Span};
use super::lexer::{Tok, Token, lex};

pub fn parse(src: &str, limits: &Limits) -> Result<SchemaAst, Diagnostic> {
    if src.len() > limits.max_schema_bytes {
        return Err(Diagnostic::error(
            Span::new(0, 0),
            format!(
                "schema is {} bytes, more than the limit of {} bytes",
                src.len(),
                limits.max_schema_bytes
            ),
        )
        .with_hint("split the schema or raise the schema size limit in the configuration"));
    }
    let mut p = Parser {
        src,
        toks: lex(src),
        pos: 0,
        limits,
        depth: 0,
        terms: 0,
    };
    p.schema()
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
    limits: &'a Limits,
    depth: usize,
    terms: usize,
}

type PResult<T> = Result<T, Diagnostic>;

/// What reading past the last token gives (the lexer always ends the list
/// with Eof, so this is only a fallback).
static EOF: Token = Token {
    tok: Tok::Eof,
    span: Span { start: 0, end: 0 },
};

impl<'a> Parser<'a> {
    fn peek(&self) -> &Token {
        // The token list always ends with Eof and `pos` never passes it;
        // past the end reads as Eof anyway.
        self.toks.get(self.pos).or(self.toks.last()).unwrap_or(&EOF)
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self
            .toks
            .get(self.pos.saturating_add(n))
            .or(self.toks.last())
            .unwrap_or(&EOF)
            .tok
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if t.tok != Tok::Eof {
            self.pos = self.pos.saturating_add(1);
        }
        t
    }

    fn at(&self, tok: &Tok) -> bool {
        &self.peek().tok == tok
    }

    fn at_keyword(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s == kw)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.at(tok) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn unexpected(&self, expected: &str, hint: &str) -> Diagnostic {
        let t = self.peek();
        let msg = match &t.tok {
            Tok::UnterminatedComment => "unterminated `/*` comment".to_string(),
            Tok::UnterminatedString => "unterminated string".to_string(),
            other => format!("expected {expected}, found {}", other.describe()),
        };
        Diagnostic::error(t.span, msg).with_hint(hint)
    }

    fn expect(&mut self, tok: Tok, expected: &str, hint: &str) -> PResult<Span> {
        if self.at(&tok) {
            Ok(self.bump().span)
        } else {
            Err(self.unexpected(expected, hint))
        }
    }

    fn ident(&mut self, what: &str, hint: &str) -> PResult<Ident> {
        match &self.peek().tok {
            Tok::Ident(name) => {
                let name = name.clone();
                let span = self.bump().span;
                Ok(Ident { name, span })
            }
            _ => Err(self.unexpected(what, hint)),
        }
    }

    fn doc(&mut self) -> Option<String> {
        let mut doc = None;
        while let Tok::DocComment(text) = &self.peek().tok {
            doc = Some(text.clone());
            self.bump();
        }
        doc
    }

    fn schema(&mut self) -> PResult<SchemaAst> {
        let mut items = Vec::new();
        loop {
            let doc = self.doc();
            while self.eat(&Tok::Semi) {}
            if self.at(&Tok::Eof) {
                break;
            }
            if self.at_keyword("definition") {
                items.push(Item::Definition(self.definition(doc)?));
            } else if self.at_keyword("caveat") {
                items.push(Item::Caveat(self.caveat(doc)?));
            } else if self.at_keyword("use") {
                self.bump();
                let what = self.ident("a feature name after `use`", "write `use expiration`")?;
                items.push(Item::UseDirective(what));
            } else {
                return Err(self.unexpected(
                    "`definition` or `caveat`",
                    "a schema is a list of `definition name { ... }` blocks",
                ));
            }
        }
        Ok(SchemaAst { items })
    }

    fn definition(&mut self, doc: Option<String>) -> PResult<DefinitionAst> {
        let start = self.bump().span;
        let name = self.ident(
            "a definition name",
            "write `definition name { ... }`, e.g. `definition user {}`",
        )?;
        self.expect(
            Tok::LBrace,
            "`{` after the definition name",
            "a definition's body is in braces: `definition user {}`",
        )?;
        let mut members = Vec::new();
        loop {
            let doc = self.doc();
            while self.eat(&Tok::Semi) {}
            if self.at(&Tok::RBrace) {
                break;
            }
            if self.at_keyword("relation") {
                members.push(Member::Relation(self.relation(doc)?));
            } else if self.at_keyword("permission") {
                members.push(Member::Permission(self.permission(doc)?));
            } else if self.at(&Tok::Eof) {
                return Err(self.unexpected(
                    "`}` to close the definition",
                    &format!("definition `{}` is never closed", name.name),
                ));
            } else {
                return Err(self.unexpected(
                    "`relation`, `permission` or `}`",
                    "a definition holds `relation name: type` and `permission name = expression` lines",
                ));
            }
        }
        let end = self.bump().span;
        Ok(DefinitionAst {
            doc,
            name,
            members,
            span: start.to(end),
        })
    }

    fn caveat(&mut self, doc: Option<String>) -> PResult<CaveatAst> {
        let start = self.bump().span;
        let name = self.ident(
            "a caveat name",
            "write `caveat name(param type) { expression }`",
        )?;
        let params = self.balanced(Tok::LParen, Tok::RParen, "`(` after the caveat name")?;
        let body = self.balanced(Tok::LBrace, Tok::RBrace, "`{` with the caveat expression")?;
        let end = self
            .toks
            .get(self.pos.saturating_sub(1))
            .map_or(start, |t| t.span);
        Ok(CaveatAst {
            doc,
            name,
            params,
            body,
            span: start.to(end),
        })
    }

    /// Skips a balanced `open ... close` group and returns its inner text.
    fn balanced(&mut self, open: Tok, close: Tok, expected: &str) -> PResult<String> {
        let open_span = self.expect(
            open.clone(),
            expected,
            "caveats are `caveat name(params) { expression }`",
        )?;
        let mut depth = 1usize;
        loop {
            let t = self.bump();
            if t.tok == open {
                depth = depth.saturating_add(1);
            } else if t.tok == close {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Ok(self.src[open_span.end..t.span.start].trim().to_string());
                }
            } else if t.tok == Tok::Eof {
                return Err(Diagnostic::error(
                    open_span,
                    format!("{} is never closed", open.describe()),
                )
                .with_hint(format!("add the matching {}", close.describe())));
            }
        }
    }

    fn relation(&mut self, doc: Option<String>) -> PResult<RelationAst> {
        let start = self.bump().span;
        let name = self.ident(
            "a relation name",
            "write `relation name: type`, e.g. `relation viewer: user`",
        )?;
        self.expect(
            Tok::Colon,
            "`:` after the relation name",
            "write `relation name: type`, e.g. `relation viewer: user | team#member`",
        )?;
        let mut allowed = vec![self.allowed_type()?];
        while self.eat(&Tok::Pipe) {
            allowed.push(self.allowed_type()?);
        }
        let end = allowed.last().map(|a| a.span).unwrap_or(start);
        Ok(RelationAst {
            doc,
            name,
            allowed,
            span: start.to(end),
        })
    }

    fn allowed_type(&mut self) -> PResult<AllowedTypeAst> {
        let type_name = self.ident(
            "a subject type",
            "allowed subject types are `type`, `type#relation` or `type:*`",
        )?;
        let mut span = type_name.span;
        let kind = if self.eat(&Tok::Hash) {
            let rel = self.ident(
                "a relation name after `#`",
                "write `type#relation`, e.g. `team#member`",
            )?;
            span = span.to(rel.span);
            AllowedKind::Userset(rel)
        } else if self.at(&Tok::Colon) {
            self.bump();
            let star = self.expect(
                Tok::Star,
                "`*` after `:`",
                "a wildcard subject type is written `type:*`",
            )?;
            span = span.to(star);
            AllowedKind::Wildcard
        } else {
            AllowedKind::Direct
        };
        let mut caveat = None;
        let mut expiration = None;
        if self.at_keyword("with") {
            self.bump();
            loop {
                let what = self.ident(
                    "a caveat name or `expiration` after `with`",
                    "write `type with caveat_name` or `type with expiration`",
                )?;
                span = span.to(what.span);
                if what.name == "expiration" {
                    expiration = Some(what.span);
                } else {
                    caveat = Some(what);
                }
                if self.at_keyword("and") {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        Ok(AllowedTypeAst {
            type_name,
            kind,
            caveat,
            expiration,
            span,
        })
    }

    fn permission(&mut self, doc: Option<String>) -> PResult<PermissionAst> {
        let start = self.bump().span;
        let name = self.ident(
            "a permission name",
            "write `permission name = expression`, e.g. `permission view = viewer + owner`",
        )?;
        self.expect(
            Tok::Eq,
            "`=` after the permission name",
            "write `permission name = expression`",
        )?;
        self.terms = 0;
        let expr = self.expr()?;
        match &self.peek().tok {
            Tok::RBrace | Tok::Eof | Tok::DocComment(_) | Tok::Semi => {}
            Tok::Ident(kw) if kw == "relation" || kw == "permission" => {}
            _ => {
                return Err(self.unexpected(
                    "an operator (`+`, `&`, `-`) or the end of the permission",
                    "combine names with `+` (union), `&` (intersection), `-` (exclusion) and `->` (arrow)",
                ));
            }
        }
        let span = start.to(expr.span());
        Ok(PermissionAst {
            doc,
            name,
            expr,
            span,
        })
    }

    fn expr(&mut self) -> PResult<Expr> {
        self.binary(BinOp::Exclusion)
    }

    fn binary(&mut self, op: BinOp) -> PResult<Expr> {
        let (tok, next) = match op {
            BinOp::Exclusion => (Tok::Minus, Some(BinOp::Intersection)),
            BinOp::Intersection => (Tok::Amp, Some(BinOp::Union)),
            BinOp::Union => (Tok::Plus, None),
        };
        let operand = |p: &mut Self| match next {
            Some(n) => p.binary(n),
            None => p.primary(),
        };
        let mut left = operand(self)?;
        while self.eat(&tok) {
            let right = operand(self)?;
            let span = left.span().to(right.span());
            left = Expr::Binary {
                op,
                left: Box::new(left),
                right: Box::new(right),
                span,
            };
        }
        Ok(left)
    }

    fn primary(&mut self) -> PResult<Expr> {
        self.terms = self.terms.saturating_add(1);
        if self.terms > self.limits.max_expression_terms {
            return Err(Diagnostic::error(
                self.peek().span,
                format!(
                    "expression has more than {} terms",
                    self.limits.max_expression_terms
                ),
            )
            .with_hint(
                "split the permission into smaller ones or raise the expression size limit",
            ));
        }
        if self.at(&Tok::LParen) {
            let open = self.bump().span;
            self.depth = self.depth.saturating_add(1);
            if self.depth > self.limits.max_nesting {
                return Err(Diagnostic::error(
                    open,
                    format!("parentheses nested deeper than {}", self.limits.max_nesting),
                )
                .with_hint("flatten the expression"));
            }
            let inner = self.expr()?;
            self.depth = self.depth.saturating_sub(1);
            if !self.at(&Tok::RParen) {
                return Err(self.unexpected("`)` or an operator", "every `(` needs a matching `)`"));
            }
            self.bump();
            return Ok(inner);
        }
        if self.at_keyword("nil") {
            return Ok(Expr::Nil(self.bump().span));
        }
        let name = self.ident(
            "a relation or permission name, `nil` or `(`",
            "an expression combines relation and permission names, e.g. `viewer + owner`",
        )?;
        if self.eat(&Tok::Arrow) {
            let target = self.ident(
                "a permission or relation name after `->`",
                "an arrow is `relation->permission`, e.g. `parent->view`",
            )?;
            let span = name.span.to(target.span);
            return Ok(Expr::Arrow {
                relation: name,
                target,
                kind: ArrowKind::Any,
                function_form: false,
                span,
            });
        }
        if self.at(&Tok::Dot) && matches!(self.peek_at(1), Tok::Ident(_)) {
            self.bump();
            let func = self.ident(
                "`any` or `all`",
                "write `relation.any(permission)` or `relation.all(permission)`",
            )?;
            let kind = match func.name.as_str() {
                "any" => ArrowKind::Any,
                "all" => ArrowKind::All,
                other => {
                    return Err(Diagnostic::error(
                        func.span,
                        format!("unknown arrow function `{other}`"),
                    )
                    .with_hint(
                        "the arrow functions are `.any(permission)` and `.all(permission)`",
                    ));
                }
            };
            self.expect(
                Tok::LParen,
                "`(` after the arrow function",
                "write `relation.all(permission)`",
            )?;
            let target = self.ident(
                "a permission or relation name",
                "write `relation.all(permission)`",
            )?;
            let close = self.expect(Tok::RParen, "`)`", "write `relation.all(permission)`")?;
            return Ok(Expr::Arrow {
                relation: name.clone(),
                target,
                kind,
                function_form: true,
                span: name.span.to(close),
            });
        }
        Ok(Expr::Ref(name))
    }
}
