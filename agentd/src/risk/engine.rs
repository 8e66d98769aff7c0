//! The engine proper: per-agent state, the detection rules, aggregation, decay, admin actions
//! and the remediation policy.

use std::collections::{HashMap, VecDeque};

use super::{
    AgentRisk, Baseline, Cause, ConnectAttempt, Detection, DetectionId, DetectionRecord,
    DetectionState, ExecInfo, FileAccess, Observation, ObservationKind, Outcome, Remediation,
    RiskConfig, RiskConfigError, RiskError, RiskLevel, RiskTransition, Rule, Severity,
    ThreatIntelHit, Verdict,
    memory::{BoundedSet, binary_key, destination_key, key_of},
};
use crate::identity::AgentId;

const NS_PER_SEC: u64 = 1_000_000_000;

fn secs_to_ns(secs: u64) -> u64 {
    secs.saturating_mul(NS_PER_SEC)
}

/// A shell or interpreter pattern: an exact program name, or a name with a version suffix.
#[derive(Debug)]
struct Interpreter {
    name: String,
    versioned: bool,
}

impl Interpreter {
    fn matches(&self, program: &str) -> bool {
        if self.versioned {
            program
                .strip_prefix(self.name.as_str())
                .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        } else {
            program == self.name
        }
    }
}

/// A detection record and the key that de-duplicates it (a destination, binary, indicator...).
#[derive(Debug)]
struct Stored {
    key: u64,
    record: DetectionRecord,
}

/// The bytes an agent sent in the current window, and what it sent while learning.
#[derive(Debug, Default)]
struct EgressWindow {
    start_ns: Option<u64>,
    bytes: u64,
    reported: bool,
    learned_bytes: u64,
}

/// Everything the engine keeps about one agent. Its size is bounded by the configuration's
/// caps: destinations, binaries, burst timestamps, detection records and transitions.
#[derive(Debug)]
struct AgentState {
    /// Set by the agent's first observation.
    learning_until_ns: Option<u64>,
    baseline: Option<Baseline>,
    destinations: BoundedSet,
    binaries: BoundedSet,
    /// One bit per interpreter pattern the agent has run (while learning, or reported since).
    interpreters_known: u64,
    /// Times of the latest denied accesses, at most `denied_burst.count`.
    denials: VecDeque<u64>,
    /// The latest sensitive read not yet followed by a new destination.
    pending_secret: Option<Observation>,
    egress: EgressWindow,
    /// In id order, at most `max_detections`.
    records: VecDeque<Stored>,
    /// The active records, by rule and key (for de-duplication)...
    active: HashMap<(Rule, u64), DetectionId>,
    /// ... and counted by severity (low, medium, high).
    active_counts: [u32; 3],
    /// At most `max_transitions`.
    transitions: VecDeque<RiskTransition>,
    level: RiskLevel,
    compromised: bool,
    quarantined: bool,
    /// No active detection expires before this time.
    next_decay_ns: u64,
}

/// What a call works with besides the agent's own state.
struct Cx<'a> {
    config: &'a RiskConfig,
    interpreters: &'a [Interpreter],
    last_id: &'a mut u64,
    agent: AgentId,
    now: u64,
    out: &'a mut Outcome,
}

/// The risk engine. See the module docs and docs/risk.md.
#[derive(Debug)]
pub struct RiskEngine {
    config: RiskConfig,
    interpreters: Vec<Interpreter>,
    agents: HashMap<AgentId, AgentState>,
    /// The last detection id handed out.
    last_id: u64,
}

impl RiskEngine {
    /// An engine with no agents yet. The configuration is validated first.
    pub fn new(config: RiskConfig) -> Result<Self, RiskConfigError> {
        config.validate()?;
        let interpreters = config
            .unexpected_interpreter
            .interpreters
            .iter()
            .map(|pattern| match pattern.strip_suffix('*') {
                Some(name) => Interpreter {
                    name: name.to_owned(),
                    versioned: true,
                },
                None => Interpreter {
                    name: pattern.clone(),
                    versioned: false,
                },
            })
            .collect();
        Ok(Self {
            config,
            interpreters,
            agents: HashMap::new(),
            last_id: 0,
        })
    }

    pub fn config(&self) -> &RiskConfig {
        &self.config
    }

