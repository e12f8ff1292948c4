//! Placement groups from the caller's side (Ray's `placement_group`):
//! bundles of resources the head reserves together, on nodes its strategy
//! picks, so that tasks and actors scheduled into them (`TaskOptions::
//! placement_group`, `ActorOptions::placement_group`) run together, e.g. the
//! GPUs of one model.

use std::sync::Arc;
use std::time::{Duration, Instant};

use photon_proto::v1::{
    self, GetPlacementGroupRequest, PlacementGroupRecord, PlacementGroupSpec,
    RemovePlacementGroupRequest,
};
use photon_proto::{PlacementGroupId, names};
use tonic::Code;

use crate::context::Core;
use crate::error::{Error, Result};
use crate::options::Resources;

/// How often a caller asks the head while a group is pending: at first, and
/// at most (the pause doubles in between).
const POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_secs(1);

/// How a group's bundles spread over nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlacementStrategy {
    /// As few nodes as fit them (one if any can).
    #[default]
    Pack,
    /// Each bundle on a different node where possible.
    Spread,
    /// All bundles on one node, or the group waits.
    StrictPack,
    /// Each bundle on a node of its own, or the group waits.
    StrictSpread,
}

impl PlacementStrategy {
    fn to_proto(self) -> v1::PlacementStrategy {
        match self {
            Self::Pack => v1::PlacementStrategy::Pack,
            Self::Spread => v1::PlacementStrategy::Spread,
            Self::StrictPack => v1::PlacementStrategy::StrictPack,
            Self::StrictSpread => v1::PlacementStrategy::StrictSpread,
        }
    }
}

/// Resources reserved together on one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bundle {
    resources: Resources,
}

impl Bundle {
    /// An empty bundle; give it resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// CPUs.
    pub fn cpus(mut self, cpus: f64) -> Self {
        self.resources.set(names::CPU, cpus);
        self
    }

    /// GPUs (fractions ≤ 1 share one GPU; above 1 must be whole).
    pub fn gpus(mut self, gpus: f64) -> Self {
        self.resources.set(names::GPU, gpus);
        self
    }

    /// A custom resource.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.set(name, amount);
        self
    }
}

/// Where a group stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementGroupState {
    /// Waiting for room; the reason says for what.
    Pending(String),
    /// Every bundle reserved: the raylet address of each bundle's node.
    Created(Vec<String>),
    /// Removed (the reason says why); what ran in it ended.
    Removed(String),
}

/// A placement group this program made or was given. Cheap to clone; it
/// stays until removed or its job ends.
#[derive(Clone)]
pub struct PlacementGroup {
    id: PlacementGroupId,
    bundles: u32,
    core: Arc<Core>,
}

impl std::fmt::Debug for PlacementGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlacementGroup({}, {} bundles)", self.id, self.bundles)
    }
}

