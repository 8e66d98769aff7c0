//! agentd's DNS resolver for agents. The kernel steers tagged processes' DNS queries (UDP port
//! 53, IPv4) here; the resolver forwards each query upstream, returns the answer to the agent,
//! and reports the names and addresses it saw, so that domain rules can apply to them before
//! the agent connects.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use simple_dns::{Packet, rdata::RData};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot},
};

/// A DNS answer: the name asked for and the addresses given, with their TTLs in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub addresses: Vec<(IpAddr, u32)>,
}

/// An answer on its way to the daemon, with the signal that its addresses are installed.
pub type Learned = (Answer, oneshot::Sender<()>);

/// How long an upstream server may take to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the A and AAAA records of a reply, attributed to the question's name (through any
/// CNAME chain).
pub fn parse_answer(reply: &[u8]) -> Option<Answer> {
    let packet = Packet::parse(reply).ok()?;
    let name = packet.questions.first()?.qname.to_string();
    let addresses: Vec<(IpAddr, u32)> = packet
        .answers
        .iter()
        .filter_map(|record| match &record.rdata {
            RData::A(a) => Some((
                IpAddr::from(std::net::Ipv4Addr::from(a.address)),
                record.ttl,
            )),
            RData::AAAA(aaaa) => Some((
                IpAddr::from(std::net::Ipv6Addr::from(aaaa.address)),
                record.ttl,
            )),
            _ => None,
        })
        .collect();
    (!addresses.is_empty()).then_some(Answer { name, addresses })
}

/// The first `nameserver` in `resolv.conf` text, port 53.
pub fn upstream_from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

async fn forward(
    listener: Arc<UdpSocket>,
    query: Vec<u8>,
    client: SocketAddr,
    upstream: SocketAddr,
    answers: mpsc::Sender<Learned>,
) -> std::io::Result<()> {
    let local: SocketAddr = if upstream.is_ipv6() {
        "[::]:0".parse().expect("an address")
    } else {
        "0.0.0.0:0".parse().expect("an address")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.send_to(&query, upstream).await?;
    let mut reply = vec![0; 4096];
    let len = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut reply))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream DNS timed out")
        })??;
    reply.truncate(len);
    // The addresses are installed in the kernel before the agent sees the answer, so its
    // first connect to them is decided by the domain rules.
    if let Some(answer) = parse_answer(&reply) {
        let (installed_tx, installed) = oneshot::channel();
        if answers.send((answer, installed_tx)).await.is_ok() {
            let _ = tokio::time::timeout(UPSTREAM_TIMEOUT, installed).await;
        }
    }
    listener.send_to(&reply, client).await?;
    Ok(())
}

/// Serves queries on `listener` until the task is dropped.
pub async fn serve(listener: UdpSocket, upstream: SocketAddr, answers: mpsc::Sender<Learned>) {
    let listener = Arc::new(listener);
    let mut query = vec![0; 4096];
    loop {
        let Ok((len, client)) = listener.recv_from(&mut query).await else {
            continue;
        };
        let (listener, answers, query) = (listener.clone(), answers.clone(), query[..len].to_vec());
        tokio::spawn(async move {
            if let Err(err) = forward(listener, query, client, upstream, answers).await {
                tracing::debug!(%err, %client, "forwarding a DNS query");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use simple_dns::{CLASS, Name, Question, ResourceRecord, TYPE, rdata::A};

    use super::*;

    #[test]
    fn answers_are_read_with_their_ttl() {
        let mut packet = Packet::new_reply(7);
        packet.questions.push(Question::new(
            Name::new_unchecked("allowed.test"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        packet.answers.push(ResourceRecord::new(
            Name::new_unchecked("allowed.test"),
            CLASS::IN,
            30,
            RData::A(A {
                address: 0x7f00_0003,
            }),
        ));
        let answer = parse_answer(&packet.build_bytes_vec().unwrap()).unwrap();
        assert_eq!(answer.name, "allowed.test");
        assert_eq!(answer.addresses, [("127.0.0.3".parse().unwrap(), 30)]);
    }

    #[test]
    fn upstream_is_the_first_nameserver() {
        let conf = "# comment\nsearch example\nnameserver 127.0.0.53\nnameserver 10.0.0.1\n";
        assert_eq!(
            upstream_from_resolv_conf(conf),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(upstream_from_resolv_conf("search x\n"), None);
    }
}