    /// Applies decay up to `now` to the agent's state, then runs `f` on it with a context for
    /// time `now`, and returns the outcome of both.
    fn with_agent(
        &mut self,
        agent: AgentId,
        now: u64,
        f: impl FnOnce(&mut AgentState, &mut Cx<'_>),
    ) -> Outcome {
        self.with_agent_decayed(agent, now, true, f)
    }

    fn with_agent_decayed(
        &mut self,
        agent: AgentId,
        now: u64,
        decay: bool,
        f: impl FnOnce(&mut AgentState, &mut Cx<'_>),
    ) -> Outcome {
        let mut out = Outcome::default();
        let Self {
            config,
            interpreters,
            agents,
            last_id,
        } = self;
        let state = agents
            .entry(agent)
            .or_insert_with(|| AgentState::new(config));
        let mut cx = Cx {
            config,
            interpreters,
            last_id,
            agent,
            now,
            out: &mut out,
        };
        if decay {
            state.decay(&mut cx);
        }
        f(state, &mut cx);
        out
    }

    /// Judges one observation. Cheap: a hash lookup for the agent, one for a destination or
    /// binary, and no allocation unless a detection is raised or a sensitive read is kept.
    pub fn observe(&mut self, observation: &Observation) -> Outcome {
        self.with_agent(observation.agent, observation.ktime_ns, |state, cx| {
            state.observe(cx, observation);
        })
    }

    /// Decays detections whose time has passed, for every agent, at `now_ns`. Agents are
    /// handled in id order, so the outcome is deterministic.
    pub fn tick(&mut self, now_ns: u64) -> Outcome {
        let mut due: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(_, state)| state.next_decay_ns <= now_ns)
            .map(|(&agent, _)| agent)
            .collect();
        due.sort_unstable();
        let mut out = Outcome::default();
        for agent in due {
            let more = self.with_agent(agent, now_ns, |_, _| {});
            out.detections.extend(more.detections);
            out.transitions.extend(more.transitions);
            out.remediations.extend(more.remediations);
        }
        out
    }

    /// Sets (or with `None`, removes) the agent's destination baseline.
    pub fn set_baseline(&mut self, agent: AgentId, baseline: Option<Baseline>) {
        self.agents
            .entry(agent)
            .or_insert_with(|| AgentState::new(&self.config))
            .baseline = baseline;
    }

    /// An admin confirms the agent compromised: its level is high until it is confirmed safe.
    pub fn confirm_compromised(&mut self, agent: AgentId, now_ns: u64) -> Outcome {
        self.with_agent(agent, now_ns, |state, cx| {
            state.compromised = true;
            state.settle(cx, Cause::ConfirmedCompromised, true);
        })
    }

    /// An admin confirms the agent safe: the compromised mark and every active detection are
    /// cleared (the detections become dismissed), as are a pending sensitive read and the
    /// denied-burst count. What the agent has learned is kept.
    pub fn confirm_safe(&mut self, agent: AgentId, now_ns: u64) -> Outcome {
        self.with_agent(agent, now_ns, |state, cx| {
            state.compromised = false;
            for index in 0..state.records.len() {
                if state.records[index].record.state == DetectionState::Active {
                    state.end(index, DetectionState::Dismissed, cx.now);
                }
            }
            state.next_decay_ns = u64::MAX;
            state.denials.clear();
            state.pending_secret = None;
            state.settle(cx, Cause::ConfirmedSafe, true);
        })
    }

    /// An admin dismisses one active detection. This applies no decay (a refusal changes
    /// nothing); the next [`tick`](Self::tick) does.
    pub fn dismiss(&mut self, id: DetectionId, now_ns: u64) -> Result<Outcome, RiskError> {
        let (agent, index) = self
            .agents
            .iter()
            .find_map(|(&agent, state)| Some((agent, state.position(id)?)))
            .ok_or(RiskError::NoSuchDetection(id))?;
        let current = self.agents[&agent].records[index].record.state;
        if current != DetectionState::Active {
            return Err(RiskError::NotActive { id, state: current });
        }
        Ok(self.with_agent_decayed(agent, now_ns, false, |state, cx| {
            state.end(index, DetectionState::Dismissed, cx.now);
            state.settle(cx, Cause::Dismissed { id }, true);
        }))
    }

    /// The agent's current level; `none` for an agent the engine has not seen.
    pub fn level(&self, agent: AgentId) -> RiskLevel {
        self.agents
            .get(&agent)
            .map_or(RiskLevel::None, |state| state.level)
    }

    /// Every known agent's level, in id order.
    pub fn levels(&self) -> Vec<(AgentId, RiskLevel)> {
        let mut levels: Vec<_> = self
            .agents
            .iter()
            .map(|(&agent, state)| (agent, state.level))
            .collect();
        levels.sort_unstable();
        levels
    }

    /// The agent's level and history. Call [`tick`](Self::tick) first for decay up to now.
    pub fn report(&self, agent: AgentId) -> Option<AgentRisk> {
        let state = self.agents.get(&agent)?;
        Some(AgentRisk {
            agent,
            level: state.level,
            compromised: state.compromised,
            quarantined: state.quarantined,
            learning_until_ns: state.learning_until_ns,
            detections: state.records.iter().map(|s| s.record.clone()).collect(),
            transitions: state.transitions.iter().cloned().collect(),
        })
    }

    /// Drops everything about an agent that no longer exists.
    pub fn forget(&mut self, agent: AgentId) -> bool {
        self.agents.remove(&agent).is_some()
    }

    /// The agent known as `old` is `new` from now on (its id adopted from the control plane):
    /// its risk, detections and evidence move to `new`. Nothing changes when `new` has state
    /// already or `old` has none.
    pub fn rename(&mut self, old: AgentId, new: AgentId) {
        if self.agents.contains_key(&new) {
            return;
        }
        let Some(mut state) = self.agents.remove(&old) else {
            return;
        };
        for stored in &mut state.records {
            let detection = &mut stored.record.detection;
            detection.agent = new;
            for observation in &mut detection.evidence {
                observation.agent = new;
            }
        }
        if let Some(pending) = &mut state.pending_secret {
            pending.agent = new;
        }
        for transition in &mut state.transitions {
            transition.agent = new;
        }
        self.agents.insert(new, state);
    }
}

fn destination(connect: &ConnectAttempt) -> String {
    match &connect.domain {
        Some(domain) => format!("{domain}:{} ({})", connect.port, connect.address),
        None => match connect.address {
            std::net::IpAddr::V4(a) => format!("{a}:{}", connect.port),
            std::net::IpAddr::V6(a) => format!("[{a}]:{}", connect.port),
        },
    }
}

fn severity_index(severity: Severity) -> usize {
    match severity {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
    }
}

fn verdict_word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Allow => "allowed",
        Verdict::Deny => "denied",
    }
}

