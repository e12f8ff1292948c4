//! Reconciling a `PhotonJob`: make sure its cluster exists (created from
//! `clusterSpec`, owned by the job, or found by `clusterSelector`), wait until
//! it is ready, submit the entrypoint through the head's job API, follow the
//! job there, resubmit after a failure while `backoffLimit` allows, stop it
//! after `activeDeadlineSeconds`, record the outcome, and delete the created
//! cluster `ttlSecondsAfterFinished` after the end.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use photon_proto::auth::AttachToken;
use photon_proto::v1::jobs_client::JobsClient;
use photon_proto::v1::{JobRecord, JobRequest, JobState, StopJobRequest, SubmitJobRequest};
use tracing::{info, warn};

use crate::reconcile::{Context, Error, MANAGER, cluster_token, now_unix, parse_rfc3339, rfc3339};
use crate::types::{PhotonCluster, PhotonJob, PhotonJobStatus};

/// How often a running job is looked at.
const POLL: Duration = Duration::from_secs(5);

/// The cluster a job with a `clusterSpec` creates.
pub fn cluster_name(job: &PhotonJob) -> String {
    format!("{}-cluster", job.name_any())
}

fn is_terminal(state: Option<&str>) -> bool {
    matches!(state, Some("Succeeded" | "Failed" | "Stopped"))
}

/// Reconciles one job.
pub async fn reconcile_job(job: Arc<PhotonJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = job.name_any();
    let namespace = job
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let jobs: Api<PhotonJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let clusters: Api<PhotonCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut status = job.status.clone().unwrap_or_default();

    if is_terminal(status.state.as_deref()) {
        return after_the_end(&ctx, &job, &status, &clusters).await;
    }
    let refusal = if job.spec.entrypoint.is_empty() {
        Some("spec.entrypoint is empty: name the program to run".to_string())
    } else if job.spec.cluster_spec.is_none() && job.spec.cluster_selector.is_empty() {
        Some(
            "set spec.clusterSpec (a cluster for this job) or spec.clusterSelector (labels of an existing one)".to_string(),
        )
    } else if job.spec.cluster_spec.is_some() {
        crate::validate::name_problem(&cluster_name(&job))
            .map(|problem| format!("its cluster: {problem} (a shorter PhotonJob name)"))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        status.state = Some("Failed".into());
        status.message = Some(refusal);
        record(&ctx, &job, &jobs, &status).await?;
        return Ok(Action::await_change());
    }

    let Some(cluster) = find_cluster(&job, &clusters).await? else {
        status.state = Some("Pending".into());
        status.message = Some(format!(
            "no PhotonCluster in {namespace} has the labels of spec.clusterSelector"
        ));
        record(&ctx, &job, &jobs, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    status.cluster_name = Some(cluster.name_any());
    let ready = cluster.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    });
    let head = cluster.status.as_ref().and_then(|s| s.head_address.clone());
    let (true, Some(head)) = (ready, head) else {
        status.state = Some("ClusterStarting".into());
        status.message = Some(format!(
            "waiting for cluster {} to be ready",
            cluster.name_any()
        ));
        record(&ctx, &job, &jobs, &status).await?;
        return Ok(Action::requeue(POLL));
    };
    let token = cluster_token(&ctx.client, &namespace, &cluster).await?;
    let mut head_jobs = match connect(&head, &token) {
        Ok(client) => client,
        Err(message) => {
            status.message = Some(message);
            record(&ctx, &job, &jobs, &status).await?;
            return Ok(Action::requeue(POLL));
        }
    };

    match status.job_id.clone() {
        None => {
            let (program, args) = job.spec.entrypoint.split_first().expect("checked above");
            let request = SubmitJobRequest {
                name: name.clone(),
                program: program.clone(),
                args: args.to_vec(),
                env: job.spec.env.clone().into_iter().collect(),
                ..Default::default()
            };
            match head_jobs.submit_job(request).await {
                Ok(reply) => {
                    let record = reply.into_inner();
                    info!(job = %name, id = %record.job_id, "submitted to the head");
                    status.job_id = Some(record.job_id);
                    status.attempts += 1;
                    status.state = Some("Running".into());
                    status.start_time.get_or_insert_with(|| rfc3339(now_unix()));
                    status.message = None;
                }
                Err(refused) => {
                    status.message =
                        Some(format!("the head refused the job: {}", refused.message()));
                }
            }
        }
        Some(id) => match head_jobs.get_job(JobRequest { job_id: id.clone() }).await {
            Ok(reply) => follow(&job, &mut status, reply.into_inner(), &mut head_jobs).await,
            Err(lost) if lost.code() == tonic::Code::NotFound => {
                // A head that restarted without its state lost the job.
                let record = JobRecord {
                    state: JobState::Failed as i32,
                    message: format!("the head no longer knows job {id}"),
                    ..Default::default()
                };
                follow(&job, &mut status, record, &mut head_jobs).await;
            }
            Err(other) => {
                status.message = Some(format!("cannot reach the head: {}", other.message()))
            }
        },
    }
    record(&ctx, &job, &jobs, &status).await?;
    if is_terminal(status.state.as_deref()) {
        return after_the_end(&ctx, &job, &status, &clusters).await;
    }
    Ok(Action::requeue(POLL))
}

