//! Exports: the typed request (validated here, stored by `inarray-store`), client matching and
//! credential mapping (squash).

use std::net::IpAddr;
use std::path::{Component, Path};

use inarray_store::{ExportClientRow, ExportRow, NewExport};
use serde::{Deserialize, Serialize};

use crate::rpc::AuthSys;

/// The user nobody: the default anonymous identity.
pub const NOBODY: u32 = 65534;
/// Client rules one export may have.
pub const MAX_CLIENTS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Rw,
    Ro,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Squash {
    /// uid 0 and gid 0 become the anonymous ids (the default, like knfsd's root_squash).
    #[default]
    Root,
    /// Every caller is the anonymous user.
    All,
    /// Credentials are used as sent.
    None,
}

impl Squash {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root",
            Self::All => "all",
            Self::None => "none",
        }
    }
}

/// One client rule: who (`*`, an address, or a CIDR block) and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRule {
    #[serde(rename = "match")]
    pub matches: String,
    pub access: Access,
}

/// An export as the API and the config file take it and show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// Clients mount `/<name>`.
    pub name: String,
    /// Directory relative to the array root.
    pub path: String,
    /// Checked in order; the first rule that matches the client's address applies. No match: no
    /// access.
    pub clients: Vec<ClientRule>,
    #[serde(default)]
    pub squash: Squash,
    #[serde(default = "nobody")]
    pub anon_uid: u32,
    #[serde(default = "nobody")]
    pub anon_gid: u32,
}

fn nobody() -> u32 {
    NOBODY
}

/// A partial update (PATCH): absent fields keep their value.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportPatch {
    pub path: Option<String>,
    pub clients: Option<Vec<ClientRule>>,
    pub squash: Option<Squash>,
    pub anon_uid: Option<u32>,
    pub anon_gid: Option<u32>,
}

/// An invalid export request; `field` names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A parsed client match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMatch {
    Any,
    Net(IpAddr, u8),
}

