//! `${file:}` / `${env:}` substitution (`gitreload::secrets::substitute`).
//!
//! The input is a file built from pieces: literal text (escaped as the
//! README says: `$${file:` / `$${env:` for a literal `${file:` / `${env:`),
//! references, and raw bytes. Properties:
//! - Escaping round-trips: any text, escaped, comes back unchanged with
//!   nothing substituted and nothing looked up.
//! - Without raw pieces the result is exact: every well-formed reference is
//!   replaced by its value, once, in order, and everything else is kept
//!   byte for byte; the first malformed reference fails with its own line
//!   and text.
//! - For any input: no reference is left unresolved in the output (every
//!   `${file:`/`${env:` there comes from an escape or from a value), values
//!   are never expanded again, the resolver only ever sees absolute paths
//!   without `.`/`..` and variable names `[A-Za-z_][A-Za-z0-9_]*`, and an
//!   error never carries a value.
#![no_main]

use gitreload::secrets::{substitute, Reference};
use libfuzzer_sys::fuzz_target;

/// The input, pieces separated by 0xFF (so seeds and crashes read as
/// text); a piece's first byte says what it is: `t` text, `e` a `${env:}`
/// reference to the name that follows, `f` a `${file:}` reference to the
/// path that follows, `v` the values references resolve to from here on,
/// `!` the lookup that fails (its number follows, counted from 0);
/// anything else is raw bytes, put into the file as they are.
#[derive(Debug)]
enum Piece<'a> {
    Text(&'a [u8]),
    Env(&'a str),
    File(&'a str),
    Raw(&'a [u8]),
}

#[derive(Debug)]
struct Input<'a> {
    pieces: Vec<Piece<'a>>,
    /// Values the references resolve to, in turn.
    values: Vec<&'a [u8]>,
    /// The lookup that fails, counted from 0.
    fail_at: Option<usize>,
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Input<'a> {
        let mut input = Input {
            pieces: Vec::new(),
            values: Vec::new(),
            fail_at: None,
        };
        for piece in data.split(|b| *b == 0xff) {
            let rest = piece.get(1..).unwrap_or_default();
            let text = || String::from_utf8_lossy(rest);
            match piece.first() {
                Some(b't') => input.pieces.push(Piece::Text(rest)),
                Some(b'e') => match std::str::from_utf8(rest) {
                    Ok(name) => input.pieces.push(Piece::Env(name)),
                    Err(_) => input.pieces.push(Piece::Raw(piece)),
                },
                Some(b'f') => match std::str::from_utf8(rest) {
                    Ok(path) => input.pieces.push(Piece::File(path)),
                    Err(_) => input.pieces.push(Piece::Raw(piece)),
                },
                Some(b'v') => input.values.push(rest),
                Some(b'!') => input.fail_at = text().trim().parse().ok(),
                _ => input.pieces.push(Piece::Raw(piece)),
            }
        }
        input
    }
}

const OPENERS: [&[u8]; 2] = [b"${file:", b"${env:"];
/// Starts every value, so that a value is recognisable in any output.
const MARK: &[u8] = b"\x01VALUE";

fn starts_opener(text: &[u8]) -> bool {
    OPENERS.iter().any(|o| text.starts_with(o))
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| w == &needle)
        .count()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    count(haystack, needle) > 0
}

/// Literal text as a file must spell it: `$` before every opener.
fn escape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for i in 0..text.len() {
        if starts_opener(&text[i..]) {
            out.push(b'$');
        }
        out.push(text[i]);
    }
    out
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_path(path: &str) -> bool {
    path.starts_with('/') && path.split('/').all(|c| c != "." && c != "..")
}

/// A reference's body cannot hold `}` or a newline (it would end there).
fn body(text: &str) -> String {
    text.replace(['}', '\n'], "_")
}

/// Hands out the values in turn (each behind [`MARK`]); fails at `fail_at`.
struct Resolver<'a> {
    values: &'a [&'a [u8]],
    fail_at: Option<usize>,
    seen: Vec<String>,
}

