//! The SSRF rule of DESIGN §3, in one place: which targets hookrelay may send to. The worker's
//! deliveries, the API's test-send and the API's registration all ask [`TargetPolicy`].
//!
//! Three checks, all on the same [`is_public`] list of address ranges:
//! - [`TargetPolicy::admits`], without I/O: the scheme (plain http only with
//!   `delivery.allow_http`, also for webhooks stored while it was on) and IP-literal hosts, which
//!   skip any resolver.
//! - [`PublicOnlyResolver`], the HTTP client's DNS resolver: it drops non-public answers, so the
//!   check is on the address actually connected to and a rebinding answer cannot slip past.
//! - [`TargetPolicy::admits_resolved`], at registration: the same lookup and the same filter as
//!   the resolver; a host with no public address is refused.
//!
//! A refusal never says which name, address or resolver error made it: the merchant's answer (and
//! the attempt log they read) must not become a way to map the internal network.

use crate::config::DeliverySettings;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Why a target is refused. The messages name no host, address or resolver error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefused {
    #[error("the target is not a public address")]
    NotPublic,
    #[error("the target uses plain http, which delivery.allow_http does not allow")]
    PlainHttp,
}

/// Which targets may be sent to: `delivery.allow_private_targets` and `delivery.allow_http`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetPolicy {
    pub allow_private: bool,
    pub allow_http: bool,
}

impl TargetPolicy {
    pub fn of(settings: &DeliverySettings) -> Self {
        TargetPolicy {
            allow_private: settings.allow_private_targets,
            allow_http: settings.allow_http,
        }
    }

    /// The checks that need no lookup: the scheme, and the address of an IP-literal host. Host
    /// names are checked on what they resolve to, by [`PublicOnlyResolver`] or
    /// [`TargetPolicy::admits_resolved`].
    pub fn admits(&self, url: &url::Url) -> Result<(), TargetRefused> {
        if url.scheme() != "https" && !self.allow_http {
            return Err(TargetRefused::PlainHttp);
        }
        if self.allow_private {
            return Ok(());
        }
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(ip.into()),
            Some(url::Host::Ipv6(ip)) => Some(ip.into()),
            _ => None,
        };
        match literal {
            Some(ip) if !is_public(ip) => Err(TargetRefused::NotPublic),
            _ => Ok(()),
        }
    }

    /// Registration's check: [`TargetPolicy::admits`], then a host name must resolve, within
    /// `within`, to at least one public address (the worker would connect to no other). A name
    /// that does not resolve is refused the same way as one that resolves inside the network, so
    /// that the answer does not tell which internal names exist.
    pub async fn admits_resolved(
        &self,
        url: &url::Url,
        within: Duration,
    ) -> Result<(), TargetRefused> {
        self.admits(url)?;
        if self.allow_private {
            return Ok(());
        }
        let Some(url::Host::Domain(host)) = url.host() else {
            return Ok(()); // an IP literal, checked by admits
        };
        match tokio::time::timeout(within, public_addrs(host)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(TargetRefused::NotPublic),
        }
    }
}

