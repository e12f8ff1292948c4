//! Per-function and per-actor options: resources, retries, restarts, names.
//! The macros build the defaults from their attributes; callers override
//! them per call with `f::remote_with(ctx, f::options().num_gpus(1.0), …)`.

use std::collections::BTreeMap;

use photon_proto::{PlacementGroupId, Quantity, ResourceSet, names};

use crate::error::{Error, Result};
use crate::placement_group::PlacementGroup;

/// Resource requests as the user wrote them, checked when used.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Resources(BTreeMap<String, f64>);

impl Resources {
    pub(crate) fn set(&mut self, name: &str, amount: f64) {
        self.0.insert(name.to_string(), amount);
    }

    /// Fixed-point resources; GPU requests above 1 must be whole.
    pub(crate) fn to_set(&self) -> Result<ResourceSet> {
        let mut set = ResourceSet::new();
        for (name, amount) in &self.0 {
            let quantity =
                Quantity::from_f64(name, *amount).map_err(|e| Error::Config(e.to_string()))?;
            if name == names::GPU && *amount > 1.0 && amount.fract() != 0.0 {
                return Err(Error::Config(format!(
                    "num_gpus = {amount}: requests above 1 GPU must be whole numbers"
                )));
            }
            set.set(name.clone(), quantity);
        }
        Ok(set)
    }
}

/// Options of one remote function call.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    pub(crate) resources: Resources,
    pub(crate) max_retries: u32,
    pub(crate) retry_exceptions: bool,
    pub(crate) name: Option<String>,
    pub(crate) bundle: Option<BundleChoice>,
}

/// A placement group bundle to run in: the group and the bundle's index.
pub(crate) type BundleChoice = (PlacementGroupId, u32);

impl Default for TaskOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskOptions {
    /// One CPU, 3 retries on worker or node death, application errors not retried.
    pub fn new() -> Self {
        let mut resources = Resources::default();
        resources.set(names::CPU, 1.0);
        Self {
            resources,
            max_retries: 3,
            retry_exceptions: false,
            name: None,
            bundle: None,
        }
    }

    /// Runs the task in bundle `bundle` of `group`, from the resources the
    /// bundle reserved on its node (the task's own resource request must fit
    /// in the bundle).
    pub fn placement_group(mut self, group: &PlacementGroup, bundle: u32) -> Self {
        self.bundle = Some((group.id(), bundle));
        self
    }

    /// A name for this call, shown (with the function's) in its errors.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// CPUs the task holds while it runs (0 is allowed).
    pub fn num_cpus(mut self, cpus: f64) -> Self {
        self.resources.set(names::CPU, cpus);
        self
    }

    /// GPUs (fractions ≤ 1 share one GPU; above 1 must be whole).
    pub fn num_gpus(mut self, gpus: f64) -> Self {
        self.resources.set(names::GPU, gpus);
        self
    }

    /// A custom resource (as given to `photon start --resources`).
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.set(name, amount);
        self
    }

    /// How often the task is re-run after its worker or node dies.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Also retry when the function returns an error or panics.
    pub fn retry_exceptions(mut self, retry: bool) -> Self {
        self.retry_exceptions = retry;
        self
    }
}

/// Options of one actor method call. Resources are the actor's, not the
/// call's; how many values a method returns is part of its type
/// (`num_returns` on the method).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MethodOptions {
    pub(crate) name: Option<String>,
    pub(crate) max_retries: u32,
}

impl MethodOptions {
    /// No name, no retries (a call running when its actor's worker dies
    /// fails with `ActorDied`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A name for this call, shown (with the method's) in its errors.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How often the call is sent again when the actor's worker dies while
    /// it runs and the actor restarts (Ray's `max_task_retries`): for
    /// methods that are safe to run twice.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }
}

/// Options of an actor.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorOptions {
    pub(crate) resources: Resources,
    pub(crate) max_restarts: u32,
    pub(crate) max_concurrency: u32,
    pub(crate) name: Option<String>,
    pub(crate) detached: bool,
    pub(crate) bundle: Option<BundleChoice>,
}

impl Default for ActorOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ActorOptions {
    /// One CPU, no restarts, one call at a time, no name.
    pub fn new() -> Self {
        let mut resources = Resources::default();
        resources.set(names::CPU, 1.0);
        Self {
            resources,
            max_restarts: 0,
            max_concurrency: 1,
            name: None,
            detached: false,
            bundle: None,
        }
    }

    /// Runs the actor in bundle `bundle` of `group`, on the bundle's node and
    /// from its reserved resources (the actor's request must fit in it).
    pub fn placement_group(mut self, group: &PlacementGroup, bundle: u32) -> Self {
        self.bundle = Some((group.id(), bundle));
        self
    }

    /// CPUs the actor holds for its life.
    pub fn num_cpus(mut self, cpus: f64) -> Self {
        self.resources.set(names::CPU, cpus);
        self
    }

    /// GPUs (fractions ≤ 1 pack onto one GPU before opening another).
    pub fn num_gpus(mut self, gpus: f64) -> Self {
        self.resources.set(names::GPU, gpus);
        self
    }

    /// A custom resource.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.set(name, amount);
        self
    }

    /// How often the actor is restarted (its constructor run again) after
    /// its worker or node dies.
    pub fn max_restarts(mut self, restarts: u32) -> Self {
        self.max_restarts = restarts;
        self
    }

    /// Calls that may run at once (`&self` methods run concurrently, `&mut
    /// self` ones one at a time).
    pub fn max_concurrency(mut self, calls: u32) -> Self {
        self.max_concurrency = calls.max(1);
        self
    }

    /// A cluster-wide name, so other drivers can look the actor up.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Outlives the driver or job that creates it (Ray's `lifetime =
    /// "detached"`): a long-lived service other drivers find by its name
    /// (required), ended only by [`crate::Context::kill`]. Without this an
    /// actor ends with its job.
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }
}
