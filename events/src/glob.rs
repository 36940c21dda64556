//! Include/exclude patterns: `*` (any run of characters but `/`), `?` (one character but `/`),
//! `**` (any run of characters, `/` included) and `[abc]`/`[a-z]`/`[!a]` classes. A pattern
//! without `/` is matched against the last component of the path, one with `/` against the whole
//! path relative to the watch (as rsync and .gitignore do).

/// A checked pattern (at most 256 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    anchored: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        if pattern.len() > 256 {
            return Err("pattern longer than 256 bytes".into());
        }
        if pattern.contains('\0') {
            return Err("pattern contains a NUL byte".into());
        }
        let chars: Vec<char> = pattern.chars().collect();
        // Classes must be closed.
        let mut i = 0;
        while i < chars.len() {
            if chars[i] == '[' {
                let close = chars[i + 1..].iter().skip(1).position(|c| *c == ']');
                match close {
                    Some(p) => i += p + 2,
                    None => return Err(format!("pattern {pattern:?} has an unclosed '['")),
                }
            }
            i += 1;
        }
        let anchored = pattern.trim_start_matches("**/").contains('/');
        let pattern = pattern.trim_start_matches('/').chars().collect();
        Ok(Self { pattern, anchored })
    }

    /// Whether `path` (relative to the watch, `/`-separated) matches.
    pub fn matches(&self, path: &str) -> bool {
        let subject: Vec<char> = if self.anchored {
            path.chars().collect()
        } else {
            path.rsplit('/').next().unwrap_or(path).chars().collect()
        };
        let pat = if !self.anchored && self.pattern.starts_with(&['*', '*', '/']) {
            &self.pattern[3..]
        } else {
            &self.pattern[..]
        };
        match_here(pat, &subject)
    }
}

/// Memoized matcher over (pattern index, subject index): O(|p|·|s|) even for hostile patterns
/// such as `*a*a*a*a*…b`.
fn match_here(p: &[char], s: &[char]) -> bool {
    let mut memo = vec![None; (p.len() + 1) * (s.len() + 1)];
    Matcher {
        p,
        s,
        memo: &mut memo,
    }
    .at(0, 0)
}

struct Matcher<'a> {
    p: &'a [char],
    s: &'a [char],
    memo: &'a mut Vec<Option<bool>>,
}

impl Matcher<'_> {
    fn at(&mut self, pi: usize, si: usize) -> bool {
        let key = pi * (self.s.len() + 1) + si;
        if let Some(v) = self.memo[key] {
            return v;
        }
        let v = self.compute(pi, si);
        self.memo[key] = Some(v);
        v
    }

    fn compute(&mut self, pi: usize, si: usize) -> bool {
        let (p, s) = (self.p, self.s);
        if pi == p.len() {
            return si == s.len();
        }
        match p[pi] {
            '*' => {
                let double = p.get(pi + 1) == Some(&'*');
                let next = pi + if double { 2 } else { 1 };
                // `**/` also matches zero directories.
                if double && p.get(next) == Some(&'/') && self.at(next + 1, si) {
                    return true;
                }
                let mut k = si;
                loop {
                    if self.at(next, k) {
                        return true;
                    }
                    if k >= s.len() || (!double && s[k] == '/') {
                        return false;
                    }
                    k += 1;
                }
            }
            '?' => si < s.len() && s[si] != '/' && self.at(pi + 1, si + 1),
            '[' => {
                let Some(end) = p[pi + 2..]
                    .iter()
                    .position(|c| *c == ']')
                    .map(|e| e + pi + 2)
                else {
                    return false;
                };
                if si >= s.len() || s[si] == '/' {
                    return false;
                }
                let (negate, class) = match p[pi + 1] {
                    '!' | '^' => (true, &p[pi + 2..end]),
                    _ => (false, &p[pi + 1..end]),
                };
                let c = s[si];
                let mut hit = false;
                let mut k = 0;
                while k < class.len() {
                    if k + 2 < class.len() && class[k + 1] == '-' {
                        hit |= class[k] <= c && c <= class[k + 2];
                        k += 3;
                    } else {
                        hit |= class[k] == c;
                        k += 1;
                    }
                }
                hit != negate && self.at(end + 1, si + 1)
            }
            c => si < s.len() && s[si] == c && self.at(pi + 1, si + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p).unwrap().matches(s)
    }

    #[test]
    fn basename_and_anchored_patterns() {
        assert!(m("*.txt", "a.txt"));
        assert!(m("*.txt", "x/y/a.txt"));
        assert!(!m("*.txt", "a.txt.tmp"));
        assert!(m("a?c", "d/abc"));
        assert!(m("in/*.csv", "in/x.csv"));
        assert!(!m("in/*.csv", "in/sub/x.csv"));
        assert!(m("in/**/*.csv", "in/sub/deep/x.csv"));
        assert!(m("in/**/*.csv", "in/x.csv"));
        assert!(m("**/*.csv", "a/b/x.csv"));
        assert!(m("[a-c]x", "bx") && !m("[!a-c]x", "bx") && m("[!a-c]x", "dx"));
        assert!(m(".*", "dir/.hidden"));
    }

    #[test]
    fn refuses_bad_patterns_and_survives_hostile_ones() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("[abc").is_err());
        assert!(Glob::new("a\0b").is_err());
        assert!(Glob::new(&"x".repeat(2000)).is_err());
        let hostile = format!("{}b", "*a".repeat(40));
        assert!(!m(&hostile, &"a".repeat(200)));
    }
}
