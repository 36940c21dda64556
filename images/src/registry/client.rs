//! The OCI Distribution API as far as pulling needs it: `GET /v2/<name>/manifests/<ref>` and
//! `GET /v2/<name>/blobs/<digest>`, with the Basic and Bearer-token auth flows, mirrors tried in
//! order before the registry itself, and redirects followed with care (bounded, never to plain
//! HTTP unless that host is listed insecure, credentials never sent to another origin).

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use hyper::header::{HeaderName, ACCEPT, AUTHORIZATION};
use serde::Deserialize;

use super::auth::{self, Challenge};
use super::{Credentials, RegistryError, RegistryErrorKind, RegistrySettings};
use crate::http::{self, split_authority, Response, Url};

/// Docker Hub's name in references and its API endpoint.
pub(crate) const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// Redirect hops followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Error bodies and token responses read at most this much.
const SMALL_BODY: u64 = 64 * 1024;

/// The registries the node knows: settings and credentials, per registry host (`host[:port]`).
#[derive(Default)]
pub(crate) struct Registries {
    pub settings: HashMap<String, RegistrySettings>,
    pub credentials: HashMap<String, Credentials>,
}

pub(crate) struct Client {
    pub http: http::Client,
    pub registries: RwLock<Registries>,
    /// The `Authorization` value that last worked (a Bearer token or Basic credentials), by
    /// (registry host, repository): later requests send it at once instead of meeting a 401.
    tokens: Mutex<HashMap<(String, String), String>>,
}

