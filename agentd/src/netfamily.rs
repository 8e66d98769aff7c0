//! Socket address families beyond IPv4 and IPv6, as an agent's `socket_families` names them
//! and as events report them. Unix, netlink and the kernel's crypto API (`alg`) are always
//! allowed; packet sockets follow `raw_sockets`; every other family needs a name here
//! (docs/network.md, "Socket families").

use agentd_common::socket_family;
use serde::Deserialize;

/// A family an agent's policy may allow (`socket_families = ["vsock"]`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum SocketFamily {
    Ax25,
    Ipx,
    Appletalk,
    Netrom,
    Bridge,
    Atmpvc,
    X25,
    Rose,
    Decnet,
    Netbeui,
    Security,
    Key,
    Ash,
    Econet,
    Atmsvc,
    Rds,
    Sna,
    Irda,
    Pppox,
    Wanpipe,
    Llc,
    Ib,
    Mpls,
    Can,
    Tipc,
    Bluetooth,
    Iucv,
    Rxrpc,
    Isdn,
    Phonet,
    Ieee802154,
    Caif,
    Nfc,
    Vsock,
    Kcm,
    Qipcrtr,
    Smc,
    Xdp,
    Mctp,
}

/// Every nameable family with its name and Linux's `AF_*` number.
const FAMILIES: [(SocketFamily, &str, u32); 39] = [
    (SocketFamily::Ax25, "ax25", 3),
    (SocketFamily::Ipx, "ipx", 4),
    (SocketFamily::Appletalk, "appletalk", 5),
    (SocketFamily::Netrom, "netrom", 6),
    (SocketFamily::Bridge, "bridge", 7),
    (SocketFamily::Atmpvc, "atmpvc", 8),
    (SocketFamily::X25, "x25", 9),
    (SocketFamily::Rose, "rose", 11),
    (SocketFamily::Decnet, "decnet", 12),
    (SocketFamily::Netbeui, "netbeui", 13),
    (SocketFamily::Security, "security", 14),
    (SocketFamily::Key, "key", 15),
    (SocketFamily::Ash, "ash", 18),
    (SocketFamily::Econet, "econet", 19),
    (SocketFamily::Atmsvc, "atmsvc", 20),
    (SocketFamily::Rds, "rds", 21),
    (SocketFamily::Sna, "sna", 22),
    (SocketFamily::Irda, "irda", 23),
    (SocketFamily::Pppox, "pppox", 24),
    (SocketFamily::Wanpipe, "wanpipe", 25),
    (SocketFamily::Llc, "llc", 26),
    (SocketFamily::Ib, "ib", 27),
    (SocketFamily::Mpls, "mpls", 28),
    (SocketFamily::Can, "can", 29),
    (SocketFamily::Tipc, "tipc", 30),
    (SocketFamily::Bluetooth, "bluetooth", 31),
    (SocketFamily::Iucv, "iucv", 32),
    (SocketFamily::Rxrpc, "rxrpc", 33),
    (SocketFamily::Isdn, "isdn", 34),
    (SocketFamily::Phonet, "phonet", 35),
    (SocketFamily::Ieee802154, "ieee802154", 36),
    (SocketFamily::Caif, "caif", 37),
    (SocketFamily::Nfc, "nfc", 39),
    (SocketFamily::Vsock, "vsock", 40),
    (SocketFamily::Kcm, "kcm", 41),
    (SocketFamily::Qipcrtr, "qipcrtr", 42),
    (SocketFamily::Smc, "smc", 43),
    (SocketFamily::Xdp, "xdp", 44),
    (SocketFamily::Mctp, "mctp", 45),
];

impl SocketFamily {
    /// Linux's `AF_*` number.
    #[must_use]
    pub fn number(self) -> u32 {
        FAMILIES
            .iter()
            .find(|(family, _, _)| *family == self)
            .map_or(0, |(_, _, number)| *number)
    }
}

/// The kernel's `socket_families` bits for `families`.
#[must_use]
pub fn kernel_bits(families: &[SocketFamily]) -> u64 {
    families
        .iter()
        .map(|family| family.number())
        .filter(|number| *number < socket_family::LIMIT)
        .fold(0, |bits, number| bits | 1 << number)
}

/// The name events give the family `number`: the policy's name, the always-allowed ones', or
/// the number itself.
#[must_use]
pub fn name_of(number: u32) -> String {
    let fixed = match number {
        socket_family::UNIX => Some("unix"),
        socket_family::INET => Some("inet"),
        socket_family::INET6 => Some("inet6"),
        socket_family::NETLINK => Some("netlink"),
        socket_family::PACKET => Some("packet"),
        socket_family::ALG => Some("alg"),
        _ => FAMILIES
            .iter()
            .find(|(_, _, n)| *n == number)
            .map(|(_, name, _)| *name),
    };
    fixed.map_or_else(|| number.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Spec {
        socket_families: Vec<SocketFamily>,
    }

    #[test]
    fn names_parse_to_linux_numbers_and_back() {
        let spec: Spec = toml::from_str("socket_families = [\"vsock\", \"tipc\", \"xdp\"]")
            .expect("known names");
        assert_eq!(
            kernel_bits(&spec.socket_families),
            1 << 40 | 1 << 30 | 1 << 44
        );
        for (family, name, number) in FAMILIES {
            assert_eq!(family.number(), number);
            assert_eq!(name_of(number), name);
            let parsed: Spec = toml::from_str(&format!("socket_families = [\"{name}\"]"))
                .expect("every table name parses");
            assert_eq!(parsed.socket_families, [family]);
            assert_eq!(socket_family::ALWAYS & (1 << number), 0, "{name}");
        }
        assert_eq!(name_of(socket_family::PACKET), "packet");
        assert_eq!(name_of(63), "63");
    }

    #[test]
    fn unknown_and_always_allowed_names_are_refused_with_the_field() {
        for name in ["packet", "unix", "inet", "wifi"] {
            let err = toml::from_str::<Spec>(&format!("socket_families = [\"{name}\"]"))
                .expect_err("not a nameable family");
            let text = err.to_string();
            assert!(text.contains("socket_families"), "{text}");
            assert!(text.contains("vsock"), "lists what it expects: {text}");
        }
    }
}