/// Why a name yields no address to connect to.
#[derive(Debug, thiserror::Error)]
enum LookupError {
    /// The lookup failed (maybe for a while: a delivery retries).
    #[error(transparent)]
    Failed(#[from] std::io::Error),
    /// It resolved, but to no public address (for good: a delivery is refused).
    #[error(transparent)]
    Refused(TargetRefused),
}

/// The public addresses `host` resolves to; [`TargetRefused::NotPublic`] if there are none.
async fn public_addrs(host: &str) -> Result<Vec<SocketAddr>, LookupError> {
    let public: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await?
        .filter(|a| is_public(a.ip()))
        .collect();
    if public.is_empty() {
        return Err(LookupError::Refused(TargetRefused::NotPublic));
    }
    Ok(public)
}

/// Whether `ip` may be connected to: none of the special-purpose ranges below (IANA's IPv4 and
/// IPv6 special-purpose registries, where "globally reachable" is false), and for the IPv6
/// forms that carry an IPv4 address (mapped, 6to4, Teredo) the IPv4 address must be public too.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16, which holds cloud metadata 169.254.169.254
        || ip.is_multicast()
        || ip.is_broadcast() // 255.255.255.255
        || a == 0 // "this network" 0.0.0.0/8, including the unspecified address
        || (a == 100 && (b & 0xc0) == 64) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // deprecated 6to4 relay anycast 192.88.99/24
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 240) // reserved 240/4
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = embedded_v4(ip) {
        return v4.iter().all(|v4| is_public_v4(*v4));
    }
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || s[0..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible ::a.b.c.d, deprecated
        || s[0..5] == [0, 0, 0, 0, 0xffff] // IPv4-translated ::ffff:0:a.b.c.d
        || s[0..4] == [0x0100, 0, 0, 0] // discard-only 100::/64
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (holds AWS metadata fd00:ec2::254)
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b)) // NAT64 64:ff9b::/96 and 64:ff9b:1::/48 reach IPv4
}

/// The IPv4 addresses an IPv6 address delivers to: IPv4-mapped `::ffff:a.b.c.d`; 6to4
/// `2002:AABB:CCDD::/48`; Teredo `2001:0::/32`, whose server and (bit-inverted) client address
/// are both in it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Vec<Ipv4Addr>> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(mapped) = ip.to_ipv4_mapped() {
        Some(vec![mapped])
    } else if s[0] == 0x2002 {
        Some(vec![v4(s[1], s[2])])
    } else if s[0] == 0x2001 && s[1] == 0 {
        Some(vec![v4(s[2], s[3]), v4(!s[6], !s[7])])
    } else {
        None
    }
}

/// Resolves with the system resolver, keeping only public answers.
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            match public_addrs(name.as_str()).await {
                Ok(public) => Ok(Box::new(public.into_iter()) as Addrs),
                Err(LookupError::Failed(e)) => Err(e.into()),
                Err(LookupError::Refused(refused)) => Err(refused.into()),
            }
        })
    }
}

