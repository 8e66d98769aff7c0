//! `agentd run`: load the kernel programs, attach the sensors, apply the identity policy, serve
//! the local API, and print events until shut down.

mod admin;
mod adopt;
mod caller;
mod compile;
mod conditional;
mod enrich;
mod error;
mod held;
mod intake;
mod output;
mod remediation;
mod resolver;
mod self_protect;
mod serve;
mod state;
mod workload;

use std::{future::Future, path::Path, time::Duration};

use tokio::sync::mpsc;

pub use self::error::{DaemonError, RequestError};
use self::{
    admin::handle_call,
    conditional::start_control,
    output::Output,
    serve::{bind, serve_admin, serve_identity, start_metrics, start_workload_api},
    state::State,
};
use crate::{
    cgroups,
    clock::boottime_ns,
    config::Config,
    dns,
    events::EventReader,
    pins::OnExit,
    policy::{IdentityPolicy, network::Categories},
};

impl State {
    /// Once a second: the pinned registry, Conditional Access (expiry, reports to the control
    /// plane), egress and risk decay, and the alarm about lost events.
    fn tick(&mut self, output: &mut Output, reader: &EventReader) -> Result<(), DaemonError> {
        if let Err(err) = self.persist_registry() {
            tracing::warn!(err = %anyhow::Error::from(err), "saving agent numbers to the pinned registry");
        }
        // A backstop: each batch of events settles them too.
        self.settle_late();
        let notices = self.ca_tick(output.format);
        output.notices.extend(notices);
        self.report_agents();
        self.send_detections();
        let now = boottime_ns();
        self.assess_egress(now, &mut output.notices, output.format);
        let outcome = self.risk.tick(now);
        if !outcome.is_empty() {
            self.conclude(&outcome, None, &mut output.notices, output.format);
        }
        output.check_losses(&reader.counts()?);
        self.output_errors = output.errors;
        output.flush();
        Ok(())
    }
}

/// The category database from `path`, or the shipped sample.
pub fn load_categories(path: Option<&Path>) -> Result<Categories, DaemonError> {
    let Some(path) = path else {
        return Ok(Categories::sample());
    };
    let invalid = |reason: String| DaemonError::Categories {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|err| invalid(err.to_string()))?;
    Categories::parse(&text).map_err(invalid)
}

/// Everything `run` needs from the command line and the config file.
pub struct RunOptions {
    pub config: Config,
    /// The identity policy to apply at start.
    pub policy: IdentityPolicy,
}