impl AgentState {
    fn new(config: &RiskConfig) -> Self {
        Self {
            learning_until_ns: None,
            baseline: None,
            destinations: BoundedSet::new(config.max_destinations as usize),
            binaries: BoundedSet::new(config.max_binaries as usize),
            interpreters_known: 0,
            denials: VecDeque::new(),
            pending_secret: None,
            egress: EgressWindow::default(),
            records: VecDeque::new(),
            active: HashMap::new(),
            active_counts: [0; 3],
            transitions: VecDeque::new(),
            level: RiskLevel::None,
            compromised: false,
            quarantined: false,
            next_decay_ns: u64::MAX,
        }
    }

    fn position(&self, id: DetectionId) -> Option<usize> {
        self.records
            .binary_search_by_key(&id, |s| s.record.detection.id)
            .ok()
    }

    fn observe(&mut self, cx: &mut Cx<'_>, observation: &Observation) {
        let learning_until = *self.learning_until_ns.get_or_insert_with(|| {
            observation
                .ktime_ns
                .saturating_add(secs_to_ns(cx.config.learning_window_secs))
        });
        let learning = cx.now < learning_until;
        match &observation.kind {
            ObservationKind::Connect(connect) => {
                self.connect(cx, observation, connect, learning);
            }
            ObservationKind::File(file) => self.file(cx, observation, file),
            ObservationKind::Exec(exec) => self.exec(cx, observation, exec, learning),
            ObservationKind::Egress { bytes } => self.egress(cx, observation, *bytes, learning),
            ObservationKind::ThreatIntel(hit) => self.threat_intel(cx, observation, hit),
        }
    }