/// Takes in the head's record of the running attempt.
async fn follow(
    job: &PhotonJob,
    status: &mut PhotonJobStatus,
    record: JobRecord,
    head_jobs: &mut JobsClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AttachToken>,
    >,
) {
    let state = JobState::try_from(record.state).unwrap_or(JobState::Unspecified);
    match state {
        JobState::Pending | JobState::Running | JobState::Unspecified => {
            let started = status.start_time.as_deref().and_then(parse_rfc3339);
            if let (Some(deadline), Some(started)) = (job.spec.active_deadline_seconds, started)
                && now_unix().saturating_sub(started) > deadline.max(0) as u64
                && !record.stop_requested
            {
                warn!(job = %job.name_any(), "past activeDeadlineSeconds: stopping it");
                let _ = head_jobs
                    .stop_job(StopJobRequest {
                        job_id: record.job_id.clone(),
                        grace_period_ms: 0,
                    })
                    .await;
                status.message = Some(format!("DeadlineExceeded: ran longer than {deadline} s"));
            }
        }
        JobState::Succeeded => {
            status.state = Some("Succeeded".into());
            status.end_time = Some(rfc3339(now_unix()));
            status.message = None;
        }
        JobState::Failed | JobState::Stopped => {
            let what = if record.message.is_empty() {
                format!("{state:?}")
            } else {
                record.message.clone()
            };
            let deadline_hit = status
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("DeadlineExceeded"));
            // A stop someone asked for (`photon job stop`) is an end, not a
            // failure to retry; a stop because the head shut down is not.
            let stopped_on_request =
                state == JobState::Stopped && record.message.starts_with("stopped by request");
            if !deadline_hit && !stopped_on_request && status.attempts <= job.spec.backoff_limit {
                status.message = Some(format!(
                    "attempt {} failed ({what}); submitting again ({} of {} retries)",
                    status.attempts, status.attempts, job.spec.backoff_limit
                ));
                status.job_id = None;
            } else {
                status.state = Some(
                    if state == JobState::Stopped {
                        "Stopped"
                    } else {
                        "Failed"
                    }
                    .into(),
                );
                status.end_time = Some(rfc3339(now_unix()));
                let reason = if deadline_hit {
                    "DeadlineExceeded: "
                } else {
                    ""
                };
                status.message = Some(format!("{reason}{what}"));
            }
        }
    }
}