impl ClientMatch {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Any);
        }
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => {
                let bits: u8 = b
                    .parse()
                    .map_err(|_| format!("{s:?}: prefix length {b:?} is not a number"))?;
                (a, Some(bits))
            }
            None => (s, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not \"*\", an IP address or a CIDR block"))?;
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(format!("{s:?}: prefix length {bits} is over {max}"));
        }
        Ok(Self::Net(ip, bits))
    }

    pub fn matches(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        match *self {
            Self::Any => true,
            Self::Net(IpAddr::V4(net), bits) => match client {
                IpAddr::V4(c) => prefix_eq(&net.octets(), &c.octets(), bits),
                IpAddr::V6(_) => false,
            },
            Self::Net(IpAddr::V6(net), bits) => match client {
                IpAddr::V6(c) => prefix_eq(&net.octets(), &c.octets(), bits),
                IpAddr::V4(_) => false,
            },
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[full] & mask == b[full] & mask
}

/// Checks an export name: what clients mount as `/<name>`.
pub fn validate_name(name: &str) -> Result<(), Invalid> {
    inarray_store::names::EXPORT
        .check(name)
        .map_err(|reason| invalid("name", reason))
}

/// Normalizes an export path: relative to the array, no `..`, no NUL. "." is the array root.
pub fn normalize_path(path: &str) -> Result<String, Invalid> {
    let field = "path";
    if path.is_empty() {
        return Err(invalid(
            field,
            "path is empty (use \".\" for the array root)",
        ));
    }
    if path.contains('\0') {
        return Err(invalid(field, "path contains a NUL byte"));
    }
    if path.len() > 4096 {
        return Err(invalid(field, "path is longer than 4096 bytes"));
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(invalid(
            field,
            format!("{path:?} is absolute; it must be relative to the array root"),
        ));
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str().unwrap_or_default().to_owned()),
            Component::CurDir => {}
            _ => return Err(invalid(field, format!("{path:?} contains \"..\""))),
        }
    }
    Ok(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

impl ExportSpec {
    /// Validates every field and normalizes the path.
    pub fn validate(mut self) -> Result<Self, Invalid> {
        validate_name(&self.name)?;
        self.path = normalize_path(&self.path)?;
        if self.clients.len() > MAX_CLIENTS {
            return Err(invalid(
                "clients",
                format!(
                    "{} rules are over the maximum of {MAX_CLIENTS}",
                    self.clients.len()
                ),
            ));
        }
        for (i, c) in self.clients.iter().enumerate() {
            ClientMatch::parse(&c.matches)
                .map_err(|r| invalid(format!("clients[{i}].match"), r))?;
        }
        for (field, id) in [("anon_uid", self.anon_uid), ("anon_gid", self.anon_gid)] {
            if id == u32::MAX {
                return Err(invalid(
                    field,
                    "4294967295 is not a valid id (it means \"no change\")",
                ));
            }
        }
        Ok(self)
    }

    /// Applies a PATCH and validates the result.
    pub fn patched(self, p: ExportPatch) -> Result<Self, Invalid> {
        Self {
            path: p.path.unwrap_or(self.path),
            clients: p.clients.unwrap_or(self.clients),
            squash: p.squash.unwrap_or(self.squash),
            anon_uid: p.anon_uid.unwrap_or(self.anon_uid),
            anon_gid: p.anon_gid.unwrap_or(self.anon_gid),
            name: self.name,
        }
        .validate()
    }

    /// The rows the store takes. Call on a validated spec.
    pub fn client_rows(&self) -> Vec<ExportClientRow> {
        self.clients
            .iter()
            .map(|c| ExportClientRow {
                matches: c.matches.clone(),
                access: match c.access {
                    Access::Rw => "rw".into(),
                    Access::Ro => "ro".into(),
                },
            })
            .collect()
    }

    pub fn as_new<'a>(&'a self, clients: &'a [ExportClientRow]) -> NewExport<'a> {
        NewExport {
            name: &self.name,
            path: &self.path,
            clients,
            squash: self.squash.as_str(),
            anon_uid: i64::from(self.anon_uid),
            anon_gid: i64::from(self.anon_gid),
        }
    }
}

impl TryFrom<&ExportRow> for ExportSpec {
    type Error = Invalid;
    fn try_from(r: &ExportRow) -> Result<Self, Invalid> {
        let squash = match r.squash.as_str() {
            "root" => Squash::Root,
            "all" => Squash::All,
            "none" => Squash::None,
            other => return Err(invalid("squash", format!("{other:?} in the database"))),
        };
        let clients = r
            .clients
            .iter()
            .map(|c| {
                let access = match c.access.as_str() {
                    "rw" => Access::Rw,
                    "ro" => Access::Ro,
                    other => return Err(invalid("access", format!("{other:?} in the database"))),
                };
                Ok(ClientRule {
                    matches: c.matches.clone(),
                    access,
                })
            })
            .collect::<Result<_, _>>()?;
        let id = |v: i64, f: &str| u32::try_from(v).map_err(|_| invalid(f, "out of range"));
        Ok(Self {
            name: r.name.clone(),
            path: r.path.clone(),
            clients,
            squash,
            anon_uid: id(r.anon_uid, "anon_uid")?,
            anon_gid: id(r.anon_gid, "anon_gid")?,
        })
    }
}

/// The identity file operations run as, after squashing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ident {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl Ident {
    pub const ROOT: Ident = Ident {
        uid: 0,
        gid: 0,
        gids: Vec::new(),
    };
}

/// The parsed, matchable form of an export's access rules.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: Vec<(ClientMatch, Access)>,
    pub squash: Squash,
    pub anon_uid: u32,
    pub anon_gid: u32,
}

impl Policy {
    pub fn new(spec: &ExportSpec) -> Self {
        Self {
            rules: spec
                .clients
                .iter()
                .filter_map(|c| ClientMatch::parse(&c.matches).ok().map(|m| (m, c.access)))
                .collect(),
            squash: spec.squash,
            anon_uid: spec.anon_uid,
            anon_gid: spec.anon_gid,
        }
    }

    /// The access of the first rule that matches `client`; None: not allowed.
    pub fn access(&self, client: IpAddr) -> Option<Access> {
        self.rules
            .iter()
            .find(|(m, _)| m.matches(client))
            .map(|(_, a)| *a)
    }

