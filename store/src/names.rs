//! The rules for the names of stored objects: one rule per kind of name, all here.
//!
//! Every object name the API or the config file takes (containers, engines, jobs, watches,
//! subscriptions, exports, API tokens) is a key of a row, and appears in URL paths, log lines
//! and — for containers, engines and the cgroup root — in file system paths, so each one is a
//! single path component of ASCII letters, digits and a few punctuation bytes. The rules differ
//! in length and charset because the objects do (an engine's name is a cgroup directory, lower
//! case; a job's run container is named `<job>.run-<n>`, so a job name leaves room for the
//! suffix); each is checked by [`NameRule::check`] of its constant below and nowhere else.

/// One rule: the longest name, which bytes may start it and which may follow, and how a refused
/// name is told what is accepted.
#[derive(Clone, Copy, Debug)]
pub struct NameRule {
    /// Longest accepted name, in bytes (at least one byte is needed).
    pub max: usize,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
    /// What follows the refused name in the error (the accepted charset, in words).
    pub rule: &'static str,
}

impl NameRule {
    pub fn is_valid(&self, name: &str) -> bool {
        let b = name.as_bytes();
        !b.is_empty()
            && b.len() <= self.max
            && (self.first)(b[0])
            && b.iter().all(|&c| (self.rest)(c))
    }