/// Splits a normalized reference name into (registry host, repository), with Docker Hub's
/// defaults: `busybox` → (`docker.io`, `library/busybox`), `team/tool` → (`docker.io`,
/// `team/tool`), `reg.example:5000/a/b` → (`reg.example:5000`, `a/b`).
pub fn split_name(name: &str) -> (String, String) {
    if let Some((first, rest)) = name.split_once('/') {
        if first.contains('.') || first.contains(':') || first == "localhost" {
            return (first.to_string(), rest.to_string());
        }
        return (DOCKER_HUB.to_string(), name.to_string());
    }
    (DOCKER_HUB.to_string(), format!("library/{name}"))
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorsBody {
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl Client {
    pub fn new(http: http::Client) -> Self {
        Client {
            http,
            registries: RwLock::default(),
            tokens: Mutex::default(),
        }
    }

    fn settings(&self, host: &str) -> RegistrySettings {
        self.registries
            .read()
            .expect("registries")
            .settings
            .get(host)
            .cloned()
            .unwrap_or_default()
    }

    fn credentials(&self, host: &str) -> Option<Credentials> {
        self.registries
            .read()
            .expect("registries")
            .credentials
            .get(host)
            .cloned()
    }

    /// Listed with `insecure = true`: the only hosts a redirect or a token realm may send us to
    /// over plain HTTP.
    fn is_insecure(&self, authority: &str) -> bool {
        self.settings(authority).insecure == Some(true)
    }

    /// Whether the registry `host` itself is spoken to over plain HTTP: as listed, else when it
    /// is on the loopback interface and no CA file says it speaks TLS.
    fn speaks_plain_http(&self, host: &str) -> bool {
        let s = self.settings(host);
        s.insecure
            .unwrap_or_else(|| s.ca_file.is_none() && is_loopback_authority(host))
    }

    /// The API base of a registry host: HTTPS, or HTTP when the host is listed insecure.
    fn base(&self, host: &str) -> Result<Url, RegistryError> {
        let endpoint = if host == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            host
        };
        split_authority(endpoint).map_err(|e| {
            RegistryError::new(
                RegistryErrorKind::Invalid,
                host,
                format!("registry name: {e}"),
            )
        })?;
        let scheme = if self.speaks_plain_http(host) {
            "http"
        } else {
            "https"
        };
        Url::parse(&format!("{scheme}://{endpoint}/")).map_err(|e| {
            RegistryError::new(
                RegistryErrorKind::Invalid,
                host,
                format!("registry name: {e}"),
            )
        })
    }

    /// GETs `path` (`/v2/…`) of `repo` from the mirrors of `host`, in order, then from `host`;
    /// returns the first 200 response. The error is the registry's own (the last tried).
    pub async fn get(
        &self,
        host: &str,
        repo: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(Response, String), RegistryError> {
        let mut candidates = self.settings(host).mirrors;
        candidates.push(host.to_string());
        let mut last = None;
        for (i, candidate) in candidates.iter().enumerate() {
            match self.get_from(candidate, repo, path, accept).await {
                Ok(resp) => return Ok((resp, candidate.clone())),
                Err(e) => {
                    if i + 1 < candidates.len() {
                        tracing::warn!(mirror = %candidate, registry = %host, error = %e, "mirror failed; trying the next source");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least the registry itself was tried"))
    }

    /// One registry (or mirror): auth flow and redirects; 200 or an error.
    async fn get_from(
        &self,
        host: &str,
        repo: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Response, RegistryError> {
        let base = self.base(host)?;
        let url = base
            .join(path)
            .map_err(|e| RegistryError::new(RegistryErrorKind::Invalid, host, e))?;
        let key = (host.to_string(), repo.to_string());
        let cached = self.tokens.lock().expect("tokens").get(&key).cloned();
        let mut authorization = cached;
        let mut retried = false;
        loop {
            let resp = self
                .follow(host, &base, &url, accept, authorization.as_deref())
                .await?;
            match resp.status {
                200 => return Ok(resp),
                401 if !retried => {
                    retried = true;
                    let header = resp.header("www-authenticate").map(str::to_string);
                    let Some(header) = header else {
                        let msg = error_message(resp).await;
                        return Err(RegistryError::new(RegistryErrorKind::Denied, host, msg));
                    };
                    let challenges = auth::parse_challenges(&header)
                        .map_err(|e| RegistryError::new(RegistryErrorKind::Protocol, host, e))?;
                    let value = self.answer(host, repo, &challenges).await?;
                    self.tokens
                        .lock()
                        .expect("tokens")
                        .insert(key.clone(), value.clone());
                    authorization = Some(value);
                }
                status => {
                    let kind = match status {
                        401 | 403 => RegistryErrorKind::Denied,
                        404 => RegistryErrorKind::NotFound,
                        429 | 500..=599 => RegistryErrorKind::Unreachable,
                        _ => RegistryErrorKind::Protocol,
                    };
                    let msg = error_message(resp).await;
                    let msg = match kind {
                        RegistryErrorKind::Denied if self.credentials(host).is_none() => {
                            format!("{msg} (no credentials are configured for {host})")
                        }
                        RegistryErrorKind::Denied => format!("{msg} (credentials refused)"),
                        _ => format!("{msg} (HTTP {status})"),
                    };
                    return Err(RegistryError::new(kind, host, msg));
                }
            }
        }
    }

    /// Follows redirects from `url`; `authorization` goes only to the registry's own origin.
    async fn follow(
        &self,
        host: &str,
        base: &Url,
        url: &Url,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Response, RegistryError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let same_origin =
                url.https == base.https && url.host == base.host && url.port == base.port;
            let mut headers: Vec<(HeaderName, String)> = Vec::new();
            if let Some(a) = accept {
                headers.push((ACCEPT, a.to_string()));
            }
            if let (true, Some(a)) = (same_origin, authorization) {
                headers.push((AUTHORIZATION, a.to_string()));
            }
            let ca = self.settings(&url.authority()).ca_file;
            let resp = self
                .http
                .get(&url, &headers, ca.as_deref())
                .await
                .map_err(|e| RegistryError::new(RegistryErrorKind::Unreachable, host, e.0))?;
            if !matches!(resp.status, 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let location = resp.header("location").ok_or_else(|| {
                RegistryError::new(
                    RegistryErrorKind::Protocol,
                    host,
                    format!("redirect (HTTP {}) without a Location", resp.status),
                )
            })?;
            let next = url
                .join(location)
                .map_err(|e| RegistryError::new(RegistryErrorKind::Protocol, host, e))?;
            let same_plain_origin = !base.https && next.host == base.host && next.port == base.port;
            if !(next.https || same_plain_origin || self.is_insecure(&next.authority())) {
                return Err(RegistryError::new(
                    RegistryErrorKind::Protocol,
                    host,
                    format!(
                        "redirected to {next}, plain HTTP to a host not listed as insecure; refused"
                    ),
                ));
            }
            url = next;
        }
        Err(RegistryError::new(
            RegistryErrorKind::Protocol,
            host,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }

    /// The `Authorization` value answering a 401's challenges.
    async fn answer(
        &self,
        host: &str,
        repo: &str,
        challenges: &[Challenge],
    ) -> Result<String, RegistryError> {
        let creds = self.credentials(host);
        for c in challenges {
            match c {
                Challenge::Bearer {
                    realm,
                    service,
                    scope,
                } => {
                    return self
                        .token(
                            host,
                            repo,
                            realm,
                            service.as_deref(),
                            scope.as_deref(),
                            creds.as_ref(),
                        )
                        .await
                }
                Challenge::Basic => {
                    if let Some(creds) = &creds {
                        return Ok(auth::basic(&creds.username, &creds.password));
                    }
                }
                Challenge::Other(_) => {}
            }
        }
        let offered: Vec<String> = challenges
            .iter()
            .map(|c| match c {
                Challenge::Basic => "Basic".to_string(),
                Challenge::Bearer { .. } => "Bearer".to_string(),
                Challenge::Other(s) => s.clone(),
            })
            .collect();
        let msg = if challenges.contains(&Challenge::Basic) {
            format!("authentication required (Basic) and no credentials are configured for {host}")
        } else {
            format!(
                "unsupported authentication scheme(s): {}",
                offered.join(", ")
            )
        };
        Err(RegistryError::new(RegistryErrorKind::Denied, host, msg))
    }

    /// Fetches a bearer token from `realm` (with Basic credentials when the registry has some).
    async fn token(
        &self,
        host: &str,
        repo: &str,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let proto = |m: String| RegistryError::new(RegistryErrorKind::Protocol, host, m);
        let realm_url = Url::parse(realm).map_err(|e| proto(format!("token realm: {e}")))?;
        if !realm_url.https
            && !self.is_insecure(&realm_url.authority())
            && !self.speaks_plain_http(host)
        {
            return Err(proto(format!(
                "token realm {realm_url} is plain HTTP and not listed as insecure; refused"
            )));
        }
        let default_scope = format!("repository:{repo}:pull");
        let mut query = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={}", encode(s)));
        }
        query.push(format!("scope={}", encode(scope.unwrap_or(&default_scope))));
        let sep = if realm_url.path.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = Url::parse(&format!("{realm_url}{sep}{}", query.join("&")))
            .map_err(|e| proto(format!("token realm: {e}")))?;
        let mut headers = Vec::new();
        if let Some(c) = creds {
            headers.push((AUTHORIZATION, auth::basic(&c.username, &c.password)));
        }
        let ca = self.settings(&url.authority()).ca_file;
        let resp = self
            .http
            .get(&url, &headers, ca.as_deref())
            .await
            .map_err(|e| RegistryError::new(RegistryErrorKind::Unreachable, host, e.0))?;
        match resp.status {
            200 => {}
            401 | 403 => {
                let msg = error_message(resp).await;
                return Err(RegistryError::new(
                    RegistryErrorKind::Denied,
                    host,
                    format!("token service refused: {msg}"),
                ));
            }
            status => {
                let msg = error_message(resp).await;
                return Err(proto(format!(
                    "token service answered HTTP {status}: {msg}"
                )));
            }
        }
        let body = resp
            .bytes(SMALL_BODY)
            .await
            .map_err(|e| proto(format!("token response: {e}")))?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| proto(format!("malformed token response: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| {
                !t.is_empty() && t.len() < 16 * 1024 && !t.bytes().any(|b| b.is_ascii_control())
            })
            .ok_or_else(|| proto("the token response holds no usable token".into()))?;
        Ok(format!("Bearer {token}"))
    }
}

/// The registry's explanation of an error response: `CODE: message` from a Distribution error
/// body, else the start of the body as text.
pub(crate) async fn error_message(resp: Response) -> String {
    let status = resp.status;
    let body = resp.bytes(SMALL_BODY).await.unwrap_or_default();
    if let Ok(parsed) = serde_json::from_slice::<ErrorsBody>(&body) {
        let parts: Vec<String> = parsed
            .errors
            .iter()
            .take(4)
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect();
        if !parts.is_empty() {
            return clean(&parts.join("; "));
        }
    }
    let text = clean(&String::from_utf8_lossy(&body));
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        text
    }
}

/// At most 300 printable characters of `s`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect::<String>()
        .trim()
        .to_string()
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_names_with_docker_hub_defaults() {
        let cases = [
            ("busybox", ("docker.io", "library/busybox")),
            ("team/tool", ("docker.io", "team/tool")),
            (
                "registry.example:5000/team/tool",
                ("registry.example:5000", "team/tool"),
            ),
            ("127.0.0.1:5000/x", ("127.0.0.1:5000", "x")),
            ("localhost/a/b/c", ("localhost", "a/b/c")),
            ("quay.io/org/img", ("quay.io", "org/img")),
        ];
        for (name, (host, repo)) in cases {
            assert_eq!(
                split_name(name),
                (host.to_string(), repo.to_string()),
                "{name}"
            );
        }
    }

    #[test]
    fn references_resolve_to_registry_repository_and_tag_or_digest() {
        let hex = "a".repeat(64);
        let cases = [
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "docker.io/library/busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                None,
            ),
            (
                "index.docker.io/team/tool",
                "docker.io",
                "team/tool",
                Some("latest"),
                None,
            ),
            (
                "localhost:5000/a/b:dev",
                "localhost:5000",
                "a/b",
                Some("dev"),
                None,
            ),
            ("reg.example:5000/x@sha256:aaaa", "", "", None, None),
        ];
        for (input, host, repo, tag, digest) in cases {
            let input = input.replace("aaaa", &hex);
            let Ok(r) = crate::Reference::parse(&input) else {
                assert!(host.is_empty(), "{input} should parse");
                continue;
            };
            if host.is_empty() {
                // A pinned digest: no tag, the digest kept.
                assert_eq!(r.tag, None, "{input}");
                assert_eq!(r.digest, Some(format!("sha256:{hex}")), "{input}");
                assert_eq!(split_name(&r.name), ("reg.example:5000".into(), "x".into()));
                continue;
            }
            assert_eq!(split_name(&r.name), (host.into(), repo.into()), "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest.as_deref(), digest, "{input}");
        }
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode("repository:a/b:pull"), "repository:a/b:pull");
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}

/// `localhost`, an address of 127.0.0.0/8 or `[::1]`, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    match crate::http::split_authority(authority) {
        Ok((host, _)) => {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod loopback_tests {
    #[test]
    fn loopback_authorities() {
        for a in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.8.9.10",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            assert!(super::is_loopback_authority(a), "{a}");
        }
        for a in [
            "registry.example:5000",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "docker.io",
        ] {
            assert!(!super::is_loopback_authority(a), "{a}");
        }
    }
}