/// Runs until `shutdown` completes. Everything attached is detached on return, by drop.
#[expect(
    clippy::too_many_lines,
    reason = "start-up, the main loop and the exit path read in order here; splitting the \
              daemon by job is its own change"
)]
pub async fn run(
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let RunOptions { config, policy } = options;
    let cgroup_root = cgroups::root().map_err(DaemonError::Cgroup)?;
    let categories = load_categories(config.network.categories_file.as_deref())?;
    // Refuse a bad policy before anything is loaded.
    policy.compile(&cgroup_root, &categories)?;

    let mounts = crate::pseudofs::prepare(&config.bpf.pin_path, config.bpf.mount_filesystems);
    // Whatever a failed start-up pins is removed again; an earlier agentd's pins stay.
    let pins_before = crate::pins::Snapshot::take(&config.bpf.pin_path);
    let (mut state, mut reader) = State::start(&config, cgroup_root, categories, mounts)
        .inspect_err(|_| pins_before.restore())?;
    let (mut output, mut from_control, _control_tx, control_task) = match async {
        // Agents the control plane named before a restart keep its ids from the first tag.
        state.ca.adopted = adopt::kept_ids(&config);
        state.apply(&policy)?;
        let mut output = Output::open(&config.events)?;
        let (from_control, control_tx, control_task) =
            start_control(&config, &mut state, &mut output);
        // The local policy and the kept decisions are in the maps: this build's links take
        // over from an earlier build's (an upgrade), or were adopted as they are.
        state.commit_links()?;
        Ok::<_, DaemonError>((output, from_control, control_tx, control_task))
    }
    .await
    {
        Ok(started) => started,
        Err(err) => {
            drop(state);
            drop(reader);
            pins_before.restore();
            return Err(err);
        }
    };

    let (dns_tx, mut dns_requests) = mpsc::channel::<dns::Request>(256);
    let (calls_tx, mut calls) = mpsc::channel(64);
    let served = async {
        let dns_task = resolver::start_dns(&config.dns, &mut state, dns_tx).await?;
        let admin = bind(&config.api.admin_socket, 0o600)?;
        let identity = bind(&config.api.identity_socket, 0o666)?;
        let spiffe = bind(&config.api.spiffe_socket(), 0o666)?;
        let metrics_task = start_metrics(config.metrics.listen, &calls_tx).await?;
        Ok::<_, DaemonError>((dns_task, admin, identity, spiffe, metrics_task))
    }
    .await;
    let (dns_task, admin, identity, spiffe, metrics_task) = match served {
        Ok(served) => served,
        Err(err) => {
            if let Some(task) = control_task {
                task.abort();
            }
            // The policy is in force and the links are committed: leave as a stop would.
            finish(&config, &state, reader)?;
            return Err(err);
        }
    };
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    let admin_task = tokio::spawn(serve_admin(
        admin,
        calls_tx.clone(),
        state.process.reader()?,
    ));
    let spiffe_task = start_workload_api(
        spiffe,
        state.ca.to_control.clone(),
        calls_tx.clone(),
        state.held_svids.clone(),
    );
    let identity_task = tokio::spawn(serve_identity(identity, calls_tx));
    tracing::info!(
        admin = %config.api.admin_socket.display(),
        identity = %config.api.identity_socket.display(),
        spiffe = %config.api.spiffe_socket().display(),
        "process sensor attached; printing events (Ctrl-C to stop)"
    );

    // Under systemd (Type=notify): the sensors are attached and the sockets bound.
    if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%err, "telling systemd that agentd is ready");
    }
    let mut batch = Vec::new();
    let sweep_every = Duration::from_secs(config.identity.sweep_interval_secs);
    let mut sweep = tokio::time::interval(if sweep_every.is_zero() {
        Duration::from_hours(1)
    } else {
        sweep_every
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            // Shutdown first, every time: a busy event stream must not starve it.
            biased;
            () = &mut shutdown => break Ok(()),
            // Then calls (apply, quarantine, status): rare and short, they must not wait behind
            // a busy event stream.
            Some(call) = calls.recv() => {
                // Errors leave the loop by `break`, never `?`: the exit path below must run.
                if let Err(err) = handle_call(call, &mut state, &reader, &mut output) {
                    break Err(err);
                }
            }
            // Then the timers (the risk tick reads egress and decays risk, the sweep and the
            // expiry of learned addresses): ready once a second at most, they cannot starve
            // the event stream, and a busy stream must not starve them.
            _ = expiry.tick(), if !state.learned.is_empty() => {
                if let Err(err) = state.sync_learned() {
                    tracing::warn!(%err, "expiring learned addresses");
                }
            }
            _ = tick.tick() => {
                if let Err(err) = state.tick(&mut output, &reader) {
                    break Err(err);
                }
            }
            _ = sweep.tick(), if !sweep_every.is_zero() => {
                if let Err(err) = state.sweep() {
                    tracing::warn!(%err, "sweeping stale tags");
                }
            }
            read = reader.read_batch(&mut batch) => {
                if let Err(err) = read {
                    break Err(err.into());
                }
                state.on_events(&mut batch, &mut output);
            }
            Some(update) = from_control.recv() => {
                let notices = state.on_control(update, output.format);
                output.notices.extend(notices);
                output.flush();
            }
            Some(request) = dns_requests.recv() => state.on_dns(request),
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    for task in [
        Some(admin_task),
        Some(identity_task),
        Some(spiffe_task),
        metrics_task,
        dns_task,
        control_task,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
    }
    let _ = std::fs::remove_file(&config.api.admin_socket);
    let _ = std::fs::remove_file(&config.api.identity_socket);
    let _ = std::fs::remove_file(config.api.spiffe_socket());
    let finished = finish(&config, &state, reader);
    result.and(finished)
}

/// Logs the delivery figures, then leaves the programs enforcing or tears them down.
fn finish(config: &Config, state: &State, reader: EventReader) -> Result<(), DaemonError> {
    let delivery = reader.stats();
    tracing::info!(
        delivered = delivery.delivered,
        undecodable = delivery.undecodable,
        dropped = reader.dropped()?,
        tags_lost = state.process.insert_failures()?,
        on_exit = ?state.on_exit,
        "shutting down"
    );
    if state.on_exit == OnExit::Detach {
        drop(reader);
        let links = crate::pins::teardown(&config.bpf.pin_path)?;
        tracing::info!(links, "detached the programs and removed the pins");
    } else {
        tracing::info!(
            pins = %config.bpf.pin_path.display(),
            "the programs stay attached; `agentd teardown` removes them"
        );
    }
    Ok(())
}
