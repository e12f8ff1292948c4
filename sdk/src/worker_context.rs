//! A worker's own context, for nested work: a remote function or actor
//! method that submits tasks, creates actors or puts objects does so as an
//! owner in its own right (Ray's ownership model). The worker keeps the
//! objects' table and lineage, retries and rebuilds its tasks, and frees
//! what it made when the last reference drops, exactly as a driver does;
//! its ids descend from a root task of its own (`TaskId::for_owner`) under
//! an owner tag the head gives it, so they never collide with the driver's
//! or another worker's, and when this worker ends (its raylet tells the
//! head) everything it owned ends with it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use photon_proto::v1::{RegisterOwnerRequest, WatchOwnerRequest};
use photon_proto::{JobId, NodeId, TaskId, WorkerId};
use photon_raylet::packages::PROGRAM_PACKAGE_ENV;
use photon_raylet::worker_pool::env;

use crate::clients;
use crate::context::{Context, Core, CoreParts, JOB_ID_ENV, PROGRAM_ENV};
use crate::error::{Error, Result};
use crate::packages::WORKING_DIR_PACKAGE_ENV;

/// The worker's runtime, recorded when the worker starts serving, so the
/// context can be made from any thread of the process.
static RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();
/// The context, made on first use.
static CONTEXT: Mutex<Option<Context>> = Mutex::new(None);
/// Its core once made, for checks on every call that must not lock.
static MADE: OnceLock<std::sync::Arc<Core>> = OnceLock::new();

/// Records the worker's runtime (once, when it starts serving).
pub(crate) fn set_runtime(runtime: tokio::runtime::Handle) {
    let _ = RUNTIME.set(runtime);
}

/// This worker's context, made on first use.
pub(crate) fn get() -> Result<Context> {
    // Not waiting here: a thread making the context holds the lock.
    if let Ok(context) = CONTEXT.try_lock()
        && let Some(context) = context.as_ref()
    {
        return Ok(context.clone());
    }
    let runtime = RUNTIME.get().ok_or_else(|| {
        Error::Config("this worker has not started yet: call Context::current from a task".into())
    })?;
    // Made off the runtime's threads (the owner's registration is a round
    // trip to the head and the raylet), and so is any wait for the lock
    // meanwhile: callers parked on it must not hold the threads that drive
    // the registration.
    crate::run_blocking(|| {
        let mut context = CONTEXT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(context) = context.as_ref() {
            return Ok(context.clone());
        }
        let parts = runtime.block_on(parts())?;
        let _entered = runtime.enter();
        let made = Context::for_worker(Core::start(parts));
        let _ = MADE.set(made.core.clone());
        *context = Some(made.clone());
        Ok(made)
    })
}

/// This worker's core if something made its context already.
pub(crate) fn made() -> Option<&'static std::sync::Arc<Core>> {
    MADE.get()
}

pub(crate) fn var(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| {
        Error::Config(format!(
            "{name} is not set: worker processes are started by a raylet"
        ))
    })
}

pub(crate) fn parsed<T: std::str::FromStr>(name: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    var(name)?
        .parse()
        .map_err(|e| Error::Config(format!("{name}: {e}")))
}

/// The worker's place in the cluster, from the environment its raylet and
/// its driver gave it, and its owner tag, from the head (its raylet watches
/// it from now on, to report its end).
async fn parts() -> Result<CoreParts> {
    let token = var(env::TOKEN)?;
    let head_address = var(env::HEAD_ADDRESS)?;
    let raylet_address = var(env::RAYLET_ADDRESS)?;
    let node_id: NodeId = parsed(env::NODE_ID)?;
    let worker: WorkerId = parsed(env::WORKER_ID)?;
    let job: JobId = parsed(JOB_ID_ENV)?;
    // Tasks of its own run the driver's program, under the driver's
    // environment for workers, so they share the job's idle workers.
    let program = match std::env::var(PROGRAM_ENV) {
        Ok(program) => program,
        Err(_) => std::env::current_exe()
            .map_err(|e| Error::Config(format!("cannot find this program's path: {e}")))?
            .display()
            .to_string(),
    };
    let worker_env: HashMap<String, String> = [
        JOB_ID_ENV,
        PROGRAM_ENV,
        PROGRAM_PACKAGE_ENV,
        WORKING_DIR_PACKAGE_ENV,
    ]
    .into_iter()
    .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
    .collect();
    let head = clients::head(&head_address, &token)?;
    let raylet = clients::raylet(&raylet_address, &token)?;
    let owner_tag = head
        .clone()
        .register_owner(RegisterOwnerRequest {
            job_id: job.to_vec(),
            node_id: node_id.to_vec(),
            worker_id: worker.to_vec(),
        })
        .await
        .map_err(|s| Error::cluster("the head gave this worker no owner tag", &s))?
        .into_inner()
        .owner_tag;
    raylet
        .clone()
        .watch_owner(WatchOwnerRequest {
            worker_id: worker.to_vec(),
            job_id: job.to_vec(),
            owner_tag,
        })
        .await
        .map_err(|s| Error::cluster("the raylet cannot watch this worker as an owner", &s))?;
    Ok(CoreParts {
        head,
        raylet,
        token,
        raylet_address,
        node_id,
        program,
        worker_env,
        max_in_flight: None,
        root_task: TaskId::for_owner(job, owner_tag),
        worker: Some(worker),
    })
}