    /// Maps a call's credential (None: AUTH_NONE) to the identity it acts as.
    pub fn map(&self, cred: Option<&AuthSys>) -> Ident {
        let anon = Ident {
            uid: self.anon_uid,
            gid: self.anon_gid,
            gids: Vec::new(),
        };
        let Some(c) = cred else { return anon };
        match self.squash {
            Squash::All => anon,
            Squash::None => Ident {
                uid: c.uid,
                gid: c.gid,
                gids: c.gids.clone(),
            },
            Squash::Root => Ident {
                uid: if c.uid == 0 { self.anon_uid } else { c.uid },
                gid: if c.gid == 0 { self.anon_gid } else { c.gid },
                gids: c.gids.iter().copied().filter(|g| *g != 0).collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(clients: &[(&str, Access)]) -> ExportSpec {
        ExportSpec {
            name: "data".into(),
            path: "./a//b/".into(),
            clients: clients
                .iter()
                .map(|(m, a)| ClientRule {
                    matches: (*m).into(),
                    access: *a,
                })
                .collect(),
            squash: Squash::Root,
            anon_uid: NOBODY,
            anon_gid: NOBODY,
        }
    }

    #[test]
    fn validation_names_the_field() {
        let s = spec(&[("*", Access::Rw)]).validate().unwrap();
        assert_eq!(s.path, "a/b");
        for (bad, field) in [
            (
                ExportSpec {
                    name: "../x".into(),
                    ..spec(&[])
                },
                "name",
            ),
            (
                ExportSpec {
                    name: "".into(),
                    ..spec(&[])
                },
                "name",
            ),
            (
                ExportSpec {
                    name: "a/b".into(),
                    ..spec(&[])
                },
                "name",
            ),
            (
                ExportSpec {
                    path: "../etc".into(),
                    ..spec(&[])
                },
                "path",
            ),
            (
                ExportSpec {
                    path: "/etc".into(),
                    ..spec(&[])
                },
                "path",
            ),
            (
                ExportSpec {
                    path: "a/../..".into(),
                    ..spec(&[])
                },
                "path",
            ),
            (
                ExportSpec {
                    path: "a\0b".into(),
                    ..spec(&[])
                },
                "path",
            ),
            (spec(&[("10.0.0.0/33", Access::Ro)]), "clients[0].match"),
            (
                spec(&[("*", Access::Ro), ("host.example", Access::Ro)]),
                "clients[1].match",
            ),
            (spec(&[("1.2.3.4/x", Access::Ro)]), "clients[0].match"),
        ] {
            let e = bad.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        assert_eq!(normalize_path(".").unwrap(), ".");
        let patched = spec(&[])
            .patched(ExportPatch {
                squash: Some(Squash::All),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            (patched.squash, patched.path.as_str()),
            (Squash::All, "a/b")
        );
    }

    #[test]
    fn client_matching_first_rule_wins() {
        let p = Policy::new(&spec(&[
            ("127.0.0.1", Access::Ro),
            ("10.1.0.0/16", Access::Rw),
            ("fd00::/8", Access::Rw),
        ]));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(p.access(ip("127.0.0.1")), Some(Access::Ro));
        assert_eq!(
            p.access(ip("::ffff:127.0.0.1")),
            Some(Access::Ro),
            "v4-mapped"
        );
        assert_eq!(p.access(ip("127.0.0.2")), None);
        assert_eq!(p.access(ip("10.1.255.3")), Some(Access::Rw));
        assert_eq!(p.access(ip("10.2.0.1")), None);
        assert_eq!(p.access(ip("fd12::1")), Some(Access::Rw));
        assert_eq!(p.access(ip("fe80::1")), None);
        let any = Policy::new(&spec(&[("*", Access::Rw)]));
        assert_eq!(any.access(ip("8.8.8.8")), Some(Access::Rw));
        assert!(ClientMatch::parse("10.1.2.3/20")
            .unwrap()
            .matches(ip("10.1.15.1")));
        assert!(!ClientMatch::parse("10.1.2.3/20")
            .unwrap()
            .matches(ip("10.1.16.1")));
    }

    #[test]
    fn squash_modes() {
        let root = AuthSys {
            uid: 0,
            gid: 0,
            gids: vec![0, 10],
        };
        let user = AuthSys {
            uid: 1000,
            gid: 100,
            gids: vec![100, 27],
        };
        let mut s = spec(&[("*", Access::Rw)]);
        s.anon_uid = 4000;
        s.anon_gid = 4001;
        let p = Policy::new(&s);
        assert_eq!(
            p.map(Some(&root)),
            Ident {
                uid: 4000,
                gid: 4001,
                gids: vec![10]
            }
        );
        assert_eq!(p.map(Some(&user)).uid, 1000);
        assert_eq!(p.map(None).uid, 4000, "AUTH_NONE is anonymous");
        s.squash = Squash::All;
        let p = Policy::new(&s);
        assert_eq!(
            p.map(Some(&user)),
            Ident {
                uid: 4000,
                gid: 4001,
                gids: vec![]
            }
        );
        s.squash = Squash::None;
        let p = Policy::new(&s);
        assert_eq!(
            p.map(Some(&root)),
            Ident {
                uid: 0,
                gid: 0,
                gids: vec![0, 10]
            }
        );
    }
}
