//! The /etc files a container on a bridge network gets: hosts, resolv.conf, hostname.

use std::net::IpAddr;

/// /etc/hosts: loopback, the container's own names on its address, the extra hosts.
pub fn hosts(own: Option<IpAddr>, names: &[&str], extra_hosts: &[String]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = own {
        s.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    for h in extra_hosts {
        if let Some((name, ip)) = h.split_once(':') {
            s.push_str(&format!("{ip}\t{name}\n"));
        }
    }
    s
}

/// /etc/resolv.conf: the request's servers; else the network's DNS (aardvark on the gateway)
/// first, then the node's servers that a container can reach (not loopback ones).
pub fn resolv_conf(requested: &[String], network_dns: Option<IpAddr>, node: &str) -> String {
    let mut servers: Vec<String> = requested.to_vec();
    let mut search = String::new();
    if servers.is_empty() {
        if let Some(gw) = network_dns {
            servers.push(gw.to_string());
            search = "search dns.podman\n".into();
        }
        for l in node.lines() {
            let mut f = l.split_whitespace();
            if f.next() == Some("nameserver") {
                if let Some(ip) = f.next().and_then(|a| a.parse::<IpAddr>().ok()) {
                    if !ip.is_loopback() && !servers.contains(&ip.to_string()) {
                        servers.push(ip.to_string());
                    }
                }
            }
        }
    }
    let mut s = search;
    for ip in servers.iter().take(3) {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_files() {
        let h = hosts(
            Some("10.0.0.2".parse().unwrap()),
            &["web", "c1"],
            &["db.local:10.1.1.1".into()],
        );
        assert!(h.contains("10.0.0.2\tweb c1\n") && h.contains("10.1.1.1\tdb.local\n"));
        let r = resolv_conf(
            &[],
            Some("10.0.0.1".parse().unwrap()),
            "nameserver 127.0.0.53\nnameserver 192.0.2.1\n",
        );
        assert_eq!(
            r,
            "search dns.podman\nnameserver 10.0.0.1\nnameserver 192.0.2.1\n"
        );
        assert_eq!(
            resolv_conf(&["9.9.9.9".into()], None, ""),
            "nameserver 9.9.9.9\n"
        );
    }
}
