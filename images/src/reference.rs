//! Image references (`name[:tag][@digest]`) per the OCI distribution grammar.

use std::fmt;

use crate::ImageError;

/// Longest accepted repository name, as in the distribution spec.
const MAX_NAME_LEN: usize = 255;
/// Longest accepted tag.
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalized image reference.
///
/// Normalization: `docker.io/library/x` and `docker.io/x/y` become `x` and `x/y` (Docker Hub's
/// familiar form), and a reference with neither tag nor digest gets the tag `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Repository name, possibly with a registry domain (`registry.example:5000/team/tool`).
    pub name: String,
    /// Tag (`1.36`); `latest` when the input had neither tag nor digest.
    pub tag: Option<String>,
    /// Content digest (`sha256:<64 hex>`).
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalizes `s`.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let fail = |reason: &str| ImageError::InvalidReference {
            input: s.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(fail("empty reference"));
        }
        if s.len() > MAX_NAME_LEN + 1 + MAX_TAG_LEN + 1 + 7 + 64 {
            return Err(fail("reference is too long"));
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail(&format!("contains the character {c:?}")));
        }

        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => {
                if !is_sha256_digest(digest) {
                    return Err(fail("digest must be sha256:<64 lowercase hex digits>"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (s, None),
        };
        // A tag is the part after the last ':' that follows the last '/' (a ':' before it
        // belongs to a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(fail)?;
        }
        let name = normalize_name(name);
        validate_name(&name).map_err(fail)?;
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Ok(Reference { name, tag, digest })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

pub(crate) fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_sha256_hex)
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn normalize_name(name: &str) -> String {
    for hub in ["docker.io/", "index.docker.io/", "registry-1.docker.io/"] {
        if let Some(rest) = name.strip_prefix(hub) {
            // Without the hub's name, a first component that looks like a registry would be
            // read as one (`docker.io/docker.io/x` is not `docker.io/x`): keep the full form.
            let first = rest.split('/').next().unwrap_or("");
            if rest.contains('/')
                && (first.contains('.') || first.contains(':') || first == "localhost")
            {
                return name.to_string();
            }
            let rest = match rest.strip_prefix("library/") {
                Some(short) if !short.contains('/') => short,
                _ => rest,
            };
            return rest.to_string();
        }
    }
    name.to_string()
}

fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let bytes = tag.as_bytes();
    if bytes.is_empty() {
        return Err("empty tag");
    }
    if bytes.len() > MAX_TAG_LEN {
        return Err("tag is longer than 128 characters");
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if !word(bytes[0]) || !bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-') {
        return Err("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]*");
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty repository name");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("repository name is longer than 255 characters");
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // The first component is a registry domain when it looks like one (docker's rule).
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            validate_domain(first)?;
            components.remove(0);
        }
    }
    for component in components {
        validate_path_component(component)?;
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), &'static str> {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("registry port must be a number");
        }
    }
    for label in host.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-');
        if !ok {
            return Err("registry domain must be dot-separated [A-Za-z0-9-] labels");
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn validate_path_component(component: &str) -> Result<(), &'static str> {
    const MSG: &str = "repository path components must match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*";
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository name must be lowercase");
    }
    let b = component.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(MSG);
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&c| c == b'-');
        if !ok {
            return Err(MSG);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_common_forms() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref(), r.digest.as_deref()),
            ("busybox", Some("latest"), None)
        );
        assert_eq!(r.to_string(), "busybox:latest");

        let r = Reference::parse("busybox:1.36").unwrap();
        assert_eq!(r.to_string(), "busybox:1.36");

        let r = Reference::parse("registry.example:5000/team/tool:1.4").unwrap();
        assert_eq!(r.name, "registry.example:5000/team/tool");
        assert_eq!(r.tag.as_deref(), Some("1.4"));

        let r = Reference::parse("registry.example:5000/team/tool").unwrap();
        assert_eq!(r.to_string(), "registry.example:5000/team/tool:latest");

        let r = Reference::parse(&format!("x@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("x@sha256:{HEX}"));

        let r = Reference::parse(&format!("x:1@sha256:{HEX}")).unwrap();
        assert_eq!(r.to_string(), format!("x:1@sha256:{HEX}"));

        let r = Reference::parse("localhost/my-app_v2__x.y:dev-1").unwrap();
        assert_eq!(r.to_string(), "localhost/my-app_v2__x.y:dev-1");
    }

    #[test]
    fn normalizes_docker_hub_names() {
        assert_eq!(
            Reference::parse("docker.io/library/busybox")
                .unwrap()
                .to_string(),
            "busybox:latest"
        );
        assert_eq!(
            Reference::parse("docker.io/team/tool:2")
                .unwrap()
                .to_string(),
            "team/tool:2"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "Busybox",
            "team/Tool",
            "busy box",
            "busybox\0",
            "busybox:\n1",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            &format!("busybox@sha256:{}", HEX.to_uppercase()),
            "-busybox",
            "busybox-",
            "a..b",
            "a___b",
            "/busybox",
            "busybox/",
            "a//b",
            "registry.example:port/x",
            "reg_istry.example/x",
            &"a".repeat(256),
            &format!("busybox:{}", "t".repeat(129)),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn round_trips_through_display() {
        // The second one was found by the fuzzer (fuzz/corpus/image_reference): the hub's name
        // was dropped before a component that looks like a registry.
        for s in [
            "a/b/c:1",
            "r.example/a:b",
            "a-b--c:x.y-z",
            "docker.io/docker.io/library/ibrlibrary/ibra",
            "docker.io/localhost/x",
        ] {
            let r = Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r, "{s}");
        }
    }
}
