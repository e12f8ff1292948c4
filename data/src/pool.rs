//! An actor pool for one stage: actors that construct the stage's
//! functions once (a model loads once) and then take block after block.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use photon::{ActorOptions, Context, ObjectRef};

use crate::error::{Error, Result};
use crate::steps::{StageActorHandle, Step};

/// An idle actor above the pool's minimum goes after this long.
const IDLE: Duration = Duration::from_secs(2);

/// How a pool is sized and placed.
#[derive(Clone, Debug)]
pub(crate) struct PoolSpec {
    pub min: usize,
    pub max: usize,
    pub num_cpus: f64,
    pub num_gpus: f64,
    pub resources: Vec<(String, f64)>,
    pub max_concurrency: u32,
}

struct PoolActor {
    handle: StageActorHandle,
    in_flight: usize,
    /// The `constructed` call made when it was added, until it (or any
    /// call) answers: then the constructor has run.
    probe: Option<ObjectRef<bool>>,
    idle_since: Instant,
}

impl PoolActor {
    /// Its constructor ran.
    fn ready(&self) -> bool {
        self.probe.is_none()
    }
}

/// The actors of one stage.
pub(crate) struct Pool {
    spec: PoolSpec,
    steps: Vec<Step>,
    /// CPUs the stages feeding this one need, kept free for them.
    upstream_cpus: f64,
    /// The most actors the cluster can hold next to the upstream stages.
    limit: usize,
    actors: Vec<Option<PoolActor>>,
    /// Why the pool is smaller than asked, for the progress output.
    note: Option<String>,
}

impl Pool {
    pub(crate) fn new(spec: PoolSpec, steps: Vec<Step>, upstream_cpus: f64) -> Self {
        Self {
            limit: spec.max,
            spec,
            steps,
            upstream_cpus,
            actors: Vec::new(),
            note: None,
        }
    }

    /// Sizes the pool to the cluster and starts `min` actors, so they
    /// construct while the first blocks are read.
    pub(crate) fn start(&mut self, ctx: &Context) -> Result<()> {
        let nodes = ctx.cluster_nodes()?;
        let total = |name: &str| -> f64 {
            nodes
                .iter()
                .map(|n| n.total.get(name).copied().unwrap_or(0.0))
                .sum()
        };
        let cpus = total("CPU");
        let mut limit = self.spec.max;
        if self.spec.num_cpus > 0.0 {
            // Never take the CPUs the stages that feed the pool need (Ray
            // Data hangs exactly so: its read tasks wait behind actors
            // holding every CPU).
            let room = ((cpus - self.upstream_cpus) / self.spec.num_cpus + 1e-9).floor();
            if room < 1.0 {
                return Err(Error::Invalid(format!(
                    "the actor pool needs {} CPUs per actor, but the cluster has {cpus} CPUs \
                     and the stages feeding the pool need {}: lower num_cpus or add nodes",
                    self.spec.num_cpus, self.upstream_cpus
                )));
            }
            limit = limit.min(room as usize);
        }
        let mut wanted = vec![("GPU".to_string(), self.spec.num_gpus)];
        wanted.extend(self.spec.resources.iter().cloned());
        for (name, amount) in wanted.into_iter().filter(|(_, amount)| *amount > 0.0) {
            let have = total(&name);
            let room = (have / amount + 1e-9).floor();
            if room < 1.0 {
                return Err(Error::Invalid(format!(
                    "the actor pool needs {amount} {name} per actor, but the cluster has \
                     {have}: start raylets with more (--num-gpus, --resources) or ask for less"
                )));
            }
            if (room as usize) < limit {
                limit = room as usize;
            }
        }
        if limit < self.spec.max {
            let note = format!(
                "pool capped at {limit} of {} actors by the cluster's resources \
                 ({} CPUs stay free for the stages feeding it)",
                self.spec.max, self.upstream_cpus
            );
            tracing::warn!("{note}");
            self.note = Some(note);
        }
        self.limit = limit.max(1);
        for _ in 0..self.spec.min.min(self.limit) {
            self.add(ctx)?;
        }
        Ok(())
    }

    fn add(&mut self, ctx: &Context) -> Result<()> {
        let mut options = ActorOptions::new()
            .num_cpus(self.spec.num_cpus)
            .num_gpus(self.spec.num_gpus)
            .max_concurrency(self.spec.max_concurrency.max(1));
        for (name, amount) in &self.spec.resources {
            options = options.resource(name, *amount);
        }
        let handle = StageActorHandle::new_with(ctx, options, self.steps.clone())?;
        let probe = Some(handle.constructed());
        self.actors.push(Some(PoolActor {
            handle,
            in_flight: 0,
            probe,
            idle_since: Instant::now(),
        }));
        Ok(())
    }

