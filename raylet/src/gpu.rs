//! GPU instances: discovery (cudarc, loaded dynamically so the default build
//! needs no CUDA) and fractional allocation.
//!
//! A request ≤ 1 GPU packs onto the instance with the least room that still
//! fits it (best fit), so quarter-GPU actors fill one GPU before opening the
//! next; a request > 1 must be whole and takes fully free instances.

use photon_proto::{Quantity, UNITS_PER_WHOLE};

/// A GPU found on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The id to put in `CUDA_VISIBLE_DEVICES` for a worker using it.
    pub visible_id: String,
    /// Device name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Device memory in bytes.
    pub memory_bytes: u64,
}

/// Finds the node's GPUs through the CUDA driver, if one is installed.
/// Honours `CUDA_VISIBLE_DEVICES` (the driver does; ids are mapped back to it).
pub fn discover() -> Result<Vec<GpuInfo>, String> {
    if !cuda_driver_present() {
        return Ok(Vec::new());
    }
    use cudarc::driver::result;
    result::init()
        .map_err(|err| format!("the CUDA driver is present but failed to initialise: {err}"))?;
    let count =
        result::device::get_count().map_err(|err| format!("cannot count CUDA devices: {err}"))?;
    let visible: Option<Vec<String>> = std::env::var("CUDA_VISIBLE_DEVICES").ok().map(|list| {
        list.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    (0..count)
        .map(|ordinal| {
            let device = result::device::get(ordinal)
                .map_err(|err| format!("cannot open CUDA device {ordinal}: {err}"))?;
            let name = result::device::get_name(device).unwrap_or_else(|_| "unknown GPU".into());
            // SAFETY: `device` was just returned by the driver for this ordinal.
            #[allow(unsafe_code)]
            let memory_bytes = unsafe { result::device::total_mem(device) }.unwrap_or(0) as u64;
            let visible_id = visible
                .as_ref()
                .and_then(|ids| ids.get(ordinal as usize).cloned())
                .unwrap_or_else(|| ordinal.to_string());
            Ok(GpuInfo {
                visible_id,
                name,
                memory_bytes,
            })
        })
        .collect()
}

/// True when `libcuda` can be loaded. Checked first: without it cudarc's
/// dynamically loaded calls panic.
pub fn cuda_driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    #[allow(unsafe_code)]
    unsafe {
        cudarc::driver::sys::is_culib_present()
    }
}

/// Which instances (and how much of each) a grant holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuGrant {
    /// `(instance index, amount)` pairs.
    pub parts: Vec<(usize, Quantity)>,
}

/// Why a GPU request cannot be granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuRequestError {
    /// More than one GPU but not a whole number.
    #[error("a request for {0} GPUs is invalid: requests above 1 GPU must be whole numbers")]
    NotWhole(Quantity),
    /// Valid, but does not fit now.
    #[error("no GPU instance has {request} free (free per instance: {free})")]
    NoRoom {
        /// The request.
        request: Quantity,
        /// Free amount of each instance, for the message.
        free: String,
    },
}

/// Free amount per GPU instance on this node.
#[derive(Debug, Clone)]
pub struct GpuPool {
    ids: Vec<String>,
    free: Vec<Quantity>,
}