    fn connect(
        &mut self,
        cx: &mut Cx<'_>,
        observation: &Observation,
        connect: &ConnectAttempt,
        learning: bool,
    ) {
        if connect.verdict == Verdict::Deny {
            self.denied(cx, observation);
        }
        let key = destination_key(connect.address, connect.domain.as_deref());
        if self.destinations.touch(key) {
            return;
        }
        self.destinations.insert(key);
        let novel = match &self.baseline {
            Some(baseline) => !baseline.contains(connect.address, connect.domain.as_deref()),
            None => !learning,
        };
        if !novel {
            return;
        }
        let config = cx.config;
        if config.unfamiliar_destination.enabled {
            let why = if self.baseline.is_some() {
                "outside its baseline"
            } else {
                "not seen during learning"
            };
            self.raise(
                cx,
                Rule::UnfamiliarDestination,
                config.unfamiliar_destination.severity,
                key,
                || {
                    let summary = format!(
                        "{} connect to {}, {why}",
                        verdict_word(connect.verdict),
                        destination(connect)
                    );
                    (summary, vec![observation.clone()])
                },
            );
        }
        let within = secs_to_ns(config.secret_read_then_egress.within_secs);
        // A read is used up by the first new destination after it, or dropped there if it is
        // too old. (Reads are kept only while the rule is enabled.)
        let read = self
            .pending_secret
            .take_if(|read| read.ktime_ns <= cx.now)
            .filter(|read| cx.now - read.ktime_ns <= within);
        if let Some(read) = read {
            let gap_ms = (cx.now - read.ktime_ns) / 1_000_000;
            self.raise(
                cx,
                Rule::SecretReadThenEgress,
                config.secret_read_then_egress.severity,
                key,
                || {
                    let ObservationKind::File(file) = &read.kind else {
                        unreachable!("only file reads are kept as pending secrets")
                    };
                    let summary = format!(
                        "read {} then {} connect to new destination {} {gap_ms} ms later",
                        file.path
                            .clone()
                            .unwrap_or_else(|| format!("inode {}:{}", file.dev, file.ino)),
                        verdict_word(connect.verdict),
                        destination(connect),
                    );
                    (summary, vec![read, observation.clone()])
                },
            );
        }
    }

    fn file(&mut self, cx: &mut Cx<'_>, observation: &Observation, file: &FileAccess) {
        match file.verdict {
            Verdict::Deny => self.denied(cx, observation),
            Verdict::Allow => {
                if cx.config.secret_read_then_egress.enabled
                    && file.access.reads()
                    && (file.sensitive || file.rule.is_some())
                {
                    match &mut self.pending_secret {
                        Some(kept) => kept.clone_from(observation),
                        None => self.pending_secret = Some(observation.clone()),
                    }
                }
            }
        }
    }

    fn exec(
        &mut self,
        cx: &mut Cx<'_>,
        observation: &Observation,
        exec: &ExecInfo,
        learning: bool,
    ) {
        let config = cx.config;
        let key = binary_key(exec.dev, exec.ino, &exec.filename);
        if !self.binaries.touch(key) {
            self.binaries.insert(key);
            if !learning && config.new_binary.enabled {
                self.raise(cx, Rule::NewBinary, config.new_binary.severity, key, || {
                    let summary = format!(
                        "exec of {}, a binary not seen for this agent",
                        exec.filename
                    );
                    (summary, vec![observation.clone()])
                });
            }
        }
        if !config.unexpected_interpreter.enabled {
            return;
        }
        let program = exec.program();
        let Some(index) = cx.interpreters.iter().position(|i| i.matches(program)) else {
            return;
        };
        let bit = 1u64 << index;
        if self.interpreters_known & bit != 0 {
            return;
        }
        self.interpreters_known |= bit;
        if learning {
            return;
        }
        self.raise(
            cx,
            Rule::UnexpectedInterpreter,
            config.unexpected_interpreter.severity,
            index as u64,
            || {
                let summary = format!(
                    "{program} ({}) spawned; the agent did not run it while learning",
                    exec.filename
                );
                (summary, vec![observation.clone()])
            },
        );
    }

