//! DNS messages on the wire (RFC 1035), read strictly and only as far as the resolver needs:
//! the question of a query, whether a reply answers it, the addresses on the question's CNAME
//! chain, and the few replies agentd writes itself.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

const HEADER_LEN: usize = 12;
const FLAG_RESPONSE: u8 = 0x80;
const OPCODE_MASK: u8 = 0x78;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Compression pointers followed in one name before it is refused as a loop.
const MAX_POINTERS: usize = 16;
/// Longest name on the wire (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 255;
/// CNAME links followed from the question's name.
const MAX_CHAIN: usize = 16;

/// Response codes agentd answers with itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rcode {
    ServFail = 2,
    NxDomain = 3,
    Refused = 5,
}

/// What a query asks: a name (lower case, no trailing dot, `\.` and `\DDD` escapes for bytes
/// that are not a hostname's), a type and a class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// A query: its id and its one question, and where the question ends in the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub question: Question,
    question_end: usize,
}

fn u16_at(message: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        *message.get(at)?,
        *message.get(at + 1)?,
    ]))
}

fn u32_at(message: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        message.get(at..at + 4)?.try_into().ok()?,
    ))
}

/// Reads the name at `at`; returns it and the offset after it (after the first pointer, if
/// compressed).
fn read_name(message: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    let mut pointers = 0;
    let mut wire_len = 0;
    loop {
        let len = *message.get(at)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Some((name, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = message.get(at + 1..at + 1 + usize::from(len))?;
                wire_len += 1 + label.len();
                if wire_len > MAX_NAME_LEN {
                    return None;
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &byte in label {
                    match byte.to_ascii_lowercase() {
                        b @ (b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_') => name.push(char::from(b)),
                        b => {
                            let _ = write!(name, "\\{b:03}");
                        }
                    }
                }
                at += 1 + usize::from(len);
            }
            0xc0 => {
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return None;
                }
                let target = usize::from(u16_at(message, at)? & 0x3fff);
                end.get_or_insert(at + 2);
                // Only backwards: a pointer forward or to itself is malformed.
                if target >= at {
                    return None;
                }
                at = target;
            }
            _ => return None,
        }
    }
}

/// Reads a standard query with exactly one question; anything else (a reply, another opcode,
/// bytes that are not DNS) is `None`.
pub fn parse_query(message: &[u8]) -> Option<Query> {
    if message.len() < HEADER_LEN
        || message[2] & FLAG_RESPONSE != 0
        || message[2] & OPCODE_MASK != 0
        || u16_at(message, 4)? != 1
    {
        return None;
    }
    let (name, at) = read_name(message, HEADER_LEN)?;
    let question = Question {
        name,
        qtype: u16_at(message, at)?,
        qclass: u16_at(message, at + 2)?,
    };
    Some(Query {
        id: u16_at(message, 0)?,
        question,
        question_end: at + 4,
    })
}

/// `message` with its id replaced.
pub fn with_id(message: &[u8], id: u16) -> Vec<u8> {
    let mut out = message.to_vec();
    if out.len() >= 2 {
        out[..2].copy_from_slice(&id.to_be_bytes());
    }
    out
}

/// Whether `reply` is a reply with id `id` to exactly `question`.
pub fn answers(reply: &[u8], id: u16, question: &Question) -> bool {
    if reply.len() < HEADER_LEN
        || u16_at(reply, 0) != Some(id)
        || reply[2] & FLAG_RESPONSE == 0
        || u16_at(reply, 4) != Some(1)
    {
        return false;
    }
    let Some((name, at)) = read_name(reply, HEADER_LEN) else {
        return false;
    };
    name == question.name
        && u16_at(reply, at) == Some(question.qtype)
        && u16_at(reply, at + 2) == Some(question.qclass)
}

/// One answer record that matters to the resolver.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Record {
    Address(IpAddr),
    Alias(String),
    Other,
}

