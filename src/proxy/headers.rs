//! Header hygiene between the client, the gateway and the backend.
//!
//! - Hop-by-hop fields are removed in both directions (RFC 9110 §7.6.1): the fixed list, and
//!   every field named by *any* `Connection` line. `HeaderMap::remove(CONNECTION)` would only
//!   see the first line, leaving a second `Connection: x-secret` in place.
//! - Client-supplied forwarding fields are not trusted: `X-Forwarded-For` and
//!   `X-Forwarded-Proto` are replaced with what the gateway saw, and `Forwarded`,
//!   `X-Forwarded-Host`, `X-Forwarded-Port`, `X-Real-IP` are dropped (Django trusts some of them
//!   when configured to, gunicorn trusts `X-Forwarded-Proto` from loopback). Only a peer in
//!   `server.trusted_proxies` (a TLS edge in front of the gateway) may pass them on: its
//!   `X-Forwarded-For` chain is extended with its own address, as nginx's
//!   `$proxy_add_x_forwarded_for` does.
//! - `X-Click-Signature-Verified` and `X-Click-Gateway-Signature` are removed from every request
//!   and set by the gateway only on callbacks it verified, so the backend can refuse callbacks
//!   that did not pass the gateway.
//! - Request fields with `_` in their name are dropped: WSGI maps `X-Foo` and `X_Foo` to the
//!   same `HTTP_X_FOO`, so `X_Forwarded_For` or `X_Click_Signature_Verified` would slip past a
//!   check made on the dashed name (Debian 12's gunicorn 20.1 passes them; gunicorn only started
//!   refusing them in 22.0; Envoy's `headers_with_underscores_action`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::cidr::{any_contains, Cidr};

/// Set on verified callbacks, to the `service_id` they verified for.
pub static TRUST_HEADER: HeaderName = HeaderName::from_static("x-click-signature-verified");
/// The gateway's HMAC attestation of a verified callback ([`crate::trust`]).
pub static ATTESTATION_HEADER: HeaderName = HeaderName::from_static("x-click-gateway-signature");

/// Fixed hop-by-hop fields (RFC 9110 §7.6.1 ¶7, and the proxy credentials of §11.7).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Forwarding fields a client could forge; replaced or dropped on every request.
static UNTRUSTED_FORWARDING: [HeaderName; 6] = [
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-real-ip"),
];

/// The scheme the client used to reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Which kinds of fields a request or response carries. One pass over the names instead of a
/// hash lookup per name to remove: most messages carry none of them.
#[derive(Default)]
struct Found {
    connection: bool,
    hop_by_hop: bool,
    underscore: bool,
    expect: bool,
    trust: bool,
    forwarding: bool,
}

fn scan(headers: &HeaderMap) -> Found {
    let mut f = Found::default();
    for name in headers.keys() {
        // Matching on the text compiles to a length switch and a compare: cheaper than a
        // comparison with each listed name.
        match name.as_str() {
            "connection" => f.connection = true,
            "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate" => f.hop_by_hop = true,
            "forwarded" | "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host"
            | "x-forwarded-port" | "x-real-ip" => f.forwarding = true,
            "expect" => f.expect = true,
            "x-click-signature-verified" | "x-click-gateway-signature" => f.trust = true,
            other if other.contains('_') => f.underscore = true,
            _ => {}
        }
    }
    f
}

/// Joins the `cookie` fields of an HTTP/2 request into one, as RFC 9113 §8.2.3 requires before
/// it is passed to HTTP/1.1: clients split cookies into crumbs for HPACK, and an HTTP/1.1
/// server given several `Cookie` lines may join them with `,` (gunicorn does), which Django
/// then misreads.
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Each crumb was a valid value, and "; " is too: the join cannot fail.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Removes hop-by-hop fields: every field listed in any `Connection` line, then the fixed list.
/// `Host` is never removed this way: it is end-to-end, and dropping it would make the backend
/// see the upstream address instead. Nor is `X-Request-Id`, which the gateway has set by then
/// and promises the backend.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let found = scan(headers);
    strip_found_hop_by_hop(headers, &found);
}

