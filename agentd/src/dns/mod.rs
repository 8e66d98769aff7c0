//! agentd's DNS resolver for agents. The kernel steers tagged processes' DNS queries (UDP and
//! TCP to port 53, IPv4) here and records, per socket, the agent that sent them. For each query the
//! resolver asks the kernel which socket it came from ([`peer`]), has the daemon judge it for
//! that agent ([`admission`]), and either answers it itself or forwards it upstream through a
//! client that believes only the upstream ([`upstream`]). The addresses on the question's CNAME
//! chain ([`wire`]) are installed in the kernel before the agent gets the answer, so that
//! domain rules apply to its first connect ([`learned`]); if they cannot be installed, the
//! agent gets SERVFAIL instead.

pub mod admission;
pub mod learned;
pub mod peer;
pub mod upstream;
pub mod wire;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot},
};

pub use self::learned::Answer;
use self::{
    admission::Admission,
    wire::{Query, Rcode},
};

/// What the resolver asks of the daemon.
#[derive(Debug)]
pub enum Request {
    /// Who steered a query through socket `cookie`, and may it ask for `name`?
    Admit {
        cookie: u64,
        name: String,
        decided: oneshot::Sender<Admission>,
    },
    /// Install `agent`'s answer; `true` once its addresses are in the kernel.
    Learn {
        agent: u32,
        answer: Answer,
        installed: oneshot::Sender<bool>,
    },
}

/// How the resolver answers a query for a name no rule of the agent can allow.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnallowedAnswer {
    /// NXDOMAIN: the name does not exist, as far as the agent can tell.
    #[default]
    Nxdomain,
    /// REFUSED: the resolver declines to answer.
    Refused,
}

impl UnallowedAnswer {
    fn rcode(self) -> Rcode {
        match self {
            Self::Nxdomain => Rcode::NxDomain,
            Self::Refused => Rcode::Refused,
        }
    }
}

/// How the resolver runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub upstream: SocketAddr,
    pub unallowed: UnallowedAnswer,
    /// Whether the kernel can name a query's socket ([`peer::probe`]). Without it no query
    /// can be judged for its agent, and every one is refused.
    pub identify: bool,
}

/// How long an upstream server may take to answer, and the daemon to install an answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest query read.
const MAX_QUERY: usize = 4096;

/// The first `nameserver` in `resolv.conf` text, port 53.
pub fn upstream_from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

/// How a query reached the resolver, and so how it is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// What the agent gets for one query, or `None` to send nothing. `cookie` is the kernel's
/// answer to which socket sent it.
async fn resolve(
    message: &[u8],
    cookie: std::io::Result<Option<u64>>,
    transport: Transport,
    settings: Settings,
    daemon: &mpsc::Sender<Request>,
) -> Option<Vec<u8>> {
    // Not a DNS query: dropped, never forwarded.
    let Some(query) = wire::parse_query(message) else {
        tracing::debug!("dropping a message that is not a DNS query");
        return None;
    };
    let reply = |rcode| Some(wire::local_reply(message, &query, rcode));
    if !settings.identify {
        return reply(Rcode::Refused);
    }
    let cookie = match cookie {
        Ok(Some(cookie)) => cookie,
        // The sender is gone: nobody to answer.
        Ok(None) => return None,
        Err(err) => {
            tracing::warn!(%err, "finding the socket of a DNS query");
            return reply(Rcode::ServFail);
        }
    };
    let (decided, decision) = oneshot::channel();
    let asked = Request::Admit {
        cookie,
        name: query.question.name.clone(),
        decided,
    };
    if daemon.send(asked).await.is_err() {
        return reply(Rcode::ServFail);
    }
    let agent = match decision.await {
        Ok(Admission::Forward { agent }) => agent,
        Ok(Admission::Refuse) => return reply(Rcode::Refused),
        Ok(Admission::Unallowed) => return reply(settings.unallowed.rcode()),
        Err(_) => return reply(Rcode::ServFail),
    };
    forward(message, &query, agent, transport, settings, daemon).await
}

