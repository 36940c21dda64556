//! Subnets (IPv4 and IPv6 CIDRs as one type over u128) and the node's own routes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits zero).
    pub addr: IpAddr,
    pub prefix: u8,
}

fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

impl Cidr {
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn width(&self) -> u32 {
        if self.is_v4() {
            32
        } else {
            128
        }
    }

    fn host_bits(&self) -> u32 {
        self.width() - u32::from(self.prefix)
    }

    fn base(&self) -> u128 {
        to_bits(self.addr)
    }

    fn addr_of(&self, bits: u128) -> IpAddr {
        if self.is_v4() {
            IpAddr::V4(Ipv4Addr::from(bits as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }

    /// How many addresses it spans (saturating for huge IPv6 subnets).
    pub fn size(&self) -> u128 {
        1u128.checked_shl(self.host_bits()).unwrap_or(u128::MAX)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let h = self.host_bits();
        ip.is_ipv4() == self.is_v4()
            && to_bits(ip).checked_shr(h).unwrap_or(0) == self.base().checked_shr(h).unwrap_or(0)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.is_v4() == other.is_v4() && (self.contains(other.addr) || other.contains(self.addr))
    }

    /// The `n`th address of the subnet (0 is the network address).
    pub fn nth(&self, n: u128) -> IpAddr {
        self.addr_of(self.base() + n)
    }

    /// The last address (broadcast for IPv4).
    pub fn last(&self) -> IpAddr {
        self.nth(self.size().saturating_sub(1))
    }

    /// The index of `ip` in the subnet.
    pub fn index(&self, ip: IpAddr) -> u128 {
        to_bits(ip).wrapping_sub(self.base())
    }

    /// The `n`th subnet of length `prefix` inside this one.
    pub fn subnet(&self, prefix: u8, n: u128) -> Option<Cidr> {
        if prefix < self.prefix || u32::from(prefix) > self.width() {
            return None;
        }
        let count = 1u128.checked_shl(u32::from(prefix - self.prefix))?;
        if n >= count {
            return None;
        }
        let step = 1u128.checked_shl(self.width() - u32::from(prefix))?;
        Some(Cidr {
            addr: self.addr_of(self.base() + n * step),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let shown: String = s.chars().take(64).collect();
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{shown:?} is not ADDRESS/PREFIX"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{shown:?} is not ADDRESS/PREFIX"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{shown:?}: bad prefix length"))?;
        let c = Cidr { addr, prefix };
        if u32::from(prefix) > c.width() {
            return Err(format!("{shown:?}: prefix longer than the address"));
        }
        let host = c.host_bits();
        if host < 128 && to_bits(addr) & ((1u128 << host) - 1) != 0 {
            return Err(format!(
                "{shown} has host bits set (the network address is {})",
                c.addr_of(to_bits(addr) >> host << host)
            ));
        }
        Ok(c)
    }
}

/// The node's routes (main table, IPv4 and IPv6) and loopback: the subnets a bridge network may
/// not overlap. The default routes and IPv6 link-local and multicast are left out.
pub fn host_routes() -> Vec<(Cidr, String)> {
    let mut out = vec![(
        Cidr {
            addr: IpAddr::from([127, 0, 0, 0]),
            prefix: 8,
        },
        "lo".to_owned(),
    )];
    if let Ok(t) = std::fs::read_to_string("/proc/net/route") {
        for l in t.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                continue;
            }
            let (Ok(dst), Ok(mask)) =
                (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
            else {
                continue;
            };
            // The address's bytes in memory order, read as a little-endian number.
            let dst = Ipv4Addr::from(dst.to_le_bytes());
            let prefix = mask.count_ones() as u8;
            if prefix == 0 {
                continue;
            }
            out.push((
                Cidr {
                    addr: IpAddr::V4(dst),
                    prefix,
                },
                f[0].to_owned(),
            ));
        }
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for l in t.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Ok(dst), Ok(prefix)) =
                (u128::from_str_radix(f[0], 16), u8::from_str_radix(f[1], 16))
            else {
                continue;
            };
            let addr = Ipv6Addr::from(dst);
            if prefix == 0
                || (addr.segments()[0] & 0xffc0) == 0xfe80
                || addr.segments()[0] >> 8 == 0xff
            {
                continue;
            }
            out.push((
                Cidr {
                    addr: IpAddr::V6(addr),
                    prefix,
                },
                f[9].to_owned(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_contains_and_overlaps() {
        let a: Cidr = "10.89.3.0/24".parse().unwrap();
        assert!(a.contains("10.89.3.77".parse().unwrap()));
        assert!(!a.contains("10.89.4.1".parse().unwrap()));
        assert_eq!(a.nth(1).to_string(), "10.89.3.1");
        assert_eq!(a.last().to_string(), "10.89.3.255");
        let b: Cidr = "10.89.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&"10.90.0.0/16".parse().unwrap()));
        assert_eq!(b.subnet(24, 3), Some(a));
        assert_eq!(b.subnet(24, 256), None);
        assert!("10.89.3.1/24"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("host bits"));
        assert!("10.89.3.0/33".parse::<Cidr>().is_err());
        assert!("x/24".parse::<Cidr>().is_err());
        let v6: Cidr = "fd00:1::/64".parse().unwrap();
        assert!(v6.contains("fd00:1::5".parse().unwrap()));
        assert!(!v6.overlaps(&a));
        assert_eq!(v6.nth(2).to_string(), "fd00:1::2");
    }

    #[test]
    fn reads_the_nodes_routes() {
        // Loopback always; the rest is whatever this machine has, parsed without panicking.
        let r = host_routes();
        assert!(r.iter().any(|(c, _)| c.to_string() == "127.0.0.0/8"));
    }
}
