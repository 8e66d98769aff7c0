//! Field validation shared by the services. Every error names the field.

use std::collections::{BTreeMap, HashMap};

use prost_types::Timestamp;

use crate::{
    clock::UnixTime,
    error::{Error, quoted},
};

type Result<T> = std::result::Result<T, Error>;

/// Blueprint and agent names: 1 to 63 of `[a-z0-9-]`, starting with a letter or digit.
pub fn identifier(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.len() > 63 {
        return Err(Error::invalid(field, "is longer than 63 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Error::invalid(
            field,
            format!("{} may contain only a-z, 0-9 and -", quoted(value)),
        ));
    }
    if value.starts_with('-') {
        return Err(Error::invalid(field, "may not start with -"));
    }
    Ok(value.to_owned())
}

/// A server-assigned id.
pub fn uuid(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    uuid::Uuid::parse_str(value)
        .map(|id| id.to_string())
        .map_err(|_| Error::invalid(field, format!("{} is not a UUID", quoted(value))))
}

/// A person or group: 1 to 256 printable characters without spaces.
pub fn principal(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.chars().count() > 256 {
        return Err(Error::invalid(field, "is longer than 256 characters"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            field,
            format!(
                "{} may not contain spaces or control characters",
                quoted(value)
            ),
        ));
    }
    Ok(value.to_owned())
}

pub fn principals(field: &str, values: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        let value = principal(&format!("{field}[{index}]"), value)?;
        if out.contains(&value) {
            return Err(Error::invalid(
                format!("{field}[{index}]"),
                format!("{} is listed twice", quoted(&value)),
            ));
        }
        out.push(value);
    }
    Ok(out)
}

/// Free text of at most `max` characters, without control characters other than newlines.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    if value.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::invalid(field, "contains control characters"));
    }
    Ok(value.to_owned())
}

pub fn required_text(field: &str, value: &str, max: usize) -> Result<String> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    text(field, value, max)
}

/// Custom security attributes: at most 64; keys 1 to 63 of `[A-Za-z0-9_.-]`; values at most
/// 256 characters.
pub fn attributes(field: &str, map: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    super::limits::at_most(field, map.len(), super::limits::ATTRIBUTES)?;
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let valid_key = !key.is_empty()
            && key.len() <= 63
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid_key {
            return Err(Error::invalid(
                format!("{field}[{}]", quoted(key)),
                "keys are 1 to 63 characters of A-Z, a-z, 0-9, _, . and -",
            ));
        }
        out.insert(
            key.clone(),
            text(&format!("{field}[{}]", quoted(key)), value, 256)?,
        );
    }
    Ok(out)
}

/// A list of short strings (capabilities, tasks): at most 64 of at most 256 characters each.
pub fn short_list(field: &str, values: &[String]) -> Result<Vec<String>> {
    if values.len() > 64 {
        return Err(Error::invalid(field, "has more than 64 entries"));
    }
    values
        .iter()
        .enumerate()
        .map(|(index, value)| required_text(&format!("{field}[{index}]"), value, 256))
        .collect()
}

pub fn absolute_path(field: &str, value: &str) -> Result<String> {
    if !value.starts_with('/') {
        return Err(Error::invalid(
            field,
            format!("{} is not an absolute path", quoted(value)),
        ));
    }
    if value.split('/').any(|part| part == "..") {
        return Err(Error::invalid(field, "may not contain .."));
    }
    text(field, value, 4096)
}

