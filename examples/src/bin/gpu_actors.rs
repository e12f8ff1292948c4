//! Fractional-GPU actors: eight actors asking for a quarter of a GPU each
//! pack four to a GPU (best fit), and each sees only its own GPU through
//! `CUDA_VISIBLE_DEVICES`. On a machine without GPUs the embedded cluster
//! pretends to have two (`Config::num_gpus`, like `photon start --num-gpus 2`).
//!
//! `cargo run --release -p photon-examples --bin gpu_actors`

use std::collections::BTreeMap;

use photon::{Config, ObjectRef};

/// A model replica that would load weights onto its GPU.
pub struct Replica {
    gpu: String,
}

#[photon::actor(num_gpus = 0.25, num_cpus = 0)]
impl Replica {
    /// Starts on the GPU the raylet granted (only that one is visible).
    pub fn start() -> Self {
        Replica {
            gpu: std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default(),
        }
    }

    /// Which GPU this replica sees.
    pub fn gpu(&self) -> String {
        self.gpu.clone()
    }
}

#[photon::main]
fn main() -> photon::Result<()> {
    let ctx = photon::init(Config {
        num_gpus: Some(2),
        ..Config::default()
    })?;
    let replicas: Vec<ReplicaHandle> = (0..8)
        .map(|_| ReplicaHandle::start(&ctx))
        .collect::<photon::Result<_>>()?;
    let gpus: Vec<ObjectRef<String>> = replicas.iter().map(ReplicaHandle::gpu).collect();
    let mut per_gpu: BTreeMap<String, usize> = BTreeMap::new();
    for gpu in ctx.get_all(&gpus)? {
        *per_gpu.entry(gpu).or_default() += 1;
    }
    for (gpu, count) in &per_gpu {
        println!("CUDA_VISIBLE_DEVICES={gpu}: {count} replicas");
    }
    Ok(())
}