/// Forwards an admitted query and returns the answer once its addresses are installed, or
/// SERVFAIL.
async fn forward(
    message: &[u8],
    query: &Query,
    agent: u32,
    transport: Transport,
    settings: Settings,
    daemon: &mpsc::Sender<Request>,
) -> Option<Vec<u8>> {
    let servfail = || Some(wire::local_reply(message, query, Rcode::ServFail));
    let exchanged = match transport {
        Transport::Udp => {
            upstream::exchange(settings.upstream, message, query, UPSTREAM_TIMEOUT).await
        }
        Transport::Tcp => {
            upstream::exchange_tcp(settings.upstream, message, query, UPSTREAM_TIMEOUT).await
        }
    };
    let answer = match exchanged {
        Ok(answer) => answer,
        Err(err) => {
            tracing::debug!(%err, upstream = %settings.upstream, "forwarding a DNS query");
            return servfail();
        }
    };
    // An answer section that cannot be read whole may hold addresses that were not learned.
    let Some(addresses) = wire::chain_addresses(&answer, &query.question) else {
        return servfail();
    };
    if addresses.is_empty() {
        return Some(answer);
    }
    let (installed_tx, installed) = oneshot::channel();
    let learn = Request::Learn {
        agent,
        answer: Answer {
            name: query.question.name.clone(),
            addresses,
        },
        installed: installed_tx,
    };
    if daemon.send(learn).await.is_err() {
        return servfail();
    }
    // The addresses are in the kernel before the agent sees them, so its first connect to
    // them is decided by the domain rules; if they are not (a full map), the agent does not
    // get them at all.
    match tokio::time::timeout(UPSTREAM_TIMEOUT, installed).await {
        Ok(Ok(true)) => Some(answer),
        _ => servfail(),
    }
}

/// Serves queries on `listener` until the task is dropped.
pub async fn serve(listener: UdpSocket, settings: Settings, daemon: mpsc::Sender<Request>) {
    let listener = Arc::new(listener);
    let Ok(local) = listener.local_addr() else {
        tracing::error!("the DNS listener has no address");
        return;
    };
    let mut buffer = vec![0; MAX_QUERY];
    loop {
        let Ok((len, client)) = listener.recv_from(&mut buffer).await else {
            continue;
        };
        let (listener, daemon, message) =
            (listener.clone(), daemon.clone(), buffer[..len].to_vec());
        tokio::spawn(async move {
            let cookie = peer::udp_cookie(local, client);
            if let Some(reply) = resolve(&message, cookie, Transport::Udp, settings, &daemon).await
                && let Err(err) = listener.send_to(&reply, client).await
            {
                tracing::debug!(%err, %client, "answering a DNS query");
            }
        });
    }
}

/// How long a DNS-over-TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Serves DNS over TCP (length-prefixed messages, one query at a time per connection) on
/// `listener` until the task is dropped.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    settings: Settings,
    daemon: mpsc::Sender<Request>,
) {
    let Ok(local) = listener.local_addr() else {
        tracing::error!("the DNS listener has no address");
        return;
    };
    loop {
        let Ok((mut stream, client)) = listener.accept().await else {
            continue;
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            loop {
                let read = upstream::read_framed(&mut stream);
                let Ok(Ok(message)) = tokio::time::timeout(TCP_IDLE, read).await else {
                    return;
                };
                let cookie = peer::tcp_cookie(local, client);
                let Some(reply) =
                    resolve(&message, cookie, Transport::Tcp, settings, &daemon).await
                else {
                    // Not DNS, or nobody to answer: the connection ends.
                    return;
                };
                if let Err(err) = upstream::write_framed(&mut stream, &reply).await {
                    tracing::debug!(%err, %client, "answering a DNS query over TCP");
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket as StdSocket;

    use super::*;
    use crate::dns::wire::tests::{Rr, query, reply};

    /// An upstream on loopback that answers every query with 127.0.0.3.
    fn upstream() -> SocketAddr {
        let socket = StdSocket::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while let Ok((len, client)) = socket.recv_from(&mut buffer) {
                let answer = reply(&buffer[..len], &[Rr::A("@", [127, 0, 0, 3], 60)]);
                let _ = socket.send_to(&answer, client);
            }
        });
        address
    }

    /// Serves one query from a real client socket through a resolver whose daemon admits
    /// everything for agent 1 and reports `installed` for every answer; returns the reply's
    /// response code and length.
    async fn one_query(installed: bool) -> (u8, usize) {
        let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let resolver = listener.local_addr().unwrap();
        let (tx, mut requests) = mpsc::channel(8);
        let settings = Settings {
            upstream: upstream(),
            unallowed: UnallowedAnswer::Nxdomain,
            identify: true,
        };
        tokio::spawn(serve(listener, settings, tx));
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                match request {
                    Request::Admit { decided, .. } => {
                        let _ = decided.send(Admission::Forward { agent: 1 });
                    }
                    Request::Learn {
                        installed: done, ..
                    } => {
                        let _ = done.send(installed);
                    }
                }
            }
        });
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&query(9, "allowed.test", 1), resolver)
            .await
            .unwrap();
        let mut buffer = [0u8; 512];
        let len = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buffer))
            .await
            .expect("a reply")
            .unwrap();
        (buffer[3] & 0x0f, len)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_whose_addresses_cannot_be_installed_is_servfail() {
        let (rcode, len) = one_query(false).await;
        assert_eq!(rcode, Rcode::ServFail as u8);
        // The question alone: no address reaches the agent.
        assert_eq!(len, query(9, "allowed.test", 1).len());
        let (rcode, len) = one_query(true).await;
        assert_eq!(rcode, 0);
        assert!(len > query(9, "allowed.test", 1).len());
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