impl PlacementGroup {
    /// Asks the head to reserve `bundles` with `strategy`; returns at once
    /// (the group may be pending: see [`PlacementGroup::ready`]).
    pub(crate) async fn create(
        core: Arc<Core>,
        name: &str,
        bundles: Vec<Bundle>,
        strategy: PlacementStrategy,
    ) -> Result<Self> {
        let id = PlacementGroupId::random();
        let count = bundles.len() as u32;
        let bundles = bundles
            .iter()
            .map(|b| {
                Ok(v1::Bundle {
                    resources: b.resources.to_set()?.to_proto(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let spec = PlacementGroupSpec {
            group_id: id.to_vec(),
            name: name.to_string(),
            bundles,
            strategy: strategy.to_proto() as i32,
            job_id: core.job_id().to_vec(),
        };
        core.head
            .clone()
            .create_placement_group(spec)
            .await
            .map_err(|status| match status.code() {
                Code::InvalidArgument => Error::Config(status.message().to_string()),
                _ => Error::cluster("cannot create a placement group", &status),
            })?;
        Ok(Self {
            id,
            bundles: count,
            core,
        })
    }

    /// The group's id.
    pub fn id(&self) -> PlacementGroupId {
        self.id
    }

    /// How many bundles it has.
    pub fn bundle_count(&self) -> u32 {
        self.bundles
    }

    /// Where it stands now.
    pub fn state(&self) -> Result<PlacementGroupState> {
        self.core.runtime.block_on(group_state(&self.core, self.id))
    }

    /// Waits until every bundle is reserved, at most `timeout`. A group that
    /// cannot be placed in that time is an error saying why it waits.
    pub fn ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.state()? {
                PlacementGroupState::Created(_) => return Ok(()),
                PlacementGroupState::Removed(why) => {
                    return Err(Error::Unschedulable {
                        what: format!("placement group {}", self.id),
                        why: format!("it was removed: {why}"),
                    });
                }
                PlacementGroupState::Pending(why) if Instant::now() >= deadline => {
                    return Err(Error::Unschedulable {
                        what: format!("placement group {}", self.id),
                        why: format!("still pending after {timeout:?}: {why}"),
                    });
                }
                PlacementGroupState::Pending(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// Removes the group: its bundles go back to their nodes, and the tasks
    /// and actors running in them end.
    pub fn remove(&self) -> Result<()> {
        let mut head = self.core.head.clone();
        self.core
            .runtime
            .block_on(head.remove_placement_group(RemovePlacementGroupRequest {
                group_id: self.id.to_vec(),
            }))
            .map_err(|status| {
                Error::cluster(
                    format!("cannot remove placement group {}", self.id),
                    &status,
                )
            })?;
        Ok(())
    }
}

async fn group_record(core: &Core, id: PlacementGroupId) -> Result<PlacementGroupRecord> {
    core.head
        .clone()
        .get_placement_group(GetPlacementGroupRequest {
            group_id: id.to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| match status.code() {
            Code::NotFound => Error::Unschedulable {
                what: format!("placement group {id}"),
                why: status.message().to_string(),
            },
            _ => Error::cluster(format!("cannot look up placement group {id}"), &status),
        })
}

async fn group_state(core: &Core, id: PlacementGroupId) -> Result<PlacementGroupState> {
    let record = group_record(core, id).await?;
    Ok(
        match v1::PlacementGroupState::try_from(record.state)
            .unwrap_or(v1::PlacementGroupState::Unspecified)
        {
            v1::PlacementGroupState::Created => {
                PlacementGroupState::Created(record.bundle_addresses)
            }
            v1::PlacementGroupState::Removed => PlacementGroupState::Removed(record.reason),
            _ => PlacementGroupState::Pending(record.reason),
        },
    )
}

/// The raylet of bundle `index`'s node, once that bundle is placed
/// (waiting, with a growing pause, while it is not): where a task in that
/// bundle asks for its lease.
pub(crate) async fn bundle_raylet(core: &Core, id: PlacementGroupId, index: u32) -> Result<String> {
    let mut pause = POLL;
    let mut said = false;
    loop {
        let record = group_record(core, id).await?;
        if record.state == v1::PlacementGroupState::Removed as i32 {
            return Err(Error::Unschedulable {
                what: "a task".into(),
                why: format!("its placement group {id} was removed: {}", record.reason),
            });
        }
        let bundles = record.spec.as_ref().map_or(0, |s| s.bundles.len());
        if index as usize >= bundles {
            return Err(Error::Unschedulable {
                what: "a task".into(),
                why: format!(
                    "placement group {id} has {bundles} bundle(s); there is no bundle {index}"
                ),
            });
        }
        match record.bundle_addresses.get(index as usize) {
            Some(address) if !address.is_empty() => return Ok(address.clone()),
            _ => {
                if !said {
                    tracing::debug!(group = %id, bundle = index, reason = %record.reason, "waiting for a placement group bundle");
                    said = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_POLL);
            }
        }
    }
}