/// A finished job's cluster goes `ttlSecondsAfterFinished` after the end,
/// when the job created it and `shutdownAfterJobFinishes` is on.
async fn after_the_end(
    ctx: &Context,
    job: &PhotonJob,
    status: &PhotonJobStatus,
    clusters: &Api<PhotonCluster>,
) -> Result<Action, Error> {
    if job.spec.cluster_spec.is_none() || !job.spec.shutdown_after_job_finishes {
        return Ok(Action::await_change());
    }
    let ttl = job.spec.ttl_seconds_after_finished.unwrap_or(0).max(0) as u64;
    let ended = status
        .end_time
        .as_deref()
        .and_then(parse_rfc3339)
        .unwrap_or_else(now_unix);
    let due = ended + ttl;
    let now = now_unix();
    if now < due {
        return Ok(Action::requeue(Duration::from_secs(due - now)));
    }
    match clusters
        .delete(&cluster_name(job), &DeleteParams::default())
        .await
    {
        Ok(_) => {
            info!(job = %job.name_any(), cluster = %cluster_name(job), "deleted the finished job's cluster");
            let note = format!("deleted cluster {} (the job ended)", cluster_name(job));
            ctx.events
                .normal(job, "DeletedCluster", "DeleteCluster", note)
                .await;
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// The job's cluster: applied from `clusterSpec` (owned by the job), or the
/// first one matching `clusterSelector`.
async fn find_cluster(
    job: &PhotonJob,
    clusters: &Api<PhotonCluster>,
) -> Result<Option<PhotonCluster>, Error> {
    if let Some(spec) = &job.spec.cluster_spec {
        let mut cluster = PhotonCluster::new(&cluster_name(job), spec.clone());
        cluster.metadata.namespace = job.namespace();
        cluster.metadata.owner_references = job.controller_owner_ref(&()).map(|o| vec![o]);
        cluster.metadata.labels = Some([("photon.dev/job".to_string(), job.name_any())].into());
        let applied = clusters
            .patch(
                &cluster_name(job),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&cluster),
            )
            .await?;
        return Ok(Some(applied));
    }
    let selector = job
        .spec
        .cluster_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let found = clusters
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    Ok(found.into_iter().next())
}

fn connect(
    head: &str,
    token: &str,
) -> Result<
    JobsClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, AttachToken>,
    >,
    String,
> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{head}"))
        .map_err(|e| format!("head address {head:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3));
    let attach = AttachToken::new(token).map_err(|e| format!("the cluster token: {e}"))?;
    Ok(JobsClient::with_interceptor(
        endpoint.connect_lazy(),
        attach,
    ))
}

/// Writes the job's status, then an event for what changed since the
/// status the reconcile started from.
async fn record(
    ctx: &Context,
    job: &PhotonJob,
    jobs: &Api<PhotonJob>,
    status: &PhotonJobStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({ "status": status });
    jobs.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    let before = job.status.clone().unwrap_or_default();
    if let Some(change) = change(&before, status) {
        let (warning, reason, note) = change;
        match warning {
            true => ctx.events.warning(job, reason, "Reconcile", note).await,
            false => ctx.events.normal(job, reason, "Reconcile", note).await,
        }
    }
    Ok(())
}

/// The event for a status change, if any: (is it a warning, reason, note).
fn change(
    before: &PhotonJobStatus,
    after: &PhotonJobStatus,
) -> Option<(bool, &'static str, String)> {
    let message = after.message.clone();
    if after.state != before.state {
        let state = after.state.as_deref().unwrap_or("Unknown");
        let reason = match state {
            "Pending" => "Pending",
            "ClusterStarting" => "ClusterStarting",
            "Running" => "Running",
            "Succeeded" => "Succeeded",
            "Stopped" => "Stopped",
            _ => "Failed",
        };
        let note = message.unwrap_or_else(|| match &after.job_id {
            Some(id) => format!("job {id} is {state} (attempt {})", after.attempts),
            None => format!("the job is {state}"),
        });
        return Some((matches!(reason, "Failed" | "Stopped"), reason, note));
    }
    if after.job_id != before.job_id
        && let Some(id) = &after.job_id
    {
        let note = format!(
            "submitted to the head as job {id} (attempt {})",
            after.attempts
        );
        return Some((false, "Submitted", note));
    }
    if after.message == before.message {
        return None;
    }
    let message = message?;
    let reason = if message.starts_with("DeadlineExceeded") {
        "DeadlineExceeded"
    } else if message.contains("submitting again") {
        "Retrying"
    } else if message.starts_with("the head refused") {
        "SubmitRefused"
    } else if message.starts_with("cannot reach the head") {
        "HeadUnreachable"
    } else {
        return Some((false, "Waiting", message));
    };
    Some((true, reason, message))
}

/// What the controller does after a failed job reconcile: say why (log and
/// event), retry soon.
pub fn job_error_policy(job: Arc<PhotonJob>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(job = %job.name_any(), %error, "job reconcile failed; retrying");
    let note = format!("{error}; retrying in 10 s");
    tokio::spawn(async move {
        ctx.events
            .warning(job.as_ref(), "ReconcileFailed", "Reconcile", note)
            .await;
    });
    Action::requeue(Duration::from_secs(10))
}
