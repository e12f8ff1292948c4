//! Reconciling a `PhotonCluster`: level-triggered and idempotent. Each pass
//! checks the spec (a refused one gets `Valid=False` and nothing is
//! created), makes sure the token Secret exists, applies the head's objects
//! with server-side apply, brings every worker group to its wanted count
//! (replacing failed workers), removes groups no longer in the spec, and
//! writes the status: `HeadReady`, `WorkersReady`, `Ready`, per-group counts
//! and the head's address.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::desired::{
    self, CLUSTER_LABEL, ExistingWorker, GROUP_LABEL, INDEX_ANNOTATION, ROLE_LABEL,
};
use crate::types::{Condition, PhotonCluster, PhotonClusterStatus, WorkerGroupStatus};
use crate::{autoscale, validate};

/// The field manager of the operator's server-side applies.
pub const MANAGER: &str = "photon-operator";

/// What reconciling can fail with; the controller retries after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// No randomness for a cluster token.
    #[error("cannot read /dev/urandom for a cluster token: {0}")]
    Random(std::io::Error),
    /// The cluster has no namespace (it is a namespaced resource).
    #[error("PhotonCluster {0} has no namespace")]
    NoNamespace(String),
}

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Since when autoscaled workers have been idle.
    pub idle: crate::autoscale::IdleClock,
    /// Kubernetes Events about what reconciles did.
    pub events: crate::events::Events,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client) -> Self {
        Self {
            events: crate::events::Events::new(client.clone()),
            client,
            idle: Default::default(),
        }
    }
}

