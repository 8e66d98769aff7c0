//! The local sockets (admin, identity) and the metrics endpoint, and their line protocol.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{admin::Call, caller::AdminCaller, error::DaemonError};
use crate::{
    api::{self, AdminRequest, Reply},
    clock::boottime_ticks,
    identity::attest::Peer,
    sensors::process::TagReader,
};

/// Binds the metrics endpoint, if one is configured, and serves it on a task.
pub(super) async fn start_metrics(
    listen: Option<std::net::SocketAddr>,
    calls: &mpsc::Sender<Call>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Bind {
            path: PathBuf::from(listen.to_string()),
            source,
        })?;
    tracing::info!(%listen, "serving Prometheus metrics at /metrics");
    Ok(Some(tokio::spawn(serve_metrics(listener, calls.clone()))))
}

/// Serves `GET /metrics` until the task is aborted.
async fn serve_metrics(listener: tokio::net::TcpListener, calls: mpsc::Sender<Call>) {
    pub(super) async fn scrape(
        axum::extract::State(calls): axum::extract::State<mpsc::Sender<Call>>,
    ) -> Result<([(axum::http::header::HeaderName, &'static str); 1], String), axum::http::StatusCode>
    {
        let (tx, rx) = oneshot::channel();
        calls
            .send(Call::Metrics(tx))
            .await
            .map_err(|_| axum::http::StatusCode::SERVICE_UNAVAILABLE)?;
        let text = rx
            .await
            .map_err(|_| axum::http::StatusCode::SERVICE_UNAVAILABLE)?;
        Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ))
    }
    pub(super) async fn healthz(
        axum::extract::State(calls): axum::extract::State<mpsc::Sender<Call>>,
    ) -> (
        axum::http::StatusCode,
        [(axum::http::header::HeaderName, &'static str); 1],
        String,
    ) {
        let (tx, rx) = oneshot::channel();
        let answer = match calls.send(Call::Health(tx)).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        let (status, body) = match answer {
            // Degraded is still 200: agentd enforces what it can, and a probe that restarts it
            // would not bring a missing hook back. The body says which sensor and why.
            Some((_, body)) => (axum::http::StatusCode::OK, body),
            None => (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                r#"{"health":"stopping"}"#.to_owned(),
            ),
        };
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
    }
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .route("/healthz", axum::routing::get(healthz))
        .with_state(calls);
    if let Err(err) = axum::serve(listener, app).await {
        tracing::error!(%err, "the metrics endpoint stopped");
    }
}

pub(super) fn bind(path: &Path, mode: u32) -> Result<UnixListener, DaemonError> {
    let bind_error = |source| DaemonError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_error)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(bind_error(err)),
    }
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_error)?;
    Ok(listener)
}

/// Reads one request line, with a deadline so that a silent client cannot hold a task forever.
async fn read_request(stream: &mut UnixStream) -> Option<String> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(n)) if n > 0 => Some(line.trim().to_owned()),
        _ => None,
    }
}

pub(super) async fn answer(
    mut stream: UnixStream,
    call: impl FnOnce(oneshot::Sender<String>) -> Call,
    calls: mpsc::Sender<Call>,
) {
    let (reply_tx, reply_rx) = oneshot::channel();
    if calls.send(call(reply_tx)).await.is_err() {
        return;
    }
    if let Ok(mut line) = reply_rx.await {
        line.push('\n');
        let _ = stream.write_all(line.as_bytes()).await;
    }
}

/// Answers a request that will not be served with an error line.
async fn refuse(stream: &mut UnixStream, error: String) {
    let line = format!("{}\n", Reply::<()>::err(error).to_line());
    let _ = stream.write_all(line.as_bytes()).await;
}

pub(super) async fn serve_admin(
    listener: UnixListener,
    calls: mpsc::Sender<Call>,
    tags: TagReader,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let accepted_at = boottime_ticks();
        // Defence in depth beside the socket's 0600 mode: the process that connected, pinned
        // now, must be root and not an agent (see `daemon::caller`).
        let caller = AdminCaller::admit(Peer::of(&stream, accepted_at), &tags);
        let calls = calls.clone();
        tokio::spawn(async move {
            let Some(line) = read_request(&mut stream).await else {
                return;
            };
            let caller = match caller {
                Ok(caller) => caller,
                Err(refusal) => {
                    tracing::warn!(%refusal, "refused a connection to the admin socket");
                    refuse(&mut stream, refusal.to_string()).await;
                    return;
                }
            };
            match serde_json::from_str::<AdminRequest>(&line) {
                Ok(request) => {
                    answer(stream, |tx| Call::Admin(request, caller, tx), calls).await;
                }
                Err(err) => {
                    refuse(&mut stream, format!("bad request: {err}")).await;
                }
            }
        });
    }
}

/// Serves the SPIFFE Workload API on `listener` (`spiffe::server`); its questions about
/// callers come to the daemon's loop as [`Call::Workload`].
pub(super) fn start_workload_api(
    listener: UnixListener,
    control: Option<mpsc::Sender<crate::control::ToControl>>,
    calls: mpsc::Sender<Call>,
    held: crate::spiffe::server::Held,
) -> tokio::task::JoinHandle<()> {
    let (asks_tx, mut asks) = mpsc::channel(64);
    tokio::spawn(async move {
        let forward = async {
            while let Some(ask) = asks.recv().await {
                if calls.send(Call::Workload(ask)).await.is_err() {
                    return;
                }
            }
        };
        tokio::join!(
            crate::spiffe::server::serve(listener, asks_tx, control, held),
            forward
        );
    })
}

pub(super) async fn serve_identity(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let accepted_at = boottime_ticks();
        // Pin the peer before anything else: the kernel's record, not what it will say.
        let peer = Peer::of(&stream, accepted_at);
        let calls = calls.clone();
        tokio::spawn(async move {
            if read_request(&mut stream).await.as_deref() == Some(api::WHOAMI) {
                answer(stream, |tx| Call::Whoami(peer, tx), calls).await;
            } else {
                refuse(&mut stream, format!("send {:?}", api::WHOAMI)).await;
            }
        });
    }
}
