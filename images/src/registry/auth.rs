//! `WWW-Authenticate` challenges (RFC 7235 syntax, as registries send them) and the
//! `Authorization` values answering them.

use base64::Engine;

/// Longest header value parsed; longer ones are refused.
const MAX_HEADER: usize = 8 * 1024;
/// Most parameters one challenge may carry.
const MAX_PARAMS: usize = 32;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`: get a token from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// A scheme this client does not speak (named in errors).
    Other(String),
}

/// Parses a `WWW-Authenticate` value: one or more challenges separated by commas, each a scheme
/// followed by `name=value` or `name="quoted \"value\""` parameters (token68 values are skipped).
pub(crate) fn parse_challenges(header: &str) -> Result<Vec<Challenge>, String> {
    if header.len() > MAX_HEADER {
        return Err("WWW-Authenticate header is too long".into());
    }
    let mut p = Parser {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip_ws_and_commas();
        if p.done() {
            break;
        }
        let scheme = p.token().ok_or("expected an authentication scheme")?;
        let mut params: Vec<(String, String)> = Vec::new();
        // `Scheme token68` (credentials-like blob, e.g. `Foo abc==`): skipped.
        p.skip_ws();
        let save = p.i;
        if p.token68().is_some() {
            p.skip_ws();
            if p.done() || p.peek() == Some(b',') {
                out.push(scheme_of(&scheme, &params)?);
                continue;
            }
        }
        p.i = save;
        loop {
            p.skip_ws();
            // A parameter is `name = value`; anything else starts the next challenge.
            let save = p.i;
            let Some(name) = p.token() else { break };
            p.skip_ws();
            if !p.eat(b'=') {
                // The next scheme: rewind and stop.
                p.i = save;
                break;
            }
            p.skip_ws();
            let value = if p.peek() == Some(b'"') {
                p.quoted()?
            } else {
                p.bare()
            };
            if params.len() >= MAX_PARAMS {
                return Err("too many WWW-Authenticate parameters".into());
            }
            params.push((name.to_ascii_lowercase(), value));
            p.skip_ws();
            if !p.eat(b',') {
                break;
            }
        }
        out.push(scheme_of(&scheme, &params)?);
        if out.len() > MAX_PARAMS {
            return Err("too many WWW-Authenticate challenges".into());
        }
    }
    if out.is_empty() {
        return Err("empty WWW-Authenticate header".into());
    }
    Ok(out)
}

fn scheme_of(scheme: &str, params: &[(String, String)]) -> Result<Challenge, String> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Ok(match scheme.to_ascii_lowercase().as_str() {
        "basic" => Challenge::Basic,
        "bearer" => Challenge::Bearer {
            realm: get("realm").ok_or("bearer challenge without a realm")?,
            service: get("service"),
            scope: get("scope"),
        },
        _ => Challenge::Other(scheme.to_string()),
    })
}

/// `Authorization: Basic base64(user:password)`.
pub(crate) fn basic(username: &str, password: &str) -> String {
    let raw = format!("{username}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn skip_ws_and_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }

    /// RFC 7230 `token`.
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b) {
                self.i += 1;
            } else {
                break;
            }
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// An unquoted value, leniently: everything up to a comma or blank (registries' realms are
    /// URLs, which are not RFC 7230 tokens).
    fn bare(&mut self) -> String {
        let start = self.i;
        while let Some(b) = self.peek() {
            if b == b',' || b == b' ' || b == b'\t' || b == b'"' {
                break;
            }
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    /// RFC 7235 `token68`: a token optionally followed by `=` padding.
    fn token68(&mut self) -> Option<()> {
        let start = self.i;
        while let Some(b) = self.peek() {
            if b.is_ascii_alphanumeric() || b"-._~+/".contains(&b) {
                self.i += 1;
            } else {
                break;
            }
        }
        while self.eat(b'=') {}
        (self.i > start).then_some(())
    }

    fn quoted(&mut self) -> Result<String, String> {
        self.i += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated quoted string in WWW-Authenticate".into()),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self
                        .peek()
                        .ok_or("unterminated quoted string in WWW-Authenticate")?;
                    out.push(c);
                    self.i += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| "WWW-Authenticate value is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }]
        );
    }

    #[test]
    fn parses_basic_and_several_challenges() {
        assert_eq!(
            parse_challenges(r#"Basic realm="Registry Realm""#).unwrap(),
            vec![Challenge::Basic]
        );
        let c = parse_challenges(
            r#"Negotiate, Basic realm="x", BEARER realm=https://t.example/token , service = "s""#,
        )
        .unwrap();
        assert_eq!(
            c,
            vec![
                Challenge::Other("Negotiate".into()),
                Challenge::Basic,
                Challenge::Bearer {
                    realm: "https://t.example/token".into(),
                    service: Some("s".into()),
                    scope: None,
                },
            ]
        );
        // token68 after a scheme, escaped quotes inside a value.
        let c = parse_challenges(r#"Foo abc==, Bearer realm="a\"b", scope="x""#).unwrap();
        assert_eq!(c[0], Challenge::Other("Foo".into()));
        assert_eq!(
            c[1],
            Challenge::Bearer {
                realm: "a\"b".into(),
                service: None,
                scope: Some("x".into())
            }
        );
    }

    #[test]
    fn refuses_malformed_challenges() {
        for bad in [
            "",
            "   ",
            r#"Bearer service="x""#,
            r#"Bearer realm="unterminated"#,
            "=x",
        ] {
            assert!(parse_challenges(bad).is_err(), "{bad:?} should be refused");
        }
        let long = format!(r#"Bearer realm="{}""#, "a".repeat(10_000));
        assert!(parse_challenges(&long).is_err());
        let many = format!("Bearer realm=x{}", ",a=b".repeat(100));
        assert!(parse_challenges(&many).is_err());
    }

    #[test]
    fn encodes_basic_credentials() {
        assert_eq!(
            basic("aladdin", "opensesame"),
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l"
        );
    }
}
