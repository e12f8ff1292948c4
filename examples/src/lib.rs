//! Examples of the Photon SDK, one binary each (`src/bin/`):
//!
//! - `tasks`: fan-out / fan-in of remote functions, with ObjectRefs as arguments.
//! - `actor`: a stateful actor, called in order, looked up by name, killed.
//! - `gpu_actors`: quarter-GPU actors packing onto GPUs (`--num-gpus` stand-ins
//!   on a machine without GPUs).
//!
//! Run one with `cargo run --release -p photon-examples --bin tasks`.
