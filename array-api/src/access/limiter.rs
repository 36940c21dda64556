//! Failed authentications, counted per peer: after `auth_failures` of them within
//! `auth_failure_window`, a peer is refused — 429 with `Retry-After`, whatever it sends, a valid
//! token included — for `auth_block`. A peer is its IP address over TCP (an IPv6 address by its
//! /64, the block a single host is normally given), its uid over a unix socket.
//!
//! Only credentials that were presented and failed count: an unknown, malformed or expired
//! token. A request without any is an ordinary 401 (a health probe is not an attack). The table
//! is bounded ([`MAX_PEERS`]): when it is full, peers with no recent failure go first, then the
//! one whose last failure is oldest.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Peer;

/// Most peers whose failures are tracked at once.
pub const MAX_PEERS: usize = 10_000;

/// Whom failures are counted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// An IPv4 address, or the /64 of an IPv6 one.
    Ip(IpAddr),
    Uid(u32),
}

impl PeerKey {
    pub fn of(peer: &Peer) -> Self {
        match peer {
            Peer::Unix { uid, .. } => Self::Uid(*uid),
            Peer::Tcp { addr, .. } => Self::Ip(match addr.ip() {
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => {
                        let net = u128::from(v6) & !((1u128 << 64) - 1);
                        IpAddr::V6(net.into())
                    }
                },
                v4 => v4,
            }),
        }
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(net)) => write!(f, "{net}/64"),
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Uid(uid) => write!(f, "unix uid {uid}"),
        }
    }
}

#[derive(Default)]
struct Entry {
    /// The failures within the window, oldest first (at most `max` kept).
    failures: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn last(&self) -> Option<Instant> {
        self.failures.back().copied()
    }
}

/// The table of failed authentications; its methods take the time from the caller.
pub struct AuthLimiter {
    max: u32,
    window: Duration,
    block: Duration,
    peers: Mutex<HashMap<PeerKey, Entry>>,
}

impl AuthLimiter {
    /// `max` failures within `window` block a peer for `block`.
    pub fn new(max: u32, window: Duration, block: Duration) -> Self {
        Self {
            max: max.max(1),
            window,
            block,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// How long `peer` stays refused, if it is now.
    pub fn blocked(&self, peer: PeerKey, now: Instant) -> Option<Duration> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let until = peers.get(&peer)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Counts one failure of `peer`; returns true when this one blocks it.
    pub fn failed(&self, peer: PeerKey, now: Instant) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(&peer) && peers.len() >= MAX_PEERS {
            self.make_room(&mut peers, now);
        }
        let e = peers.entry(peer).or_default();
        if e.blocked_until.is_some_and(|u| u > now) {
            return false;
        }
        e.blocked_until = None;
        while e
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            e.failures.pop_front();
        }
        e.failures.push_back(now);
        if e.failures.len() >= self.max as usize {
            e.failures.clear();
            e.blocked_until = Some(now + self.block);
            return true;
        }
        false
    }

    /// Forgets peers that are neither blocked nor failed recently; if none, the stalest.
    fn make_room(&self, peers: &mut HashMap<PeerKey, Entry>, now: Instant) {
        peers.retain(|_, e| {
            e.blocked_until.is_some_and(|u| u > now)
                || e.last()
                    .is_some_and(|t| now.saturating_duration_since(t) < self.window)
        });
        if peers.len() >= MAX_PEERS {
            let stalest = peers
                .iter()
                .min_by_key(|(_, e)| e.last().or(e.blocked_until))
                .map(|(k, _)| *k);
            if let Some(k) = stalest {
                peers.remove(&k);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.peers.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(ip: &str) -> PeerKey {
        PeerKey::of(&Peer::Tcp {
            addr: std::net::SocketAddr::new(ip.parse().unwrap(), 40000),
            client_cert: None,
        })
    }

    #[test]
    fn ten_failures_in_a_minute_block_the_peer_for_a_while() {
        let l = AuthLimiter::new(10, Duration::from_secs(60), Duration::from_secs(300));
        let t0 = Instant::now();
        let a = tcp("192.0.2.7");
        for i in 0..9 {
            assert!(!l.failed(a, t0 + Duration::from_secs(i)), "failure {i}");
            assert_eq!(l.blocked(a, t0 + Duration::from_secs(i)), None);
        }
        assert!(l.failed(a, t0 + Duration::from_secs(9)), "the tenth blocks");
        assert_eq!(
            l.blocked(a, t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(299))
        );
        assert_eq!(l.blocked(tcp("192.0.2.8"), t0), None, "others are not");
        assert_eq!(l.blocked(a, t0 + Duration::from_secs(309)), None, "it ends");
        // After the block, the count starts again.
        assert!(!l.failed(a, t0 + Duration::from_secs(310)));
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_block() {
        let l = AuthLimiter::new(3, Duration::from_secs(60), Duration::from_secs(60));
        let t0 = Instant::now();
        let a = tcp("192.0.2.7");
        for i in 0..10 {
            assert!(!l.failed(a, t0 + Duration::from_secs(31 * i)), "{i}");
        }
    }

    #[test]
    fn peers_by_address_v6_by_its_64_unix_by_uid() {
        assert_eq!(tcp("2001:db8::1"), tcp("2001:db8::ffff:1"));
        assert_ne!(tcp("2001:db8::1"), tcp("2001:db8:0:1::1"));
        assert_eq!(tcp("::ffff:192.0.2.1"), tcp("192.0.2.1"));
        assert_eq!(tcp("2001:db8::1").to_string(), "2001:db8::/64");
        let unix = |uid, pid| {
            PeerKey::of(&Peer::Unix {
                uid,
                gid: 0,
                pid: Some(pid),
            })
        };
        assert_eq!(unix(1000, 1), unix(1000, 2));
        assert_ne!(unix(1000, 1), unix(1001, 1));
    }

    #[test]
    fn the_table_is_bounded() {
        let l = AuthLimiter::new(2, Duration::from_secs(60), Duration::from_secs(60));
        let t0 = Instant::now();
        let blocked = tcp("198.51.100.1");
        l.failed(blocked, t0);
        l.failed(blocked, t0);
        for i in 0..(MAX_PEERS as u32 + 50) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            l.failed(tcp(&ip.to_string()), t0 + Duration::from_secs(1));
        }
        assert!(l.tracked() <= MAX_PEERS);
        assert!(
            l.blocked(blocked, t0 + Duration::from_secs(2)).is_some(),
            "a blocked peer is kept"
        );
    }
}