    fn live(&self) -> impl Iterator<Item = (usize, &PoolActor)> {
        self.actors
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().map(|a| (i, a)))
    }

    /// Marks actors whose `constructed` probe answered as ready (the
    /// executor asks once per loop, for the next dispatch and the progress
    /// line). A failed probe counts too: the
    /// actor's next call then fails the same way, and that failure is
    /// handled as any call's is.
    pub(crate) fn note_constructed(&mut self, ctx: &Context) {
        for actor in self.actors.iter_mut().flatten() {
            let Some(probe) = &actor.probe else { continue };
            let (answered, _) = ctx.wait(std::slice::from_ref(probe), 1, Some(Duration::ZERO));
            if !answered.is_empty() {
                actor.probe = None;
            }
        }
    }

    /// Sends `block` to the least busy actor with room (each holds its
    /// running calls plus one queued, so it never waits for the driver).
    /// An actor still constructing gets work only when no actor is ready:
    /// it may wait long for resources, and its calls with it.
    pub(crate) fn call(
        &mut self,
        block: &ObjectRef<RecordBatch>,
        part: String,
    ) -> Option<(usize, ObjectRef<RecordBatch>)> {
        let per_actor = self.spec.max_concurrency.max(1) as usize + 1;
        let any_ready = self.live().any(|(_, a)| a.ready());
        let (index, _) = self
            .live()
            .filter(|(_, a)| a.in_flight < per_actor && (a.ready() || !any_ready))
            .min_by_key(|(_, a)| a.in_flight)?;
        let actor = self.actors[index].as_mut().expect("live");
        actor.in_flight += 1;
        Some((index, actor.handle.apply(block, part)))
    }

    /// Blocks worth having on the way to this pool: one more for every call
    /// slot of its largest size. More would only wait in the object store.
    pub(crate) fn backlog_limit(&self) -> usize {
        self.limit.max(1) * (self.spec.max_concurrency.max(1) as usize + 1)
    }

    /// Adds an actor when blocks wait, every actor is busy, none is still
    /// constructing, and the pool may grow.
    pub(crate) fn grow_if_needed(&mut self, ctx: &Context, queued: usize) -> Result<()> {
        let live = self.live().count();
        let constructing = self.live().any(|(_, a)| !a.ready());
        if queued > 0 && live < self.limit && !constructing {
            self.add(ctx)?;
        }
        Ok(())
    }

    /// A call on `index` came back.
    pub(crate) fn done(&mut self, index: usize, _took: Duration) {
        if let Some(actor) = self.actors[index].as_mut() {
            actor.in_flight = actor.in_flight.saturating_sub(1);
            // Its constructor ran: the probe need not be watched any more.
            actor.probe = None;
            if actor.in_flight == 0 {
                actor.idle_since = Instant::now();
            }
        }
    }

    /// The actor at `index` died: drop it (a new one replaces it on demand).
    pub(crate) fn lost(&mut self, index: usize, ctx: &Context) {
        if let Some(actor) = self.actors[index].take() {
            let _ = ctx.kill(actor.handle.handle());
        }
        if self.live().count() < self.spec.min.min(self.limit) {
            let _ = self.add(ctx);
        }
    }

    /// Stops actors idle for a while, down to the minimum.
    pub(crate) fn shrink_idle(&mut self, ctx: &Context) {
        let floor = self.spec.min.max(1);
        let idle: Vec<usize> = self
            .live()
            .filter(|(_, a)| a.in_flight == 0 && a.ready() && a.idle_since.elapsed() >= IDLE)
            .map(|(i, _)| i)
            .collect();
        for index in idle {
            if self.live().count() <= floor {
                break;
            }
            if let Some(actor) = self.actors[index].take() {
                let _ = ctx.kill(actor.handle.handle());
            }
        }
    }

    /// Stops every actor.
    pub(crate) fn shutdown(&mut self, ctx: &Context) {
        for actor in self.actors.iter_mut().filter_map(Option::take) {
            let _ = ctx.kill(actor.handle.handle());
        }
    }

    /// "2 active, 1 constructing (max 3)", and why it is capped.
    pub(crate) fn describe(&self) -> String {
        let ready = self.live().filter(|(_, a)| a.ready()).count();
        let constructing = self.live().count() - ready;
        let mut text = format!(
            "actors {ready} active, {constructing} constructing ({}..={})",
            self.spec.min, self.limit
        );
        if let Some(note) = &self.note {
            text.push_str("; ");
            text.push_str(note);
        }
        text
    }
}