/// `host:port`, an address, `cidr` or `cidr:port`; IPv6 with a port in brackets
/// (`[2001:db8::/32]:443`).
pub fn destination(field: &str, value: &str) -> Result<String> {
    let invalid = || {
        Error::invalid(
            field,
            format!(
                "{} is not host:port, an address, a CIDR or CIDR:port",
                quoted(value)
            ),
        )
    };
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(invalid)?;
        let port = if after.is_empty() {
            None
        } else {
            Some(after.strip_prefix(':').ok_or_else(invalid)?)
        };
        (inner, port)
    } else if value.matches(':').count() == 1 {
        let (host, port) = value.split_once(':').ok_or_else(invalid)?;
        (host, Some(port))
    } else {
        (value, None)
    };
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(Error::invalid(
            field,
            format!("{} is not a port (1-65535)", quoted(port)),
        ));
    }
    if let Some((addr, prefix)) = host.split_once('/') {
        let addr: std::net::IpAddr = addr.parse().map_err(|_| invalid())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix.parse::<u8>().map_or(true, |p| p > max) {
            return Err(Error::invalid(
                field,
                format!("/{prefix} is not a prefix length (0-{max})"),
            ));
        }
    } else if host.parse::<std::net::IpAddr>().is_err() {
        if port.is_none() {
            return Err(Error::invalid(
                field,
                format!("{}: a host name needs a port (host:port)", quoted(value)),
            ));
        }
        hostname(field, host)?;
    }
    Ok(value.to_owned())
}

/// DNS host names: 1 to 253 of `[A-Za-z0-9.-]`.
pub fn hostname(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if value.len() > 253
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(Error::invalid(
            field,
            format!(
                "{} is not a host name (1 to 253 of A-Z, a-z, 0-9, . and -)",
                quoted(value)
            ),
        ));
    }
    Ok(value.to_owned())
}

/// `http://` or `https://` URLs.
pub fn url(field: &str, value: &str) -> Result<String> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| Error::invalid(field, format!("{} is not an http(s) URL", quoted(value))))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(Error::invalid(
            field,
            format!("{} has no host", quoted(value)),
        ));
    }
    text(field, value, 2048)
}

pub fn json_object(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(_)) => text(field, value, 65536),
        Ok(_) => Err(Error::invalid(field, "must be a JSON object")),
        Err(err) => Err(Error::invalid(field, format!("is not JSON: {err}"))),
    }
}

pub fn time(field: &str, value: Option<&Timestamp>) -> Result<Option<UnixTime>> {
    match value {
        None => Ok(None),
        Some(ts) if ts.seconds < 0 || !(0..1_000_000_000).contains(&ts.nanos) => {
            Err(Error::invalid(field, "is not a valid time after 1970"))
        }
        Some(ts) => Ok(Some(ts.seconds)),
    }
}

/// A proto enum value that must be known and not UNSPECIFIED.
pub fn known_enum<T: TryFrom<i32>>(
    field: &str,
    value: i32,
    allow_unspecified: bool,
) -> Result<Option<T>> {
    if value == 0 {
        return if allow_unspecified {
            Ok(None)
        } else {
            Err(Error::invalid(field, "is required"))
        };
    }
    T::try_from(value)
        .map(Some)
        .map_err(|_| Error::invalid(field, format!("{value} is not a known value")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(err: Error) -> String {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn destinations_accept_hosts_with_ports_addresses_and_cidrs() {
        for ok in [
            "api.example.com:443",
            "10.0.0.0/8",
            "10.0.0.0/8:53",
            "192.0.2.1",
            "[2001:db8::/32]:443",
            "2001:db8::1",
            "[2001:db8::1]:53",
        ] {
            destination("d", ok).unwrap_or_else(|err| panic!("{ok}: {err}"));
        }
        for bad in [
            "api.example.com",
            "10.0.0.0/33",
            "host:0",
            "host:http",
            "bad host:80",
            "",
            "[::1",
            "[::1]x",
        ] {
            assert_eq!(field_of(destination("d", bad).expect_err(bad)), "d");
        }
    }

    #[test]
    fn identifiers_refuse_capitals_and_leading_dashes() {
        identifier("name", "web-agent-1").expect("valid");
        assert_eq!(field_of(identifier("name", "Web").unwrap_err()), "name");
        assert_eq!(field_of(identifier("name", "-x").unwrap_err()), "name");
        assert_eq!(
            field_of(identifier("name", &"a".repeat(64)).unwrap_err()),
            "name"
        );
    }

    #[test]
    fn duplicate_principals_name_the_second_index() {
        let err = principals("sponsors", &["a".into(), "b".into(), "a".into()]).unwrap_err();
        assert_eq!(field_of(err), "sponsors[2]");
    }
}
