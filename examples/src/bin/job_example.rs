//! A job to submit to a running cluster: its driver, its task workers and
//! its actor all print, so `photon job logs` shows each (worker lines
//! prefixed with their actor class or `worker`).
//!
//! ```text
//! photon start --head
//! photon job submit -- target/release/job_example            # succeeds
//! photon job submit -- target/release/job_example --fail 3    # fails with exit code 3
//! photon job submit --no-wait -- target/release/job_example --hold 600
//! photon job submit --working-dir data -- target/release/job_example --read notes.txt
//! ```

use std::time::Duration;

use photon::{Config, ObjectRef};

/// Squares a number in a worker process, saying so on its stdout.
#[photon::remote(num_cpus = 0.5)]
fn square(x: u64) -> u64 {
    println!("squaring {x}");
    x * x
}

/// Reads `path` in the worker's directory (the job's working directory,
/// unpacked on the worker's node).
#[photon::remote(num_cpus = 0.5)]
fn read_file(path: String) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| format!("cannot read {path}: {e}"))
}

/// Keeps a running total in its own worker process.
pub struct Tally {
    total: u64,
}

#[photon::actor(num_cpus = 0)]
impl Tally {
    /// A tally at zero.
    pub fn open() -> Self {
        println!("tally opened");
        Tally { total: 0 }
    }

    /// Adds `value`; returns the new total.
    pub fn add(&mut self, value: u64) -> u64 {
        self.total += value;
        eprintln!("tally now {}", self.total);
        self.total
    }
}

/// `--fail CODE`: exit with CODE after the work; `--hold SECS`: keep the
/// actor and a task running that long first (for `photon job stop`);
/// `--read FILE`: a task reads FILE where it runs.
fn flag<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

#[photon::main]
fn main() -> photon::Result<()> {
    let ctx = photon::init(Config::default())?;
    println!(
        "driver: job {:?} started",
        std::env::var("PHOTON_JOB_ID").ok()
    );
    let tally = TallyHandle::open(&ctx)?;
    let squares: Vec<ObjectRef<u64>> = (1..=4u64).map(|x| square::remote(&ctx, x)).collect();
    let mut total = 0;
    for square in ctx.get_all(&squares)? {
        total = ctx.get(&tally.add(square))?;
    }
    println!("driver: sum of squares 1..=4 is {total}");
    if let Some(path) = flag::<String>("--read") {
        let text = ctx.get(&read_file::remote(&ctx, path.clone()))?;
        println!("driver: a worker read {path}: {}", text.trim_end());
    }
    if let Some(seconds) = flag::<u64>("--hold") {
        println!("driver: holding for {seconds} s");
        std::thread::sleep(Duration::from_secs(seconds));
    }
    if let Some(code) = flag::<u64>("--fail") {
        eprintln!("driver: failing on purpose with exit code {code}");
        std::process::exit(code as i32);
    }
    Ok(())
}
