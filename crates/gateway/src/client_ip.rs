//! The outside client's address, as the Txn-Token's `rctx.req_ip` states it.
//!
//! Behind a load balancer the TCP peer is the balancer, and the client is only named in
//! `X-Forwarded-For`, which anyone can write. The header is believed hop by hop from the
//! right, and only as far as it was written by a configured trusted proxy: starting at
//! the TCP peer, while the address at hand is trusted, the hop it reported (the rightmost
//! one not yet read) becomes the address at hand. The first untrusted address is the
//! client; a hop that is not an IP address ends the walk at the trusted proxy that wrote
//! it. With no trusted proxies the TCP peer is the client, whatever the header says.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// The most `X-Forwarded-For` hops read.
const MAX_HOPS: usize = 32;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses addresses and CIDR ranges (`10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`).
    pub fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{text}` is neither an IP address nor a CIDR range"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from TCP peer `peer` (see the module doc).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut current = peer.to_canonical();
        if !self.trusts(current) {
            return current;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev().take(MAX_HOPS) {
            if !self.trusts(current) {
                break;
            }
            match hop_address(hop) {
                Some(ip) => current = ip,
                None => break,
            }
        }
        current
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`[v6]:port` too).
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use proptest::prelude::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_header_is_believed_only_as_far_as_trusted_proxies_wrote_it() {
        let lb = proxies(&["10.0.0.0/8", "127.0.0.1"]);
        let from_lb = ip("10.1.2.3");
        // The balancer reports the client.
        assert_eq!(
            lb.client(from_lb, &xff(&["198.51.100.7"])),
            ip("198.51.100.7")
        );
        // Two trusted hops, then the client; what the client wrote before is not believed.
        let headers = xff(&["1.2.3.4, 198.51.100.7", "10.9.9.9"]);
        assert_eq!(lb.client(from_lb, &headers), ip("198.51.100.7"));
        // Ports and IPv6 forms are read; an IPv4-mapped peer counts as IPv4.
        assert_eq!(
            lb.client(from_lb, &xff(&["198.51.100.7:4711"])),
            ip("198.51.100.7")
        );
        assert_eq!(
            lb.client(from_lb, &xff(&["[2001:db8::1]:443"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            lb.client(ip("::ffff:10.1.2.3"), &xff(&["198.51.100.7"])),
            ip("198.51.100.7")
        );
        // A hop that is no address stops at the proxy that wrote it.
        assert_eq!(
            lb.client(from_lb, &xff(&["198.51.100.7, unknown"])),
            from_lb
        );
        // An untrusted peer is the client, whatever it claims; so is a trusted one that
        // names nobody.
        assert_eq!(
            lb.client(ip("203.0.113.5"), &xff(&["1.2.3.4"])),
            ip("203.0.113.5")
        );
        assert_eq!(lb.client(from_lb, &HeaderMap::new()), from_lb);
        assert_eq!(
            TrustedProxies::default().client(from_lb, &xff(&["1.2.3.4"])),
            from_lb
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["10.0.0.0/33", "example.com", ""] {
            let err = TrustedProxies::parse(&[bad.to_owned()]).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    proptest! {
        /// Whatever the header says, the answer is the peer or an address some hop names,
        /// and never one written left of the first untrusted hop.
        #[test]
        fn the_answer_is_a_believed_hop(hops in proptest::collection::vec(
            prop_oneof![
                Just("10.0.0.1".to_owned()),
                Just("10.0.0.2".to_owned()),
                Just("198.51.100.7".to_owned()),
                Just("203.0.113.9".to_owned()),
                Just("junk".to_owned()),
            ],
            0..8,
        )) {
            let lb = proxies(&["10.0.0.0/8"]);
            let headers = xff(&[hops.join(", ").as_str()]);
            let peer = ip("10.0.0.9");
            let answer = lb.client(peer, &headers);
            // The reference: walk from the right by hand.
            let mut expected = peer;
            for hop in hops.iter().rev() {
                if !expected.to_string().starts_with("10.") {
                    break;
                }
                match hop.parse::<IpAddr>() {
                    Ok(a) => expected = a,
                    Err(_) => break,
                }
            }
            prop_assert_eq!(answer, expected);
        }
    }
}