impl Resolver<'_> {
    fn value(&self, n: usize) -> Vec<u8> {
        let mut value = MARK.to_vec();
        value.extend_from_slice(n.to_string().as_bytes());
        if !self.values.is_empty() {
            value.extend_from_slice(self.values[n % self.values.len()]);
        }
        value
    }

    fn resolve(&mut self, reference: Reference<'_>) -> Result<Vec<u8>, String> {
        match reference {
            Reference::File(path) => assert!(valid_path(path), "looked up {reference}"),
            Reference::Env(name) => assert!(valid_name(name), "looked up {reference}"),
        }
        let n = self.seen.len();
        self.seen.push(reference.to_string());
        if self.fail_at == Some(n) {
            return Err("cannot be read".into());
        }
        Ok(self.value(n))
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    // 1. Escaping round-trips.
    let plain: Vec<u8> = input
        .pieces
        .iter()
        .flat_map(|p| match p {
            Piece::Text(t) | Piece::Raw(t) => t.to_vec(),
            Piece::Env(s) | Piece::File(s) => s.as_bytes().to_vec(),
        })
        .collect();
    let round = substitute(&escape(&plain), u64::MAX, |r| {
        panic!("looked up {r} in escaped text")
    })
    .expect("escaped text is always accepted");
    assert_eq!(round.content, plain, "escaping does not round-trip");
    assert_eq!(round.substituted, 0);

    // 2. The file, and what it must become when it has no raw pieces.
    let mut file = Vec::new();
    let mut expected: Vec<Expected> = Vec::new();
    let mut references: Vec<(String, bool)> = Vec::new();
    let mut text: Vec<u8> = Vec::new();
    let mut exact = true;
    let mut first_invalid: Option<(usize, String)> = None;
    let flush = |text: &mut Vec<u8>, file: &mut Vec<u8>, expected: &mut Vec<Expected>| {
        file.extend_from_slice(&escape(text));
        expected.push(Expected::Text(std::mem::take(text)));
    };
    for piece in &input.pieces {
        let (written, valid) = match piece {
            Piece::Text(t) => {
                text.extend_from_slice(t);
                continue;
            }
            Piece::Raw(r) => {
                exact = false;
                flush(&mut text, &mut file, &mut expected);
                file.extend_from_slice(r);
                continue;
            }
            Piece::Env(name) => {
                let name = body(name);
                (format!("${{env:{name}}}"), valid_name(&name))
            }
            Piece::File(path) => {
                let path = body(path);
                (format!("${{file:{path}}}"), valid_path(&path))
            }
        };
        // `$` right before a reference would make it an escape.
        while text.last() == Some(&b'$') {
            text.pop();
        }
        flush(&mut text, &mut file, &mut expected);
        if !valid && first_invalid.is_none() {
            first_invalid = Some((1 + count(&file, b"\n"), written.clone()));
        }
        file.extend_from_slice(written.as_bytes());
        expected.push(Expected::Value(references.len()));
        references.push((written, valid));
    }
    flush(&mut text, &mut file, &mut expected);

    let mut resolver = Resolver {
        values: &input.values,
        fail_at: input.fail_at,
        seen: Vec::new(),
    };
    let result = substitute(&file, u64::MAX, |r| resolver.resolve(r));

    // 3. Properties of any input.
    match &result {
        Ok(done) => {
            assert_eq!(done.substituted, resolver.seen.len());
            // Every opener in the output starts at an escape's `${` or at a
            // `$` inside a value: none is a reference left unresolved.
            let escapes: usize = OPENERS
                .iter()
                .map(|o| count(&file, &[b"$", *o].concat()))
                .sum();
            let dollars_in_values: usize = (0..resolver.seen.len())
                .map(|n| count(&resolver.value(n), b"$"))
                .sum();
            let openers: usize = OPENERS.iter().map(|o| count(&done.content, o)).sum();
            assert!(
                openers <= escapes + dollars_in_values,
                "a reference was left unresolved in {:?} -> {:?}",
                String::from_utf8_lossy(&file),
                String::from_utf8_lossy(&done.content)
            );
        }
        Err(e) => {
            assert!(e.line >= 1 && e.line <= 1 + count(&file, b"\n"), "{e:?}");
            assert!(e.reference.starts_with("${"), "{e:?}");
            if !contains(&file, MARK) {
                assert!(
                    !contains(e.to_string().as_bytes(), MARK),
                    "an error carries a value: {e}"
                );
            }
        }
    }

    // 4. The exact result when the file is only text and references.
    if !exact {
        return;
    }
    // The failing lookup happens only if every reference up to it is
    // well-formed (the first malformed one stops the file first).
    let failing = resolver
        .fail_at
        .filter(|n| *n < references.len() && references[..=*n].iter().all(|(_, ok)| *ok));
    match (&result, &first_invalid, failing) {
        (Err(e), _, Some(n)) => {
            assert_eq!(e.reference, references[n].0, "{e:?}");
            assert_eq!(e.reason, "cannot be read");
        }
        (Err(e), Some((line, written)), None) => {
            assert_eq!((e.line, &e.reference), (*line, written), "{e:?}");
        }
        (Ok(done), None, None) => {
            let written: Vec<&String> = references.iter().map(|(w, _)| w).collect();
            assert_eq!(
                resolver.seen.iter().collect::<Vec<_>>(),
                written,
                "references looked up out of order"
            );
            let want: Vec<u8> = expected
                .iter()
                .flat_map(|part| match part {
                    Expected::Text(t) => t.clone(),
                    Expected::Value(n) => resolver.value(*n),
                })
                .collect();
            assert_eq!(
                done.content,
                want,
                "wrong substitution of {:?}",
                String::from_utf8_lossy(&file)
            );
        }
        (result, invalid, failing) => panic!(
            "substitute({:?}) gave {result:?}; expected the malformed {invalid:?} or the failing lookup {failing:?}",
            String::from_utf8_lossy(&file)
        ),
    }
});

/// A part of the output a file of text and references must give.
enum Expected {
    /// Literal text (written escaped in the file).
    Text(Vec<u8>),
    /// The value of the n-th reference.
    Value(usize),
}
