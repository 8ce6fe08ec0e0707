//! Turns schema text into tokens with spans. Never fails: characters it does
//! not know become `Tok::Unknown` and the parser reports them in context.
//!
//! Reads untrusted input: no indexing, no unchecked arithmetic, no
//! truncating casts (denied here, so a change cannot reintroduce them).
#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation
)]

use super::diagnostic::Span;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A name, possibly with `ns/` prefixes; keywords are names too.
    Ident(String),
    /// `/** ... */`, with the markers and leading `*`s stripped.
    DocComment(String),
    Str(String),
    Number(String),
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Colon,
    Pipe,
    Hash,
    Star,
    Plus,
    Amp,
    Minus,
    Arrow,
    Dot,
    Comma,
    Eq,
    Semi,
    /// Anything else (CEL operators inside caveats, stray characters).
    Unknown(char),
    /// `/*` never closed.
    UnterminatedComment,
    /// A string never closed.
    UnterminatedString,
    Eof,
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

pub fn lex(src: &str) -> Vec<Token> {
    lex_keeping(src, &mut Vec::new())
}

/// The spans of the plain comments (`// …` and `/* … */`, not doc comments)
/// of `src`, in order: the formatter puts them back.
pub fn plain_comments(src: &str) -> Vec<Span> {
    let mut comments = Vec::new();
    lex_keeping(src, &mut comments);
    comments
}

fn lex_keeping(src: &str, comments: &mut Vec<Span>) -> Vec<Token> {
    let bytes = src.as_bytes();
    // The byte at `i`, if any: every read is checked, so no input can make
    // the lexer index out of bounds.
    let at = |i: usize| bytes.get(i).copied();
    // `src[a..b]`, or empty if that is not a slice of it (it always is:
    // bounds come from ASCII positions found above).
    let text = |a: usize, b: usize| src.get(a..b).unwrap_or_default();
    let mut out = Vec::new();
    let mut i: usize = 0;
    while let Some(c) = at(i) {
        if c.is_ascii_whitespace() {
            i = i.saturating_add(1);
            continue;
        }
        let start = i;
        let next = at(i.saturating_add(1));
        let tok = if c == b'/' && next == Some(b'/') {
            while at(i).is_some_and(|b| b != b'\n') {
                i = i.saturating_add(1);
            }
            comments.push(Span::new(start, i));
            continue;
        } else if c == b'/' && next == Some(b'*') {
            let is_doc =
                at(i.saturating_add(2)) == Some(b'*') && at(i.saturating_add(3)) != Some(b'/');
            let body_start = i.saturating_add(2);
            match src.get(body_start..).and_then(|rest| rest.find("*/")) {
                Some(end) => {
                    let body_end = body_start.saturating_add(end);
                    let body = text(body_start, body_end);
                    i = body_end.saturating_add(2);
                    if is_doc {
                        Tok::DocComment(clean_doc(body))
                    } else {
                        comments.push(Span::new(start, i));
                        continue;
                    }
                }
                None => {
                    i = bytes.len();
                    Tok::UnterminatedComment
                }
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while let Some(b) = at(i) {
                let prefix_slash = b == b'/'
                    && at(i.saturating_add(1))
                        .is_some_and(|n| n.is_ascii_alphabetic() || n == b'_');
                if b.is_ascii_alphanumeric() || b == b'_' || prefix_slash {
                    i = i.saturating_add(1);
                } else {
                    break;
                }
            }
            Tok::Ident(text(start, i).to_string())
        } else if c.is_ascii_digit() {
            while at(i).is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.') {
                i = i.saturating_add(1);
            }
            Tok::Number(text(start, i).to_string())
        } else if c == b'"' || c == b'\'' {
            i = i.saturating_add(1);
            let mut closed = false;
            while let Some(b) = at(i) {
                if b == b'\\' {
                    i = i.saturating_add(2);
                    continue;
                }
                i = i.saturating_add(1);
                if b == c {
                    closed = true;
                    break;
                }
            }
            i = i.min(bytes.len());
            if closed {
                // Between the opening quote and the closing one (at i - 1).
                Tok::Str(text(start.saturating_add(1), i.saturating_sub(1)).to_string())
            } else {
                Tok::UnterminatedString
            }
        } else if c == b'-' && next == Some(b'>') {
            i = i.saturating_add(2);
            Tok::Arrow
        } else if c.is_ascii() {
            i = i.saturating_add(1);
            match c {
                b'{' => Tok::LBrace,
                b'}' => Tok::RBrace,
                b'(' => Tok::LParen,
                b')' => Tok::RParen,
                b'[' => Tok::LBracket,
                b']' => Tok::RBracket,
                b':' => Tok::Colon,
                b'|' => Tok::Pipe,
                b'#' => Tok::Hash,
                b'*' => Tok::Star,
                b'+' => Tok::Plus,
                b'&' => Tok::Amp,
                b'-' => Tok::Minus,
                b'.' => Tok::Dot,
                b',' => Tok::Comma,
                b'=' => Tok::Eq,
                b';' => Tok::Semi,
                other => Tok::Unknown(other as char),
            }
        } else {
            // A multi-byte character: consume it whole.
            let ch = src
                .get(i..)
                .and_then(|rest| rest.chars().next())
                .unwrap_or('\u{fffd}');
            i = i.saturating_add(ch.len_utf8());
            Tok::Unknown(ch)
        };
        out.push(Token {
            tok,
            span: Span::new(start, i),
        });
    }
    out.push(Token {
        tok: Tok::Eof,
        span: Span::new(src.len(), src.len()),
    });
    out
}

fn clean_doc(body: &str) -> String {
    let body = body.strip_prefix('*').unwrap_or(body);
    body.lines()
        .map(|l| {
            let t = l.trim();
            t.strip_prefix("* ")
                .or_else(|| t.strip_prefix('*'))
                .unwrap_or(t)
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::DocComment(_) => "a doc comment".into(),
            Tok::Str(_) => "a string".into(),
            Tok::Number(n) => format!("number `{n}`"),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Pipe => "`|`".into(),
            Tok::Hash => "`#`".into(),
            Tok::Star => "`*`".into(),
            Tok::Plus => "`+`".into(),
            Tok::Amp => "`&`".into(),
            Tok::Minus => "`-`".into(),
            Tok::Arrow => "`->`".into(),
            Tok::Dot => "`.`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eq => "`=`".into(),
            Tok::Semi => "`;`".into(),
            Tok::Unknown(c) => format!("`{}`", c.escape_debug()),
            Tok::UnterminatedComment => "an unterminated `/*` comment".into(),
            Tok::UnterminatedString => "an unterminated string".into(),
            Tok::Eof => "the end of the schema".into(),
        }
    }
}