impl GpuPool {
    /// A pool of whole, free instances with these `CUDA_VISIBLE_DEVICES` ids.
    pub fn new(ids: Vec<String>) -> Self {
        let free = vec![Quantity::whole(1); ids.len()];
        Self { ids, free }
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the node has no GPUs.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Total free amount.
    pub fn free_total(&self) -> Quantity {
        self.free.iter().fold(Quantity::ZERO, |sum, &q| sum + q)
    }

    /// Grants `request` GPUs.
    pub fn allocate(&mut self, request: Quantity) -> Result<GpuGrant, GpuRequestError> {
        let one = Quantity::whole(1);
        if request > one && !request.is_whole() {
            return Err(GpuRequestError::NotWhole(request));
        }
        let parts = if request <= one {
            // Best fit: the fullest instance that still has room.
            self.free
                .iter()
                .enumerate()
                .filter(|(_, free)| **free >= request)
                .min_by_key(|(index, free)| (**free, *index))
                .map(|(index, _)| vec![(index, request)])
        } else {
            let wanted = (request.units() / UNITS_PER_WHOLE) as usize;
            let whole: Vec<usize> = (0..self.free.len())
                .filter(|&i| self.free[i] == one)
                .take(wanted)
                .collect();
            (whole.len() == wanted).then(|| whole.into_iter().map(|i| (i, one)).collect())
        };
        let parts = parts.ok_or_else(|| GpuRequestError::NoRoom {
            request,
            free: self
                .free
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        for &(index, amount) in &parts {
            self.free[index] = self.free[index] - amount;
        }
        Ok(GpuGrant { parts })
    }

    /// Returns a grant's GPUs.
    pub fn release(&mut self, grant: &GpuGrant) {
        for &(index, amount) in &grant.parts {
            self.free[index] = self.free[index] + amount;
            debug_assert!(self.free[index] <= Quantity::whole(1));
        }
    }

    /// The instances of `grant`, as a pool of their granted amounts (a
    /// placement group bundle's GPUs, which its tasks and actors share).
    pub fn sub_pool(&self, grant: &GpuGrant) -> GpuPool {
        GpuPool {
            ids: grant
                .parts
                .iter()
                .map(|&(index, _)| self.ids[index].clone())
                .collect(),
            free: grant.parts.iter().map(|&(_, amount)| amount).collect(),
        }
    }

    /// The `CUDA_VISIBLE_DEVICES` value for a worker holding `grant`.
    pub fn visible_devices(&self, grant: &GpuGrant) -> String {
        grant
            .parts
            .iter()
            .map(|&(index, _)| self.ids[index].as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gpus(n: usize) -> GpuPool {
        GpuPool::new((0..n).map(|i| i.to_string()).collect())
    }

    fn q(value: f64) -> Quantity {
        Quantity::from_f64("GPU", value).unwrap()
    }

    #[test]
    fn quarters_pack_four_per_gpu_before_opening_the_next() {
        let mut pool = gpus(2);
        let grants: Vec<GpuGrant> = (0..8).map(|_| pool.allocate(q(0.25)).unwrap()).collect();
        let devices: Vec<String> = grants.iter().map(|g| pool.visible_devices(g)).collect();
        assert_eq!(devices, ["0", "0", "0", "0", "1", "1", "1", "1"]);
        assert!(matches!(
            pool.allocate(q(0.25)),
            Err(GpuRequestError::NoRoom { .. })
        ));
    }

    #[test]
    fn third_half_gpu_on_one_gpu_waits_until_one_is_released() {
        let mut pool = gpus(1);
        let first = pool.allocate(q(0.5)).unwrap();
        let _second = pool.allocate(q(0.5)).unwrap();
        let err = pool.allocate(q(0.5)).unwrap_err().to_string();
        assert!(
            err.contains("no GPU instance has 0.5 free") && err.contains("free per instance: 0"),
            "{err}"
        );
        pool.release(&first);
        let again = pool.allocate(q(0.5)).unwrap();
        assert_eq!(pool.visible_devices(&again), "0");
    }

    #[test]
    fn whole_requests_take_free_instances_and_fractions_above_one_are_refused() {
        let mut pool = gpus(4);
        let _quarter = pool.allocate(q(0.25)).unwrap();
        let two = pool.allocate(q(2.0)).unwrap();
        assert_eq!(
            pool.visible_devices(&two),
            "1,2",
            "instance 0 is partly used"
        );
        assert!(pool.allocate(q(2.0)).is_err());
        assert_eq!(
            pool.allocate(q(1.5)).unwrap_err(),
            GpuRequestError::NotWhole(q(1.5))
        );
    }

    #[test]
    fn a_sub_pool_shares_out_only_the_granted_instances() {
        let mut pool = gpus(4);
        let _first = pool.allocate(q(1.0)).unwrap();
        let bundle = pool.allocate(q(2.0)).unwrap();
        let mut inside = pool.sub_pool(&bundle);
        assert_eq!(inside.free_total(), q(2.0));
        let a = inside.allocate(q(1.0)).unwrap();
        let b = inside.allocate(q(0.5)).unwrap();
        assert_eq!(inside.visible_devices(&a), "1");
        assert_eq!(inside.visible_devices(&b), "2");
        assert!(inside.allocate(q(1.0)).is_err(), "only half a GPU is left");
    }

    #[test]
    fn visible_ids_come_from_the_nodes_own_list() {
        let mut pool = GpuPool::new(vec!["3".into(), "7".into()]);
        let grant = pool.allocate(q(2.0)).unwrap();
        assert_eq!(pool.visible_devices(&grant), "3,7");
    }

    #[test]
    fn discovery_without_a_cuda_driver_finds_nothing() {
        if !cuda_driver_present() {
            assert_eq!(discover().unwrap(), Vec::new());
        }
    }

    proptest! {
        /// Random grants and releases: no instance goes below 0 or above 1, the
        /// free total matches the grants held, and a fraction never opens a
        /// fresh instance while a partly used one has room.
        #[test]
        fn accounting_and_packing_hold(ops in proptest::collection::vec((any::<bool>(), 1usize..=12, any::<usize>()), 1..100)) {
            let mut pool = gpus(3);
            let mut held: Vec<(Quantity, GpuGrant)> = Vec::new();
            for (release, quarters_or_whole, pick) in ops {
                if release && !held.is_empty() {
                    let (_, grant) = held.swap_remove(pick % held.len());
                    pool.release(&grant);
                    continue;
                }
                let request = if quarters_or_whole <= 4 { q(quarters_or_whole as f64 * 0.25) } else { Quantity::whole((quarters_or_whole % 3 + 1) as i64) };
                let before = pool.free.clone();
                if let Ok(grant) = pool.allocate(request) {
                    if request < Quantity::whole(1) {
                        let used = grant.parts[0].0;
                        let partly_used_fit = before.iter().any(|&f| f < Quantity::whole(1) && f >= request);
                        prop_assert!(!partly_used_fit || before[used] < Quantity::whole(1), "opened a fresh GPU: {:?} for {}", before, request);
                    }
                    held.push((request, grant));
                }
                let held_total = held.iter().fold(Quantity::ZERO, |s, (r, _)| s + *r);
                prop_assert_eq!(pool.free_total() + held_total, Quantity::whole(3));
                prop_assert!(pool.free.iter().all(|&f| f >= Quantity::ZERO && f <= Quantity::whole(1)));
            }
        }
    }
}