/// Reconciles one cluster.
pub async fn reconcile(cluster: Arc<PhotonCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = cluster.name_any();
    let namespace = cluster
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let client = ctx.client.clone();
    let clusters: Api<PhotonCluster> = Api::namespaced(client.clone(), &namespace);
    let previous = cluster.status.clone().unwrap_or_default();

    let mut problems = validate::problems(&cluster.spec);
    problems.extend(validate::name_problem(&name));
    if !problems.is_empty() {
        let message = problems.join("; ");
        warn!(cluster = %name, %message, "refusing an invalid spec");
        ctx.events
            .warning(cluster.as_ref(), "InvalidSpec", "Validate", message.clone())
            .await;
        let status = PhotonClusterStatus {
            conditions: vec![
                condition(&previous, "Valid", false, "InvalidSpec", &message),
                condition(
                    &previous,
                    "Ready",
                    false,
                    "InvalidSpec",
                    "the spec is invalid: nothing was created",
                ),
            ],
            observed_generation: cluster.metadata.generation,
            ..Default::default()
        };
        write_status(&clusters, &name, &status).await?;
        // Nothing to do until the spec changes.
        return Ok(Action::await_change());
    }

    ensure_token(&client, &namespace, &cluster).await?;
    if let Some(claim) = desired::head_state_claim(&cluster) {
        apply(&client, &namespace, &claim).await?;
    }
    let deployment = apply(&client, &namespace, &desired::head_deployment(&cluster)).await?;
    apply(&client, &namespace, &desired::head_service(&cluster)).await?;
    let head_ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= 1;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = format!("{CLUSTER_LABEL}={name},{ROLE_LABEL}=worker");
    let workers = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let existing_of = |group: &str| -> Vec<ExistingWorker> {
        workers
            .iter()
            .filter(|p| p.labels().get(GROUP_LABEL).map(String::as_str) == Some(group))
            .filter_map(existing_worker)
            .collect()
    };
    let (wanted, idle) = wanted_workers(&ctx, &cluster, &previous, &workers, head_ready).await;
    let mut groups = Vec::new();
    for ((group, wanted), idle) in cluster.spec.worker_groups.iter().zip(wanted).zip(idle) {
        let existing = existing_of(&group.name);
        let plan = desired::plan_workers(wanted, &existing, &idle);
        for index in &plan.create {
            let pod = desired::worker_pod(&cluster, group, *index);
            match pods.create(&PostParams::default(), &pod).await {
                Ok(created) => {
                    info!(cluster = %name, group = %group.name, index, "created a worker");
                    let pod = created.name_any();
                    let note = format!(
                        "created worker pod {pod} (group {}, index {index})",
                        group.name
                    );
                    ctx.events
                        .about_pod(
                            cluster.as_ref(),
                            &pod,
                            "CreatedWorker",
                            "CreateWorker",
                            note,
                        )
                        .await;
                }
                // Created by a previous pass whose result was not seen yet.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        for pod in &plan.delete {
            delete_pod(&pods, pod).await?;
            info!(cluster = %name, group = %group.name, %pod, "deleted a worker (scaled down or failed)");
            let failed = existing.iter().any(|e| &e.name == pod && e.ended);
            let (reason, why) = match failed {
                true => ("ReplacingFailedWorker", "it ended"),
                false => ("ScaledDown", "the group wants fewer workers"),
            };
            let note = format!(
                "deleted worker pod {pod} (group {}): {why}; {} wanted",
                group.name, wanted
            );
            ctx.events
                .about_pod(cluster.as_ref(), pod, reason, "DeleteWorker", note)
                .await;
        }
        let ready = workers
            .iter()
            .filter(|p| p.labels().get(GROUP_LABEL) == Some(&group.name))
            .filter(|p| is_ready(p))
            .count() as i32;
        groups.push(WorkerGroupStatus {
            name: group.name.clone(),
            ready_replicas: ready,
            desired_replicas: wanted as i32,
        });
    }
    // Workers of groups no longer in the spec go.
    for pod in &workers {
        let group = pod.labels().get(GROUP_LABEL).cloned().unwrap_or_default();
        if !cluster.spec.worker_groups.iter().any(|g| g.name == group) {
            delete_pod(&pods, &pod.name_any()).await?;
        }
    }

    let workers_ready = groups
        .iter()
        .all(|g| g.ready_replicas >= g.desired_replicas);
    let summary: Vec<String> = groups
        .iter()
        .map(|g| format!("{}: {}/{}", g.name, g.ready_replicas, g.desired_replicas))
        .collect();
    let status = PhotonClusterStatus {
        conditions: vec![
            condition(&previous, "Valid", true, "SpecAccepted", ""),
            condition(
                &previous,
                "HeadReady",
                head_ready,
                if head_ready {
                    "HeadReady"
                } else {
                    "HeadStarting"
                },
                "",
            ),
            condition(
                &previous,
                "WorkersReady",
                workers_ready,
                if workers_ready {
                    "AllWorkersReady"
                } else {
                    "WorkersStarting"
                },
                &summary.join(", "),
            ),
            condition(
                &previous,
                "Ready",
                head_ready && workers_ready,
                if head_ready && workers_ready {
                    "ClusterReady"
                } else {
                    "Starting"
                },
                "",
            ),
        ],
        worker_groups: groups,
        head_address: Some(desired::head_address(&cluster)),
        observed_generation: cluster.metadata.generation,
    };
    if cluster.status.as_ref() != Some(&status) {
        write_status(&clusters, &name, &status).await?;
    }
    // Level-triggered: owned objects' events wake it too; this is the fallback.
    let wait = if head_ready && workers_ready { 60 } else { 5 };
    Ok(Action::requeue(Duration::from_secs(wait)))
}

/// How many workers each group should have, and which of its workers are
/// idle enough to go first: `replicas` (within its bounds), or with
/// autoscaling on and the head up, what the head's pending demand and idle
/// nodes call for (starting from the count the status last recorded).
async fn wanted_workers(
    ctx: &Context,
    cluster: &PhotonCluster,
    previous: &PhotonClusterStatus,
    workers: &[Pod],
    head_ready: bool,
) -> (Vec<u32>, Vec<Vec<String>>) {
    let groups = &cluster.spec.worker_groups;
    let fixed = || {
        let wanted = groups
            .iter()
            .map(|g| {
                let (min, max) = validate::bounds(g.replicas, g.min_replicas, g.max_replicas);
                g.replicas.clamp(min, max).max(0) as u32
            })
            .collect();
        (wanted, vec![Vec::new(); groups.len()])
    };
    let Some(autoscaling) = cluster.spec.autoscaling.as_ref().filter(|a| a.enabled) else {
        return fixed();
    };
    if !head_ready {
        return fixed();
    }
    let namespace = cluster.namespace().unwrap_or_default();
    let view = match cluster_token(&ctx.client, &namespace, cluster).await {
        Ok(token) => {
            // Where the status last recorded the head (the first pass: its Service).
            let head = previous
                .head_address
                .clone()
                .unwrap_or_else(|| desired::head_address(cluster));
            autoscale::head_view(&head, &token).await
        }
        Err(err) => Err(err.to_string()),
    };
    let view = match view {
        Ok(view) => view,
        Err(err) => {
            warn!(cluster = %cluster.name_any(), %err, "cannot read the head's demand; not autoscaling this pass");
            return fixed();
        }
    };
    let wait = Duration::from_secs(autoscaling.idle_seconds.unwrap_or(60).max(0) as u64);
    let loads: Vec<autoscale::GroupLoad> = groups
        .iter()
        .map(|group| {
            let (min, max) =
                validate::bounds(group.replicas, group.min_replicas, group.max_replicas);
            let current = previous
                .worker_groups
                .iter()
                .find(|g| g.name == group.name)
                .map_or(group.replicas, |g| g.desired_replicas);
            let pods: Vec<(String, String)> = workers
                .iter()
                .filter(|p| p.labels().get(GROUP_LABEL) == Some(&group.name))
                .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?)))
                .collect();
            let ready = workers
                .iter()
                .filter(|p| p.labels().get(GROUP_LABEL) == Some(&group.name))
                .filter(|p| is_ready(p))
                .count() as u32;
            autoscale::GroupLoad {
                live: current.clamp(min, max).max(0) as u32,
                ready,
                min: min.max(0) as u32,
                max: max.max(0) as u32,
                gpus: group
                    .resources
                    .as_ref()
                    .is_some_and(|r| validate::gpus(r).unwrap_or(0) > 0),
                idle: ctx.idle.idle_for(&pods, &view.idle_hosts, wait),
            }
        })
        .collect();
    let wanted = autoscale::desired(&loads, &view.demands);
    for (load, (want, group)) in loads.iter().zip(wanted.iter().zip(groups)) {
        if *want != load.live {
            info!(cluster = %cluster.name_any(), group = %group.name, from = load.live, to = *want, "autoscaling");
        }
    }
    (wanted, loads.into_iter().map(|l| l.idle).collect())
}

