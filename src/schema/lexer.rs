//! Turns schema text into tokens with spans. Never fails: characters it does
//! not know become `Tok::Unknown` and the parser reports them in context.

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
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let tok = if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            comments.push(Span::new(start, i));
            continue;
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let is_doc = bytes.get(i + 2) == Some(&b'*') && bytes.get(i + 3) != Some(&b'/');
            match src[i + 2..].find("*/") {
                Some(end) => {
                    let body = &src[i + 2..i + 2 + end];
                    i = i + 2 + end + 2;
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
            while i < bytes.len() {
                let b = bytes[i];
                let prefix_slash = b == b'/'
                    && bytes
                        .get(i + 1)
                        .is_some_and(|n| n.is_ascii_alphabetic() || *n == b'_');
                if b.is_ascii_alphanumeric() || b == b'_' || prefix_slash {
                    i += 1;
                } else {
                    break;
                }
            }
            Tok::Ident(src[start..i].to_string())
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            Tok::Number(src[start..i].to_string())
        } else if c == b'"' || c == b'\'' {
            i += 1;
            let mut closed = false;
            while i < bytes.len() {
                if bytes[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if bytes[i] == c {
                    closed = true;
                    i += 1;
                    break;
                }
                i += 1;
            }
            i = i.min(bytes.len());
            if closed {
                Tok::Str(src[start + 1..i - 1].to_string())
            } else {
                Tok::UnterminatedString
            }
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'>') {
            i += 2;
            Tok::Arrow
        } else if c.is_ascii() {
            i += 1;
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
            let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
            i += ch.len_utf8();
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
