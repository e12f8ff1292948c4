//! The node's total resources: detected CPUs, memory and GPUs, overridden or
//! extended by flags.

use std::collections::BTreeMap;

use photon_proto::{Quantity, ResourceSet, names};

use crate::gpu::{self, GpuInfo};

/// What the operator asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct ResourceOverrides {
    /// `--num-cpus`.
    pub num_cpus: Option<f64>,
    /// `--num-gpus`: skips discovery (tests use it on machines without GPUs).
    pub num_gpus: Option<u32>,
    /// `--memory` in bytes.
    pub memory: Option<u64>,
    /// `--resources '{"name": amount}'`.
    pub custom: BTreeMap<String, f64>,
}

impl ResourceOverrides {
    /// Checks the flags without detecting anything, so a bad flag fails
    /// before any process starts.
    pub fn validate(&self) -> Result<(), ResourceError> {
        if let Some(cpus) = self.num_cpus {
            Quantity::from_f64(names::CPU, cpus)?;
        }
        for (name, &amount) in &self.custom {
            if [names::CPU, names::GPU, names::MEMORY, names::GPU_MEMORY].contains(&name.as_str()) {
                return Err(ResourceError::BuiltIn(name.clone()));
            }
            Quantity::from_f64(name, amount)?;
        }
        Ok(())
    }
}

/// Error in the node's resource configuration.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    /// A flag value is not a valid amount.
    #[error(transparent)]
    Invalid(#[from] photon_proto::InvalidQuantity),
    /// A custom resource uses a built-in name.
    #[error(
        "custom resource {0:?} is a built-in name: use --num-cpus, --num-gpus or --memory for it"
    )]
    BuiltIn(String),
    /// GPU discovery failed.
    #[error("GPU discovery failed: {0}; pass --num-gpus N to set the count yourself")]
    Gpu(String),
}

/// The node's resources and its GPUs.
#[derive(Debug, Clone)]
pub struct NodeResources {
    /// Totals by name.
    pub total: ResourceSet,
    /// `CUDA_VISIBLE_DEVICES` ids of the node's GPU instances.
    pub gpu_ids: Vec<String>,
    /// What discovery found (empty with `--num-gpus`).
    pub gpus: Vec<GpuInfo>,
}

/// Detects what the machine has and applies `overrides`.
pub fn detect(overrides: &ResourceOverrides) -> Result<NodeResources, ResourceError> {
    overrides.validate()?;
    let cpus = match overrides.num_cpus {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
    };
    let memory = overrides
        .memory
        .unwrap_or_else(photon_object_store::physical_memory);
    let (gpu_ids, gpus) = match overrides.num_gpus {
        Some(n) => (
            (0..n).map(|i| i.to_string()).collect::<Vec<_>>(),
            Vec::new(),
        ),
        None => {
            let found = gpu::discover().map_err(ResourceError::Gpu)?;
            (found.iter().map(|g| g.visible_id.clone()).collect(), found)
        }
    };
    let mut total = ResourceSet::new();
    total.set(names::CPU, Quantity::from_f64(names::CPU, cpus)?);
    total.set(names::MEMORY, Quantity::whole(memory as i64));
    total.set(names::GPU, Quantity::whole(gpu_ids.len() as i64));
    let gpu_memory: u64 = gpus.iter().map(|g| g.memory_bytes).sum();
    if gpu_memory > 0 {
        total.set(names::GPU_MEMORY, Quantity::whole(gpu_memory as i64));
    }
    for (name, &amount) in &overrides.custom {
        total.set(name.clone(), Quantity::from_f64(name, amount)?);
    }
    Ok(NodeResources {
        total,
        gpu_ids,
        gpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_detection() {
        let overrides = ResourceOverrides {
            num_cpus: Some(3.0),
            num_gpus: Some(2),
            memory: Some(1 << 30),
            custom: [("accel".to_string(), 0.5)].into(),
        };
        let node = detect(&overrides).unwrap();
        assert_eq!(node.total.get("CPU"), Quantity::whole(3));
        assert_eq!(node.total.get("GPU"), Quantity::whole(2));
        assert_eq!(node.total.get("accel"), Quantity::from_units(5_000));
        assert_eq!(node.gpu_ids, ["0", "1"]);
    }

    #[test]
    fn built_in_names_and_bad_amounts_are_refused() {
        let built_in = ResourceOverrides {
            custom: [("GPU".to_string(), 1.0)].into(),
            ..Default::default()
        };
        assert!(
            detect(&built_in)
                .unwrap_err()
                .to_string()
                .contains("--num-gpus")
        );
        let negative = ResourceOverrides {
            custom: [("x".to_string(), -2.0)].into(),
            ..Default::default()
        };
        assert!(
            detect(&negative)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
    }
}
