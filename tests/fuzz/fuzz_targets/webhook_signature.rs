//! The webhook's proof of the shared secret (`gitreload::http::authorized`).
//!
//! Properties, against an HMAC-SHA256 computed here from SHA-256 alone:
//! - a request is accepted only with the exact HMAC of its body
//!   (`X-Hub-Signature-256: sha256=<hex>`, either case, surrounding
//!   whitespace allowed) or, without a signature header, the exact secret
//!   as `X-Gitlab-Token`;
//! - the correct HMAC is always accepted, whatever else the request holds;
//! - any other signature (one digit changed, truncated, extended, another
//!   algorithm's prefix, arbitrary text) is refused unless the request also
//!   proves the secret another way.
#![no_main]

mod oracle;
use libfuzzer_sys::fuzz_target;
use oracle::hmac_sha256;

/// The input, fields separated by 0xFF (so seeds and crashes read as
/// text): `SECRET 0xFF BODY [0xFF SIGNATURE [0xFF TOKEN]]`. A missing field
/// is a missing header. SIGNATURE's first byte says what it is: `c` the
/// correct HMAC (then `U` for upper case, spaces and tabs to pad it), `o`
/// the correct one with one digit changed (then the index), `t` truncated
/// (then the length), `x` extended by the rest, `p` the correct digest
/// behind the rest as prefix; anything else is sent as written. TOKEN: `s`
/// is the secret, anything else is sent as written.
#[derive(Debug)]
enum Signature<'a> {
    Raw(&'a str),
    Correct {
        uppercase: bool,
        pad: (usize, usize),
    },
    OneDigitOff {
        index: usize,
        by: usize,
    },
    Truncated {
        len: usize,
    },
    Extended(&'a str),
    OtherPrefix(&'a str),
}

#[derive(Debug)]
enum Token<'a> {
    Raw(&'a [u8]),
    Secret,
}

#[derive(Debug)]
struct Input<'a> {
    secret: &'a [u8],
    body: &'a [u8],
    signature: Option<Signature<'a>>,
    gitlab_token: Option<Token<'a>>,
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Option<Input<'a>> {
        let mut fields = data.splitn(4, |b| *b == 0xff);
        let secret = fields.next()?;
        let body = fields.next().unwrap_or_default();
        let signature = match fields.next() {
            None => None,
            Some(field) => {
                let text = std::str::from_utf8(field).ok()?;
                let rest = text.get(1..).unwrap_or_default();
                let number = |s: &str| s.bytes().map(usize::from).sum::<usize>();
                Some(match text.as_bytes().first() {
                    Some(b'c') => Signature::Correct {
                        uppercase: rest.starts_with('U'),
                        pad: (rest.matches(' ').count(), rest.matches('\t').count()),
                    },
                    Some(b'o') => Signature::OneDigitOff {
                        index: number(rest),
                        by: rest.len(),
                    },
                    Some(b't') => Signature::Truncated { len: number(rest) },
                    Some(b'x') => Signature::Extended(rest),
                    Some(b'p') => Signature::OtherPrefix(rest),
                    _ => Signature::Raw(text),
                })
            }
        };
        let gitlab_token = fields.next().map(|field| match field {
            b"s" => Token::Secret,
            raw => Token::Raw(raw),
        });
        Some(Input {
            secret,
            body,
            signature,
            gitlab_token,
        })
    }
}

/// Hex digits, either case, an even number of them.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let mac = hmac_sha256(input.secret, input.body);
    let correct = hex::encode(mac);
    let spaces = |n: usize| " \t".repeat(n % 3);
    let signature: Option<String> = input.signature.as_ref().map(|s| match s {
        Signature::Raw(text) => text.to_string(),
        Signature::Correct { uppercase, pad } => {
            let digits = if *uppercase {
                correct.to_ascii_uppercase()
            } else {
                correct.clone()
            };
            format!("{}sha256={digits}{}", spaces(pad.0), spaces(pad.1))
        }
        Signature::OneDigitOff { index, by } => {
            let mut digits = correct.clone().into_bytes();
            let at = index % digits.len();
            let hex = b"0123456789abcdef";
            let was = hex.iter().position(|h| *h == digits[at]).unwrap();
            digits[at] = hex[(was + 1 + by % 15) % 16];
            format!("sha256={}", String::from_utf8(digits).unwrap())
        }
        Signature::Truncated { len } => {
            format!("sha256={}", &correct[..len % correct.len()])
        }
        Signature::Extended(more) => format!("sha256={correct}{more}"),
        Signature::OtherPrefix(prefix) => format!("{prefix}{correct}"),
    });
    let token: Option<&[u8]> = input.gitlab_token.as_ref().map(|t| match t {
        Token::Raw(bytes) => *bytes,
        Token::Secret => input.secret,
    });

    let accepted =
        gitreload::http::authorized(input.secret, input.body, signature.as_deref(), token);

    let valid_signature = signature.as_deref().is_some_and(|s| {
        s.trim()
            .strip_prefix("sha256=")
            .and_then(decode_hex)
            .is_some_and(|d| d == mac)
    });
    let valid_token = token.is_some_and(|t| t == input.secret);

    // Safety: nothing short of the HMAC or the secret itself gets in. (A
    // wrong signature next to the exact token may go either way.)
    assert!(
        !accepted || valid_signature || valid_token,
        "accepted without proof of the secret: {input:?} signature={signature:?}"
    );
    if valid_signature {
        assert!(accepted, "refused the correct HMAC: {signature:?}");
    }
    if signature.is_none() && valid_token {
        assert!(accepted, "refused the exact GitLab token");
    }
    if signature.is_none() && token.is_none() {
        assert!(!accepted, "accepted a request with no proof at all");
    }
});
