//! The client's address: the TCP peer, or behind a trusted reverse proxy the address the proxy
//! forwarded. Rate limits, lockouts and audit events use it; a header from anyone else is
//! ignored, so a client cannot choose the address it is counted under.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Request extension: who the request is from, and through which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    pub client: IpAddr,
    /// The trusted proxy it came through, when it did.
    pub via: Option<IpAddr>,
}

impl ClientAddr {
    /// As audit events name it: `client`, or `client via proxy`.
    pub fn describe(&self) -> String {
        match self.via {
            Some(proxy) => format!("{} via {proxy}", self.client),
            None => self.client.to_string(),
        }
    }
}

/// Parses `trusted_proxies` (addresses or CIDR prefixes).
pub fn parse_proxies(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .map(|e| {
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("trusted_proxies: {e:?} is not an address or CIDR prefix"))
        })
        .collect()
}

fn trusted(proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = canonical(ip);
    proxies.iter().any(|p| p.contains(&ip))
}

/// IPv4-mapped IPv6 (a dual-stack listener) as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client of a request from `peer`: `peer` itself unless it is a trusted proxy; then the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries left of it
/// were written by the client and prove nothing). A missing or malformed header leaves `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> ClientAddr {
    let direct = ClientAddr {
        client: canonical(peer),
        via: None,
    };
    if !trusted(proxies, peer) {
        return direct;
    }
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return direct;
        };
        hops.extend(text.split(','));
    }
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            return direct;
        };
        if !trusted(proxies, ip) {
            return ClientAddr {
                client: canonical(ip),
                via: Some(canonical(peer)),
            };
        }
    }
    direct
}

/// The layer that puts [`ClientAddr`] into every request that has a peer address.
pub async fn layer(
    State(proxies): State<Arc<Vec<IpNet>>>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(peer) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    {
        let addr = resolve(peer, req.headers(), &proxies);
        req.extensions_mut().insert(addr);
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let proxies = parse_proxies(&["10.0.0.0/8".into(), "2001:db8::1".into()]).unwrap();
        // Not a proxy: its header is the client's own claim.
        let r = resolve(ip("203.0.113.9"), &headers(&["198.51.100.1"]), &proxies);
        assert_eq!(
            r,
            ClientAddr {
                client: ip("203.0.113.9"),
                via: None
            }
        );
        // A proxy: the right-most untrusted hop; what the client prepended is ignored.
        let r = resolve(
            ip("10.1.2.3"),
            &headers(&["1.1.1.1, 198.51.100.7", "10.9.9.9"]),
            &proxies,
        );
        assert_eq!(
            r,
            ClientAddr {
                client: ip("198.51.100.7"),
                via: Some(ip("10.1.2.3"))
            }
        );
        // Through an IPv6 proxy, an IPv6 client; IPv4-mapped peers count as IPv4.
        let r = resolve(ip("2001:db8::1"), &headers(&["2001:db8:1::5"]), &proxies);
        assert_eq!(r.client, ip("2001:db8:1::5"));
        let r = resolve(ip("::ffff:10.0.0.1"), &headers(&["198.51.100.8"]), &proxies);
        assert_eq!(r.client, ip("198.51.100.8"));
        // Missing, malformed or all-proxy headers: the peer.
        for h in [
            headers(&[]),
            headers(&["not-an-ip"]),
            headers(&["10.0.0.5"]),
        ] {
            assert_eq!(resolve(ip("10.1.2.3"), &h, &proxies).client, ip("10.1.2.3"));
        }
        assert!(parse_proxies(&["10.0.0.0/33".into()]).is_err());
        assert!(parse_proxies(&["proxy.internal".into()]).is_err());
    }
}