    /// `Err` holds the refused name (quoted, its first 80 characters) and the rule.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if self.is_valid(name) {
            return Ok(());
        }
        let shown: String = name.chars().take(80).collect();
        Err(format!("{shown:?} {}", self.rule))
    }
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn alnum_dot_underscore_dash(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn alnum_underscore(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn lower(b: u8) -> bool {
    b.is_ascii_lowercase()
}

fn lower_digit_dash(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

fn lower_digit_underscore_dash(b: u8) -> bool {
    lower_digit_dash(b) || b == b'_'
}

/// Containers: 1–128 of `[a-zA-Z0-9_.-]`, starting with a letter or digit.
pub const CONTAINER: NameRule = NameRule {
    max: 128,
    first: alnum,
    rest: alnum_dot_underscore_dash,
    rule: "is not a valid name: use 1-128 of [a-zA-Z0-9_.-], starting with a letter or digit",
};

/// Watches (file events): the containers' rule.
pub const WATCH: NameRule = CONTAINER;

/// Subscriptions (file events): the containers' rule.
pub const SUBSCRIPTION: NameRule = CONTAINER;

/// Jobs: 1–63 of `[a-zA-Z0-9_.-]`, starting with a letter or digit (a run's container is named
/// `<job>.run-<n>`).
pub const JOB: NameRule = NameRule {
    max: 63,
    first: alnum,
    rest: alnum_dot_underscore_dash,
    rule: "is not a valid job name: use 1-63 of [a-zA-Z0-9_.-], starting with a letter or digit",
};

/// Engines: 1–32 of `[a-z0-9-]`, starting with a letter (each is a cgroup directory).
pub const ENGINE: NameRule = NameRule {
    max: 32,
    first: lower,
    rest: lower_digit_dash,
    rule: "is not a valid engine name: use 1-32 of [a-z0-9-], starting with a letter",
};

/// The daemon's cgroup root (`cgroup_root`): 1–64 of `[a-z0-9_-]`, starting with a letter.
pub const CGROUP_ROOT: NameRule = NameRule {
    max: 64,
    first: lower,
    rest: lower_digit_underscore_dash,
    rule: "is not a valid cgroup name: use 1-64 of [a-z0-9_-], starting with a letter",
};

/// Exports (clients mount `/<name>`) and API tokens: 1–64 of `[a-zA-Z0-9._-]`, not starting
/// with `.` or `-`.
pub const PLAIN: NameRule = NameRule {
    max: 64,
    first: alnum_underscore,
    rest: alnum_dot_underscore_dash,
    rule: "must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'",
};

/// Exports: the plain rule.
pub const EXPORT: NameRule = PLAIN;

/// API tokens: the plain rule.
pub const TOKEN: NameRule = PLAIN;

/// Array volumes and their snapshots: 1–64 of `[a-zA-Z0-9_.-]`, starting with a letter or
/// digit (each is a directory name in the array's hidden volume directory, and a volume's
/// snapshot is addressed as `<volume>@<snapshot>`).
pub const VOLUME: NameRule = NameRule {
    max: 64,
    first: alnum,
    rest: alnum_dot_underscore_dash,
    rule: "is not a valid volume name: use 1-64 of [a-zA-Z0-9_.-], starting with a letter or digit",
};

/// Snapshots of a volume: the volumes' rule.
pub const SNAPSHOT: NameRule = VOLUME;
/// Networks: 1–63 of `[a-zA-Z0-9_.-]`, starting with a letter or digit (a key of a row, a file
/// of aardvark-dns's configuration).
pub const NETWORK: NameRule = NameRule {
    max: 63,
    first: alnum,
    rest: alnum_dot_underscore_dash,
    rule:
        "is not a valid network name: use 1-63 of [a-zA-Z0-9_.-], starting with a letter or digit",
};

fn alnum_dash(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// A container's hostname and its aliases on a network (names other containers resolve, and
/// lines of /etc/hosts): one DNS label, 1–63 of `[a-zA-Z0-9-]`, starting with a letter or digit.
pub const HOSTNAME: NameRule = NameRule {
    max: 63,
    first: alnum,
    rest: alnum_dash,
    rule: "is not a valid host name: use 1-63 of [a-zA-Z0-9-], starting with a letter or digit",
};

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(rule: &NameRule, ok: &[&str], bad: &[&str]) {
        for n in ok {
            assert!(rule.check(n).is_ok(), "{n:?} should pass: {}", rule.rule);
        }
        for n in bad {
            let e = rule.check(n).unwrap_err();
            assert!(e.ends_with(rule.rule), "{e}");
        }
    }

    #[test]
    fn containers_watches_and_subscriptions() {
        let long = "a".repeat(128);
        accepts(
            &CONTAINER,
            &["a", "web.1", "Job_2-x", "9", &long],
            &[
                "",
                ".x",
                "-x",
                "_x",
                "a/b",
                "a b",
                "é",
                "a:b",
                &"a".repeat(129),
            ],
        );
    }

    #[test]
    fn jobs() {
        let long = "j".repeat(63);
        accepts(
            &JOB,
            &["nightly", "a.b_c-d", "1", &long],
            &["", "../etc", "_x", ".x", &"j".repeat(64)],
        );
    }

    #[test]
    fn engines_and_the_cgroup_root() {
        let long = "e".repeat(32);
        accepts(
            &ENGINE,
            &["default", "backup-2", "a", &long],
            &[
                "",
                "Backup",
                "1x",
                "a/b",
                "..",
                "a_b",
                "a.b",
                &"x".repeat(33),
            ],
        );
        accepts(
            &CGROUP_ROOT,
            &["inarray", "a_b-2", &"c".repeat(64)],
            &["", "Inarray", "1x", "-x", "a.b", &"c".repeat(65)],
        );
    }

    #[test]
    fn exports_and_tokens() {
        accepts(
            &PLAIN,
            &["a", "proj-1", "x.y_z", "_x", &"n".repeat(64)],
            &["", ".hidden", "-x", "a/b", "a b", "é", &"n".repeat(65)],
        );
    }

    #[test]
    fn volumes_and_snapshots() {
        accepts(
            &VOLUME,
            &["db", "app.data-1", "9_x", &"v".repeat(64)],
            &[
                "",
                "..",
                ".",
                ".hidden",
                "a/b",
                "../x",
                "a@b",
                "-x",
                &"v".repeat(300),
            ],
        );
    }

    #[test]
    fn a_long_refused_name_is_shown_cut() {
        let e = CONTAINER.check(&"/".repeat(10_000)).unwrap_err();
        assert_eq!(e, format!("{:?} {}", "/".repeat(80), CONTAINER.rule));
    }
}