    fn egress(&mut self, cx: &mut Cx<'_>, observation: &Observation, bytes: u64, learning: bool) {
        let config = &cx.config.egress_spike;
        let window_ns = secs_to_ns(config.window_secs);
        let window = &mut self.egress;
        if window
            .start_ns
            .is_none_or(|start| cx.now >= start.saturating_add(window_ns))
        {
            window.start_ns = Some(cx.now);
            window.bytes = 0;
            window.reported = false;
        }
        window.bytes = window.bytes.saturating_add(bytes);
        if learning {
            window.learned_bytes = window.learned_bytes.saturating_add(bytes);
        }
        if !config.enabled || window.reported {
            return;
        }
        let learning_secs = cx.config.learning_window_secs;
        let learned_per_window = if learning_secs == 0 {
            0
        } else {
            let per_window = u128::from(window.learned_bytes) * u128::from(config.window_secs)
                / u128::from(learning_secs);
            u64::try_from(per_window).unwrap_or(u64::MAX)
        };
        // The relative limit judges only after learning; the absolute one always.
        let relative = (config.factor != 0 && !learning).then(|| {
            learned_per_window
                .saturating_mul(config.factor.into())
                .max(config.min_bytes)
        });
        let absolute = (config.absolute_bytes != 0).then_some(config.absolute_bytes);
        let Some(limit) = [relative, absolute]
            .into_iter()
            .flatten()
            .filter(|&limit| window.bytes > limit)
            .min()
        else {
            return;
        };
        window.reported = true;
        let sent = window.bytes;
        let secs = config.window_secs;
        self.raise(cx, Rule::EgressSpike, config.severity, 0, || {
            let summary = format!("{sent} bytes sent within {secs} s, above the limit of {limit}");
            (summary, vec![observation.clone()])
        });
    }

    fn threat_intel(&mut self, cx: &mut Cx<'_>, observation: &Observation, hit: &ThreatIntelHit) {
        let config = &cx.config.threat_intel_hit;
        if !config.enabled {
            return;
        }
        self.raise(
            cx,
            Rule::ThreatIntelHit,
            config.severity,
            key_of(&hit.indicator),
            || {
                let summary = format!("{} is listed by {}", hit.indicator, hit.source);
                (summary, vec![observation.clone()])
            },
        );
    }

    fn denied(&mut self, cx: &mut Cx<'_>, observation: &Observation) {
        let config = &cx.config.denied_burst;
        if !config.enabled {
            return;
        }
        let count = config.count as usize;
        if self.denials.len() == count {
            self.denials.pop_front();
        }
        self.denials.push_back(cx.now);
        let Some(&first) = self.denials.front() else {
            return;
        };
        let span = cx.now.saturating_sub(first);
        if self.denials.len() < count || span > secs_to_ns(config.window_secs) {
            return;
        }
        self.denials.clear();
        self.raise(cx, Rule::DeniedBurst, config.severity, 0, || {
            let summary = format!("{count} denied accesses within {} ms", span / 1_000_000);
            (summary, vec![observation.clone()])
        });
    }

    /// Raises a detection, unless an active one of the same rule and key exists: then that one
    /// is refreshed (its decay restarts) and counts a repeat.
    fn raise(
        &mut self,
        cx: &mut Cx<'_>,
        rule: Rule,
        severity: Severity,
        key: u64,
        describe: impl FnOnce() -> (String, Vec<Observation>),
    ) {
        if let Some(&id) = self.active.get(&(rule, key)) {
            let index = self
                .position(id)
                .expect("active detections are in the history");
            let record = &mut self.records[index].record;
            record.last_ns = record.last_ns.max(cx.now);
            record.repeats += 1;
            return;
        }
        *cx.last_id += 1;
        let id = DetectionId(*cx.last_id);
        let (summary, evidence) = describe();
        let detection = Detection {
            id,
            agent: cx.agent,
            rule,
            severity,
            ktime_ns: cx.now,
            summary,
            evidence,
        };
        cx.out.detections.push(detection.clone());
        self.active.insert((rule, key), id);
        self.active_counts[severity_index(severity)] += 1;
        self.records.push_back(Stored {
            key,
            record: DetectionRecord {
                detection,
                state: DetectionState::Active,
                last_ns: cx.now,
                repeats: 0,
                ended_ns: None,
            },
        });
        if self.records.len() > cx.config.max_detections as usize {
            self.evict_record();
        }
        let expires = cx
            .now
            .saturating_add(secs_to_ns(cx.config.decay.secs(severity)));
        self.next_decay_ns = self.next_decay_ns.min(expires);
        self.settle(cx, Cause::Detection { id }, false);
    }

