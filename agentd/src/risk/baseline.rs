//! An agent's declared destinations: domains, domain suffixes, addresses and CIDRs.

use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// A lower-case domain name without a trailing dot.
    Domain(String),
    /// `*.example.com`, stored as `.example.com`: any name that ends with it.
    Suffix(String),
    /// An address and prefix length.
    Network(IpAddr, u8),
}

/// The destinations an agent is expected to reach. A destination is inside when its domain
/// (if the connect has one) matches a domain or suffix entry, or its address falls in an
/// address or CIDR entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    entries: Vec<Entry>,
}

fn valid_domain(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

fn parse_entry(text: &str) -> Result<Entry, String> {
    if let Some((address, prefix)) = text.split_once('/') {
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}`: `{address}` is not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|&p| p <= max)
            .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?;
        return Ok(Entry::Network(address, prefix));
    }
    if let Ok(address) = text.parse::<IpAddr>() {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        return Ok(Entry::Network(address, prefix));
    }
    let lower = text.trim_end_matches('.').to_ascii_lowercase();
    if let Some(suffix) = lower.strip_prefix("*.") {
        if valid_domain(suffix) {
            return Ok(Entry::Suffix(format!(".{suffix}")));
        }
    } else if valid_domain(&lower) {
        return Ok(Entry::Domain(lower));
    }
    Err(format!(
        "`{text}` is not a domain, `*.domain`, IP address or CIDR"
    ))
}

fn in_network(address: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (address, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn ends_with_ignore_case(name: &str, suffix: &str) -> bool {
    name.len() >= suffix.len()
        && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

impl Baseline {
    /// Parses a baseline's entries; the error names the first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let entries = entries
            .iter()
            .map(|e| parse_entry(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// The destination is one the agent is expected to reach. Allocates nothing.
    pub fn contains(&self, address: IpAddr, domain: Option<&str>) -> bool {
        let domain = domain.map(|d| d.trim_end_matches('.'));
        self.entries.iter().any(|entry| match (entry, domain) {
            (Entry::Network(network, prefix), _) => in_network(address, *network, *prefix),
            (Entry::Domain(name), Some(domain)) => domain.eq_ignore_ascii_case(name),
            (Entry::Suffix(suffix), Some(domain)) => ends_with_ignore_case(domain, suffix),
            (Entry::Domain(_) | Entry::Suffix(_), None) => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn entries_match_domains_suffixes_addresses_and_networks() {
        let baseline = Baseline::parse(&[
            "API.example.com.",
            "*.github.com",
            "10.0.0.0/8",
            "2001:db8::1",
        ])
        .unwrap();
        assert!(baseline.contains(ip("1.1.1.1"), Some("api.example.com")));
        assert!(baseline.contains(ip("1.1.1.1"), Some("api.EXAMPLE.com.")));
        assert!(!baseline.contains(ip("1.1.1.1"), Some("www.example.com")));
        assert!(baseline.contains(ip("1.1.1.1"), Some("codeload.github.com")));
        assert!(!baseline.contains(ip("1.1.1.1"), Some("github.com")));
        assert!(!baseline.contains(ip("1.1.1.1"), Some("evilgithub.com")));
        assert!(baseline.contains(ip("10.200.3.4"), None));
        assert!(!baseline.contains(ip("11.0.0.1"), None));
        assert!(baseline.contains(ip("2001:db8::1"), None));
        assert!(!baseline.contains(ip("2001:db8::2"), None));
        assert!(!baseline.contains(ip("::ffff:10.0.0.1"), None));
    }

    #[test]
    fn zero_prefix_matches_every_address_of_its_family() {
        let baseline = Baseline::parse(&["0.0.0.0/0"]).unwrap();
        assert!(baseline.contains(ip("203.0.113.9"), None));
        assert!(!baseline.contains(ip("2001:db8::9"), None));
    }

    #[test]
    fn bad_entries_are_named() {
        assert_eq!(
            Baseline::parse(&["10.0.0.0/33"]).unwrap_err(),
            "`10.0.0.0/33`: the prefix length must be 0 to 32"
        );
        assert_eq!(
            Baseline::parse(&["ok.example", "bad host"]).unwrap_err(),
            "`bad host` is not a domain, `*.domain`, IP address or CIDR"
        );
        assert_eq!(
            Baseline::parse(&["10.0.0/8"]).unwrap_err(),
            "`10.0.0/8`: `10.0.0` is not an IP address"
        );
    }
}