/// Whether a reqwest error was caused by the guard.
pub fn is_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<TargetRefused>().is_some() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    const STRICT: TargetPolicy = TargetPolicy {
        allow_private: false,
        allow_http: false,
    };

    #[test]
    fn every_non_public_range_is_refused() {
        // (range, an address in it)
        let table = [
            ("0.0.0.0/8 this network", "0.0.0.0"),
            ("0.0.0.0/8 this network", "0.1.2.3"),
            ("10/8 private", "10.1.2.3"),
            ("100.64/10 CGNAT", "100.64.0.1"),
            ("100.64/10 CGNAT", "100.127.255.254"),
            ("127/8 loopback", "127.0.0.1"),
            ("127/8 loopback", "127.8.9.10"),
            ("169.254/16 link-local and metadata", "169.254.169.254"),
            ("172.16/12 private", "172.16.0.1"),
            ("172.16/12 private", "172.31.255.255"),
            ("192.0.0/24 IETF", "192.0.0.8"),
            ("192.0.2/24 documentation", "192.0.2.1"),
            ("192.88.99/24 6to4 relay", "192.88.99.1"),
            ("192.168/16 private", "192.168.1.1"),
            ("198.18/15 benchmarking", "198.19.0.1"),
            ("198.51.100/24 documentation", "198.51.100.7"),
            ("203.0.113/24 documentation", "203.0.113.7"),
            ("224/4 multicast", "224.0.0.1"),
            ("240/4 reserved", "240.0.0.1"),
            ("255.255.255.255 broadcast", "255.255.255.255"),
            ("::1 loopback", "::1"),
            (":: unspecified", "::"),
            ("::a.b.c.d IPv4-compatible", "::8.8.8.8"),
            ("::ffff:0:a.b.c.d IPv4-translated", "::ffff:0:808:808"),
            ("::ffff:a.b.c.d mapped loopback", "::ffff:127.0.0.1"),
            ("::ffff:a.b.c.d mapped private", "::ffff:10.0.0.1"),
            ("::ffff:a.b.c.d mapped metadata", "::ffff:169.254.169.254"),
            ("64:ff9b::/96 NAT64", "64:ff9b::a00:1"),
            ("64:ff9b:1::/48 local NAT64", "64:ff9b:1::1"),
            ("100::/64 discard", "100::1"),
            ("2001::/32 Teredo, private server", "2001:0:a00:1::"),
            (
                "2001::/32 Teredo, loopback client",
                "2001:0:808:808::80ff:fffe",
            ),
            ("2001:db8::/32 documentation", "2001:db8::1"),
            ("2002::/16 6to4 of loopback", "2002:7f00:1::1"),
            ("2002::/16 6to4 of private", "2002:c0a8:101::1"),
            ("2002::/16 6to4 of metadata", "2002:a9fe:a9fe::1"),
            ("fc00::/7 unique local", "fc00::1"),
            ("fc00::/7 AWS metadata", "fd00:ec2::254"),
            ("fe80::/10 link-local", "fe80::1"),
            ("fec0::/10 site-local", "fec0::1"),
            ("fec0::/10 site-local", "feff::1"),
            ("ff00::/8 multicast", "ff02::1"),
        ];
        for (range, ip) in table {
            assert!(!public(ip), "{ip} ({range}) must be refused");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1", // just past CGNAT
            "172.32.0.1",  // just past 172.16/12
            "192.88.98.1", // beside the 6to4 relay range
            "223.255.255.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:808:808::1",           // 6to4 of 8.8.8.8
            "2001:0:808:808::f7f7:f7f7", // Teredo: server 8.8.8.8, client 8.8.8.8
            "2001:4860:4860::8888",      // 2001::/23 but not Teredo
        ] {
            assert!(public(ip), "{ip} is public");
        }
    }

    #[test]
    fn ip_literals_and_plain_http_are_refused_without_a_lookup() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(
            STRICT.admits(&url("https://127.0.0.1/h")),
            Err(TargetRefused::NotPublic)
        );
        assert_eq!(
            STRICT.admits(&url("https://[2002:a00:1::1]/h")),
            Err(TargetRefused::NotPublic)
        );
        assert_eq!(
            STRICT.admits(&url("http://93.184.216.34/h")),
            Err(TargetRefused::PlainHttp)
        );
        assert_eq!(STRICT.admits(&url("https://93.184.216.34/h")), Ok(()));
        assert_eq!(STRICT.admits(&url("https://internal.example/h")), Ok(()));
        let lax = TargetPolicy {
            allow_private: true,
            allow_http: true,
        };
        assert_eq!(lax.admits(&url("http://127.0.0.1/h")), Ok(()));
        let private_only = TargetPolicy {
            allow_private: true,
            allow_http: false,
        };
        assert_eq!(
            private_only.admits(&url("http://127.0.0.1/h")),
            Err(TargetRefused::PlainHttp),
            "allowing private targets does not allow http"
        );
    }

    #[tokio::test]
    async fn registration_refuses_names_without_a_public_address_alike() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        let within = Duration::from_secs(5);
        for refused in [
            "https://localhost/h",
            "https://no-such-host.invalid/h",
            "https://[::1]/h",
        ] {
            assert_eq!(
                STRICT.admits_resolved(&url(refused), within).await,
                Err(TargetRefused::NotPublic),
                "{refused}"
            );
        }
        assert_eq!(
            STRICT
                .admits_resolved(&url("https://93.184.216.34/h"), within)
                .await,
            Ok(())
        );
    }

    #[test]
    fn a_refusal_names_no_host_or_address() {
        for refusal in [TargetRefused::NotPublic, TargetRefused::PlainHttp] {
            let message = refusal.to_string();
            assert!(
                !message.chars().any(|c| c.is_ascii_digit()) && !message.contains("localhost"),
                "{message}"
            );
        }
        assert!(TargetRefused::NotPublic
            .to_string()
            .contains("not a public address"));
    }
}