/// The answer section of `reply`: (owner, TTL, record) for class IN records; `None` when it
/// cannot be read whole.
fn answer_records(reply: &[u8]) -> Option<Vec<(String, u32, Record)>> {
    let count = u16_at(reply, 6)?;
    let (_, mut at) = read_name(reply, HEADER_LEN)?;
    at += 4;
    let mut records = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (owner, after) = read_name(reply, at)?;
        let rtype = u16_at(reply, after)?;
        let class = u16_at(reply, after + 2)?;
        let ttl = u32_at(reply, after + 4)?;
        let len = usize::from(u16_at(reply, after + 8)?);
        let data_at = after + 10;
        let data = reply.get(data_at..data_at + len)?;
        at = data_at + len;
        if class != CLASS_IN {
            continue;
        }
        let record = match (rtype, data.len()) {
            (TYPE_A, 4) => Record::Address(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (TYPE_AAAA, 16) => {
                let octets: [u8; 16] = data.try_into().ok()?;
                Record::Address(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            (TYPE_CNAME, _) => Record::Alias(read_name(reply, data_at)?.0),
            _ => Record::Other,
        };
        records.push((owner, ttl, record));
    }
    Some(records)
}

/// The A and AAAA addresses of `reply` that belong to `question`'s name: its own records and
/// those of the names its CNAME chain leads to, each with the shortest TTL on its way there.
/// Records for any other name are ignored: a reply cannot teach addresses for names nobody
/// asked about. `None` when the answer section cannot be read.
pub fn chain_addresses(reply: &[u8], question: &Question) -> Option<Vec<(IpAddr, u32)>> {
    let records = answer_records(reply)?;
    // The chain: each name with the shortest TTL of the aliases that lead to it.
    let mut chain: Vec<(String, u32)> = vec![(question.name.clone(), u32::MAX)];
    let mut next = 0;
    while next < chain.len() && chain.len() <= MAX_CHAIN {
        let (name, ttl) = chain[next].clone();
        for (owner, record_ttl, record) in &records {
            if let Record::Alias(target) = record
                && *owner == name
                && !chain.iter().any(|(known, _)| known == target)
            {
                chain.push((target.clone(), ttl.min(*record_ttl)));
            }
        }
        next += 1;
    }
    let mut addresses = Vec::new();
    for (owner, ttl, record) in &records {
        let Record::Address(address) = record else {
            continue;
        };
        if let Some((_, via)) = chain.iter().find(|(name, _)| name == owner) {
            addresses.push((*address, (*ttl).min(*via)));
        }
    }
    Some(addresses)
}

/// A reply to `query` (as received, `message`) that agentd makes itself: the question echoed,
/// no records, `rcode`.
pub fn local_reply(message: &[u8], query: &Query, rcode: Rcode) -> Vec<u8> {
    let mut out = message[..query.question_end].to_vec();
    // QR, the query's opcode (0) and RD kept; RA set; the response code.
    out[2] = FLAG_RESPONSE | (message[2] & 0x01);
    out[3] = 0x80 | rcode as u8;
    // One question, no answer, authority or additional records.
    out[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query for `name` of `qtype`, id `id`, as a stub resolver sends it.
    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        encode_name(&mut out, name);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out
    }

    fn encode_name(out: &mut Vec<u8>, name: &str) {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(u8::try_from(label.len()).unwrap());
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }

    /// A record of the answer section.
    pub(crate) enum Rr<'a> {
        A(&'a str, [u8; 4], u32),
        Aaaa(&'a str, Ipv6Addr, u32),
        Cname(&'a str, &'a str, u32),
    }

    /// A reply to `query` (its bytes) with `records`; the owner `@` is a pointer to the
    /// question's name.
    pub(crate) fn reply(query: &[u8], records: &[Rr]) -> Vec<u8> {
        let mut out = query.to_vec();
        out[2] = 0x81;
        out[3] = 0x80;
        out[6..8].copy_from_slice(&u16::try_from(records.len()).unwrap().to_be_bytes());
        for record in records {
            let (owner, rtype, ttl, data) = match record {
                Rr::A(owner, a, ttl) => (*owner, TYPE_A, *ttl, a.to_vec()),
                Rr::Aaaa(owner, a, ttl) => (*owner, TYPE_AAAA, *ttl, a.octets().to_vec()),
                Rr::Cname(owner, target, ttl) => {
                    let mut data = Vec::new();
                    encode_name(&mut data, target);
                    (*owner, TYPE_CNAME, *ttl, data)
                }
            };
            if owner == "@" {
                out.extend_from_slice(&[0xc0, 12]);
            } else {
                encode_name(&mut out, owner);
            }
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            out.extend_from_slice(&data);
        }
        out
    }

    #[test]
    fn a_query_is_read_and_other_bytes_are_not() {
        let bytes = query(7, "Allowed.Test", TYPE_A);
        let parsed = parse_query(&bytes).expect("a query");
        assert_eq!(parsed.id, 7);
        assert_eq!(
            parsed.question,
            Question {
                name: "allowed.test".into(),
                qtype: TYPE_A,
                qclass: CLASS_IN
            }
        );
        assert_eq!(parse_query(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_query(&bytes[..bytes.len() - 1]), None, "truncated");
        let mut as_reply = bytes.clone();
        as_reply[2] |= FLAG_RESPONSE;
        assert_eq!(parse_query(&as_reply), None, "a reply is not a query");
        let mut two = bytes;
        two[5] = 2;
        assert_eq!(parse_query(&two), None, "two questions");
    }

    #[test]
    fn a_label_with_a_dot_cannot_pass_for_a_subdomain() {
        // One label "x.allowed" then "test": not a name below allowed.test.
        let mut bytes = query(1, "q", TYPE_A);
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(b"\x09x.allowed\x04test\x00\x00\x01\x00\x01");
        let parsed = parse_query(&bytes).unwrap();
        assert_eq!(parsed.question.name, "x\\046allowed.test");
    }

    #[test]
    fn compression_loops_are_refused() {
        let mut bytes = query(1, "q", TYPE_A);
        bytes.truncate(HEADER_LEN);
        bytes.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_query(&bytes), None);
    }

    #[test]
    fn a_reply_answers_only_its_own_id_and_question() {
        let asked = query(0x1234, "allowed.test", TYPE_A);
        let question = parse_query(&asked).unwrap().question;
        let good = reply(&asked, &[Rr::A("@", [127, 0, 0, 3], 60)]);
        assert!(answers(&good, 0x1234, &question));
        assert!(!answers(&good, 0x1235, &question), "wrong id");
        let other = reply(&query(0x1234, "other.test", TYPE_A), &[]);
        assert!(!answers(&other, 0x1234, &question), "wrong name");
        let aaaa = reply(&query(0x1234, "allowed.test", TYPE_AAAA), &[]);
        assert!(!answers(&aaaa, 0x1234, &question), "wrong type");
        assert!(!answers(&asked, 0x1234, &question), "a query is no reply");
        let mut class = good.clone();
        let at = asked.len() - 1;
        class[at] = 3;
        assert!(!answers(&class, 0x1234, &question), "wrong class");
    }

    #[test]
    fn only_records_on_the_cname_chain_are_learned() {
        let asked = query(1, "www.allowed.test", TYPE_A);
        let question = parse_query(&asked).unwrap().question;
        let bytes = reply(
            &asked,
            &[
                Rr::Cname("@", "edge.cdn.test", 300),
                Rr::Cname("edge.cdn.test", "node.cdn.test", 30),
                Rr::A("node.cdn.test", [127, 0, 0, 3], 60),
                Rr::Aaaa("node.cdn.test", "fd00::3".parse().unwrap(), 600),
                // Not on the chain: a record for a name nobody asked about.
                Rr::A("other.test", [169, 254, 169, 254], 60),
                Rr::Cname("unrelated.test", "node.cdn.test", 1),
            ],
        );
        let addresses = chain_addresses(&bytes, &question).unwrap();
        assert_eq!(
            addresses,
            [
                ("127.0.0.3".parse().unwrap(), 30),
                ("fd00::3".parse().unwrap(), 30)
            ]
        );
    }

    #[test]
    fn a_cname_loop_ends() {
        let asked = query(1, "a.test", TYPE_A);
        let question = parse_query(&asked).unwrap().question;
        let bytes = reply(
            &asked,
            &[
                Rr::Cname("@", "b.test", 60),
                Rr::Cname("b.test", "a.test", 60),
                Rr::A("b.test", [127, 0, 0, 9], 5),
            ],
        );
        assert_eq!(
            chain_addresses(&bytes, &question).unwrap(),
            [("127.0.0.9".parse().unwrap(), 5)]
        );
    }

    #[test]
    fn local_replies_echo_the_question() {
        let asked = query(0x4242, "blocked.test", TYPE_A);
        let parsed = parse_query(&asked).unwrap();
        let out = local_reply(&asked, &parsed, Rcode::NxDomain);
        assert_eq!(&out[..2], &[0x42, 0x42]);
        assert_eq!(out[3] & 0x0f, 3);
        assert!(answers(&out, 0x4242, &parsed.question));
        assert_eq!(chain_addresses(&out, &parsed.question).unwrap(), []);
    }
}
