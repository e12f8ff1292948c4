//! `#[photon::main]` under `#[tokio::main]`: tokio turns the `async fn main` into a plain one
//! first, then `worker_entry` is inserted before the runtime starts.

extern crate self as photon;

#[path = "support/mock.rs"]
mod mock;
pub use mock::*;

#[tokio::main(flavor = "current_thread")]
#[photon::main]
async fn main() {
    assert!(
        mock::worker_entry_called(),
        "worker_entry did not run first"
    );
    tokio::task::yield_now().await;
    println!("main_attr: ok");
}