/// The cluster's token, from its Secret.
pub(crate) async fn cluster_token(
    client: &Client,
    namespace: &str,
    cluster: &PhotonCluster,
) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets.get(&desired::token_secret_name(cluster)).await?;
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get("token").cloned())
        })
        .unwrap_or_default();
    Ok(token)
}

/// What the controller does after a failed reconcile: say why (log and
/// event), retry soon.
pub fn error_policy(cluster: Arc<PhotonCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(cluster = %cluster.name_any(), %error, "reconcile failed; retrying");
    let note = format!("{error}; retrying in 10 s");
    tokio::spawn(async move {
        ctx.events
            .warning(cluster.as_ref(), "ReconcileFailed", "Reconcile", note)
            .await;
    });
    Action::requeue(Duration::from_secs(10))
}

fn existing_worker(pod: &Pod) -> Option<ExistingWorker> {
    let index = pod.annotations().get(INDEX_ANNOTATION)?.parse().ok()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    Some(ExistingWorker {
        name: pod.name_any(),
        index,
        ended: matches!(phase.as_deref(), Some("Failed" | "Succeeded")),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    })
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates the token Secret unless it exists (an existing one is never
/// changed: raylets and drivers hold its token).
async fn ensure_token(
    client: &Client,
    namespace: &str,
    cluster: &PhotonCluster,
) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = desired::token_secret_name(cluster);
    if secrets.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let secret = desired::token_secret(cluster, &random_token()?);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(cluster = %cluster.name_any(), secret = %name, "generated the cluster token");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// 32 random bytes in hex, from the kernel.
fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| std::io::Read::read_exact(&mut urandom, &mut bytes))
        .map_err(Error::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Server-side apply of `object` (its name and namespace from its metadata).
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.meta().name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(object).expect("objects serialize");
    body["apiVersion"] = K::api_version(&Default::default()).into();
    body["kind"] = K::kind(&Default::default()).into();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?)
}

async fn write_status(
    clusters: &Api<PhotonCluster>,
    name: &str,
    status: &PhotonClusterStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({ "status": status });
    clusters
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// A condition, keeping its transition time when its status did not change.
fn condition(
    previous: &PhotonClusterStatus,
    type_: &str,
    holds: bool,
    reason: &str,
    message: &str,
) -> Condition {
    let status = if holds { "True" } else { "False" };
    let since = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now_rfc3339);
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Some(since),
    }
}

/// Now as RFC 3339 (UTC, seconds), as Kubernetes writes times.
fn now_rfc3339() -> String {
    rfc3339(now_unix())
}

/// Seconds since 1970.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since 1970 of a `YYYY-MM-DDTHH:MM:SSZ` time (what `rfc3339` writes).
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    if text.len() != 20 || !text.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // Days from the civil date (the inverse of `rfc3339`'s algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// Civil date from days since 1970 (Howard Hinnant's algorithm); written
/// here rather than pulling a date crate into the operator for one format.
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_935_221), "2026-11-29T06:53:41Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        for secs in [0, 951_782_400, 1_795_935_221, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
        }
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