    /// Drops one record when the history is over its cap: the oldest inactive one, or failing
    /// that the oldest active one of the lowest severity.
    fn evict_record(&mut self) {
        let active: u32 = self.active_counts.iter().sum();
        let index = if self.records.len() > active as usize {
            self.records
                .iter()
                .position(|s| s.record.state != DetectionState::Active)
        } else {
            let lowest = [Severity::Low, Severity::Medium, Severity::High]
                .into_iter()
                .find(|&severity| self.active_counts[severity_index(severity)] > 0);
            self.records
                .iter()
                .position(|s| Some(s.record.detection.severity) == lowest)
        };
        let Some(index) = index else { return };
        if self.records[index].record.state == DetectionState::Active {
            self.forget_active(index);
        }
        self.records.remove(index);
    }

    /// Removes the active record at `index` from the active index and counts.
    fn forget_active(&mut self, index: usize) {
        let Stored { key, record } = &self.records[index];
        let detection = &record.detection;
        if self.active.get(&(detection.rule, *key)) == Some(&detection.id) {
            self.active.remove(&(detection.rule, *key));
        }
        self.active_counts[severity_index(detection.severity)] -= 1;
    }

    /// Ends the active detection at `index`: it becomes `state` as of `at_ns`.
    fn end(&mut self, index: usize, state: DetectionState, at_ns: u64) {
        debug_assert_eq!(self.records[index].record.state, DetectionState::Active);
        self.forget_active(index);
        let record = &mut self.records[index].record;
        record.state = state;
        record.ended_ns = Some(at_ns);
    }

    /// Marks active detections whose decay time has passed as decayed.
    fn decay(&mut self, cx: &mut Cx<'_>) {
        if cx.now < self.next_decay_ns {
            return;
        }
        let mut ids = Vec::new();
        let mut next = u64::MAX;
        for index in 0..self.records.len() {
            let record = &self.records[index].record;
            if record.state != DetectionState::Active {
                continue;
            }
            let expires = record
                .last_ns
                .saturating_add(secs_to_ns(cx.config.decay.secs(record.detection.severity)));
            if expires <= cx.now {
                ids.push(record.detection.id);
                self.end(index, DetectionState::Decayed, expires);
            } else {
                next = next.min(expires);
            }
        }
        self.next_decay_ns = next;
        if !ids.is_empty() {
            self.settle(cx, Cause::Decay { ids }, false);
        }
    }

    /// The level the agent's state gives (docs/risk.md, "Aggregation").
    fn computed_level(&self, config: &RiskConfig) -> RiskLevel {
        if self.compromised {
            return RiskLevel::High;
        }
        let [low, medium, high] = self.active_counts;
        let escalation = &config.escalation;
        if high > 0 || (escalation.mediums_for_high > 0 && medium >= escalation.mediums_for_high) {
            RiskLevel::High
        } else if medium > 0
            || (escalation.lows_for_medium > 0 && low >= escalation.lows_for_medium)
        {
            RiskLevel::Medium
        } else if low > 0 {
            RiskLevel::Low
        } else {
            RiskLevel::None
        }
    }

    /// Recomputes the level after a change, records a transition if it moved, and applies the
    /// remediation policy. `admin` says the change was an admin's, which may release a
    /// quarantine.
    fn settle(&mut self, cx: &mut Cx<'_>, cause: Cause, admin: bool) {
        let from = self.level;
        let to = self.computed_level(cx.config);
        if from != to {
            self.level = to;
            let transition = RiskTransition {
                agent: cx.agent,
                from,
                to,
                ktime_ns: cx.now,
                cause,
            };
            if self.transitions.len() >= cx.config.max_transitions as usize {
                self.transitions.pop_front();
            }
            self.transitions.push_back(transition.clone());
            cx.out.transitions.push(transition);
        }
        let policy = &cx.config.remediation;
        let threshold = RiskLevel::from(policy.quarantine_at);
        let agent = cx.agent;
        if to >= threshold {
            if policy.quarantine && !self.quarantined {
                self.quarantined = true;
                cx.out.remediations.push(Remediation::Quarantine { agent });
            }
            if policy.kill_processes && from < threshold {
                cx.out.remediations.push(Remediation::Kill { agent });
            }
        } else if self.quarantined && (admin || policy.auto_release) {
            self.quarantined = false;
            cx.out.remediations.push(Remediation::Release { agent });
        }
    }
}
