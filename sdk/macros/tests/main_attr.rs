//! `#[photon::main]` under `#[tokio::main]`: tokio turns the `async fn main` into a plain one
//! first, then `worker_entry` is inserted before the runtime starts.

extern crate self as photon;

#[path = "support/mock.rs"]
mod mock;
pub use mock::*;

#[tokio::main(flavor = "current_thread")]
#[photon::main]
async fn main() {
    let called_first = mock::worker_entry_called();
    tokio::task::yield_now().await;
    // libtest-mimic speaks the test-harness protocol nextest expects.
    let args = libtest_mimic::Arguments::from_args();
    let trial = libtest_mimic::Trial::test("worker_entry_runs_before_main_body", move || {
        if called_first {
            Ok(())
        } else {
            Err("worker_entry did not run first".into())
        }
    });
    libtest_mimic::run(&args, vec![trial]).exit();
}