fn strip_found_hop_by_hop(headers: &mut HeaderMap, found: &Found) {
    if found.connection {
        // `Connection: keep-alive` / `close` name options, not fields: nothing to collect.
        // Split as bytes: a line with one non-ASCII byte elsewhere still names its fields
        // (`to_str` would fail on the whole line and leave them all in place).
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
            .filter_map(|token| HeaderName::from_bytes(token).ok())
            .filter(|name| name != header::HOST && name != crate::request_id::HEADER)
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if found.hop_by_hop {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// Drops every field whose name contains `_`.
pub fn strip_underscored(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Rewrites a client request's headers for the backend (callbacks and everything else alike).
/// `xff` is the peer's address as a header value (computed once per connection);
/// `trusted_peer`: the peer is one of `server.trusted_proxies`.
pub fn for_upstream(
    headers: &mut HeaderMap,
    xff: &HeaderValue,
    scheme: Scheme,
    trusted_peer: bool,
) {
    let found = scan(headers);
    strip_found_hop_by_hop(headers, &found);
    if found.underscore {
        strip_underscored(headers);
    }
    // hyper answers `Expect: 100-continue` itself when the body is read.
    if found.expect {
        headers.remove(header::EXPECT);
    }
    if found.trust {
        headers.remove(&TRUST_HEADER);
        headers.remove(&ATTESTATION_HEADER);
    }
    let xff_name = &UNTRUSTED_FORWARDING[1];
    let xfp = &UNTRUSTED_FORWARDING[2];
    if trusted_peer {
        let mut chain: Vec<&[u8]> = headers
            .get_all(xff_name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        chain.push(xff.as_bytes());
        let joined = chain.join(&b", "[..]);
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            headers.insert(xff_name, v);
        }
        if !headers.contains_key(xfp) {
            headers.insert(xfp, HeaderValue::from_static(scheme.as_str()));
        }
        return;
    }
    if found.forwarding {
        for name in &UNTRUSTED_FORWARDING {
            headers.remove(name);
        }
    }
    headers.insert(xff_name, xff.clone());
    headers.insert(xfp, HeaderValue::from_static(scheme.as_str()));
}

/// The peer's address as an `X-Forwarded-For` value.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_canonical().to_string())
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// The client's address: the peer, or behind trusted proxies the rightmost address of
/// `X-Forwarded-For` that is not itself a trusted proxy (the first hop nobody vouches for).
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[Cidr]) -> IpAddr {
    if !any_contains(trusted, peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all(&UNTRUSTED_FORWARDING[1])
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !any_contains(trusted, ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// Marks a request as a callback that verified for the service `service` names (its id as a
/// header value), with the gateway's attestation when `[trust]` gives one.
pub fn mark_verified(
    headers: &mut HeaderMap,
    service: HeaderValue,
    attestation: Option<HeaderValue>,
) {
    headers.insert(&TRUST_HEADER, service);
    if let Some(value) = attestation {
        headers.insert(&ATTESTATION_HEADER, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_connection_line_counts() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-secret-hop, X-Other"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "3"),
            ("host", "shop.example"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn http2_cookie_crumbs_become_one_cookie_line() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookie_crumbs(&mut h);
        let cookies: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        let mut one = map(&[("cookie", "a=1")]);
        join_cookie_crumbs(&mut one);
        assert_eq!(one.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1"]);
    }

    #[test]
    fn a_connection_line_with_a_non_ascii_byte_still_names_its_fields() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-hop, \x80odd").unwrap(),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn scan_classifies_every_listed_name() {
        for name in HOP_BY_HOP.iter().skip(1) {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("1"));
            assert!(scan(&h).hop_by_hop, "{name}");
        }
        for name in &UNTRUSTED_FORWARDING {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("1"));
            assert!(scan(&h).forwarding, "{name}");
        }
        let h = map(&[
            ("connection", "x"),
            ("expect", "1"),
            ("x-click-signature-verified", "1"),
            ("a_b", "1"),
        ]);
        let f = scan(&h);
        assert!(f.connection && f.expect && f.trust && f.underscore);
    }

    #[test]
    fn connection_cannot_remove_host() {
        let mut h = map(&[("connection", "host"), ("host", "shop.example")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["host"], "shop.example");
    }

    #[test]
    fn forwarding_fields_are_replaced_and_trust_header_removed() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "6.6.6.6"),
            ("x-click-signature-verified", "12345"),
            ("X-Click-Signature-Verified", "1"),
            ("x-click-gateway-signature", "t=1,v1=forged"),
            ("expect", "100-continue"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x_click_signature_verified", "12345"),
            ("x-ok", "1"),
        ]);
        for_upstream(
            &mut h,
            &peer_value("10.1.2.3".parse().unwrap()),
            Scheme::Http,
            false,
        );
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["10.1.2.3"]
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        for gone in [
            "forwarded",
            "x-forwarded-host",
            "x-real-ip",
            "x-click-signature-verified",
            "x-click-gateway-signature",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        mark_verified(&mut h, HeaderValue::from(12345), None);
        assert_eq!(h["x-click-signature-verified"], "12345");
        assert!(!h.contains_key("x-click-gateway-signature"));
        mark_verified(
            &mut h,
            HeaderValue::from(12345),
            Some(HeaderValue::from_static("t=1,v1=ab")),
        );
        assert_eq!(h["x-click-gateway-signature"], "t=1,v1=ab");
    }

    #[test]
    fn a_trusted_edge_passes_its_forwarding_fields_on() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.shop.uz"),
            ("x-click-signature-verified", "12345"),
        ]);
        let edge: IpAddr = "10.0.0.2".parse().unwrap();
        for_upstream(&mut h, &peer_value(edge), Scheme::Http, true);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 198.51.100.1, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.shop.uz");
        assert!(
            !h.contains_key("x-click-signature-verified"),
            "never trusted, even from the edge"
        );
    }

    #[test]
    fn client_ip_is_the_first_untrusted_hop_from_the_right() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let h = map(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.7")]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_ip(&h, ip("10.0.0.2"), &trusted), ip("203.0.113.9"));
        assert_eq!(
            client_ip(&h, ip("192.0.2.1"), &trusted),
            ip("192.0.2.1"),
            "untrusted peer"
        );
        assert_eq!(
            client_ip(&HeaderMap::new(), ip("10.0.0.2"), &trusted),
            ip("10.0.0.2")
        );
        let garbage = map(&[("x-forwarded-for", "nonsense, 10.0.0.7")]);
        assert_eq!(
            client_ip(&garbage, ip("10.0.0.2"), &trusted),
            ip("10.0.0.7")
        );
    }
}
