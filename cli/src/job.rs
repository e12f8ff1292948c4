//! `photon job`: submit a program to a running cluster, follow its logs,
//! see its status, stop it, list and delete jobs.
//!
//! The program (when it is a file) and the working directory are uploaded to
//! the head once, by content hash; a supervisor on the head node runs the
//! program as the job's driver with `PHOTON_ADDRESS` set.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;
use clap::{Args, Subcommand};
use photon_proto::v1::{
    JobLogsRequest, JobRecord, JobRequest, JobState, ListJobsRequest, StopJobRequest,
    SubmitJobRequest,
};
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::connect::{Head, HeadArgs};

/// `photon job` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Run a program on the cluster as a job's driver: `photon job submit -- ./my-job --flag`.
    Submit(SubmitArgs),
    /// A job's state, exit code and, if it failed, its last output lines.
    Status {
        /// The job's id (`photon job list` shows them).
        id: String,
        #[command(flatten)]
        head: HeadArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A job's output: its driver's and its workers' (prefixed with their actor or worker).
    Logs {
        /// The job's id.
        id: String,
        /// Keep printing new output until the job ends.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        head: HeadArgs,
    },
    /// Stop a job: SIGTERM to its driver, SIGKILL after the grace period;
    /// its actors and workers end with it.
    Stop {
        /// The job's id.
        id: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 5.0)]
        grace_period: f64,
        /// Return at once instead of waiting until the job has ended.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        head: HeadArgs,
    },
    /// Delete an ended job: its record, log, directory and packages no
    /// other job uses (the head also deletes old jobs by itself: see
    /// `photon start --job-retention-count`).
    Delete {
        /// The job's id.
        id: String,
        #[command(flatten)]
        head: HeadArgs,
    },
    /// Every job of the cluster, oldest first.
    List {
        #[command(flatten)]
        head: HeadArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `photon job submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    head: HeadArgs,
    /// A name for the job (default: the program's file name).
    #[arg(long)]
    name: Option<String>,
    /// A directory uploaded as the driver's working directory.
    #[arg(long, value_name = "DIR")]
    working_dir: Option<PathBuf>,
    /// Environment of the driver, KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Return once submitted instead of following the logs to the end.
    #[arg(long)]
    no_wait: bool,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    command: Vec<String>,
}

/// Runs `photon job …`; the exit code is the job's for a followed submit.
pub fn run(command: JobCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            JobCommand::Submit(args) => submit(args).await,
            JobCommand::Status { id, head, json } => {
                let head = Head::connect(&head).await?;
                let record = get(&head, &id).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&JobView::from(record))?);
                } else {
                    print_status(&record);
                }
                Ok(ExitCode::SUCCESS)
            }
            JobCommand::Logs { id, follow, head } => {
                let head = Head::connect(&head).await?;
                print_logs(&head, &id, follow).await?;
                Ok(ExitCode::SUCCESS)
            }
            JobCommand::Stop {
                id,
                grace_period,
                no_wait,
                head,
            } => stop(&Head::connect(&head).await?, &id, grace_period, no_wait).await,
            JobCommand::Delete { id, head } => {
                let head = Head::connect(&head).await?;
                let record = head
                    .jobs()
                    .delete_job(JobRequest { job_id: id.clone() })
                    .await
                    .map_err(|s| head.refused(s))?
                    .into_inner();
                eprintln!("deleted job {id} ({})", outcome(&record));
                Ok(ExitCode::SUCCESS)
            }
            JobCommand::List { head, json } => {
                let head = Head::connect(&head).await?;
                let jobs = head
                    .jobs()
                    .list_jobs(ListJobsRequest {})
                    .await
                    .map_err(|s| head.refused(s))?
                    .into_inner()
                    .jobs;
                if json {
                    let views: Vec<JobView> = jobs.into_iter().map(JobView::from).collect();
                    println!("{}", serde_json::to_string_pretty(&views)?);
                } else {
                    print_list(&jobs);
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// What the program of a submit is, as found on this machine.
enum Program {
    /// A file here: uploaded, and run from the upload.
    File(PathBuf),
    /// A file in the uploaded working directory: run from there.
    InWorkingDir(String),
    /// A command on the PATH (here and, it is assumed, on the head node).
    Command(String),
}

fn find_program(program: &str, working_dir: Option<&Path>) -> anyhow::Result<Program> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| -> anyhow::Result<()> {
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o111 == 0 {
            bail!(
                "program {} is not executable: run `chmod +x {}` first",
                path.display(),
                path.display()
            );
        }
        Ok(())
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        if !path.is_file() {
            bail!(
                "program {program} not found: no such file (give the path of a job binary, or a command on PATH)"
            );
        }
        executable(&path)?;
        return Ok(Program::File(path));
    }
    if let Some(dir) = working_dir
        && dir.join(program).is_file()
    {
        executable(&dir.join(program))?;
        return Ok(Program::InWorkingDir(format!("./{program}")));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false);
    if !on_path {
        bail!(
            "program {program:?} not found: not a command on PATH; give a path (e.g. ./{program}) to upload a file"
        );
    }
    Ok(Program::Command(program.to_string()))
}

fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
            _ => bail!("--env {pair:?} is not KEY=VALUE"),
        })
        .collect()
}

async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    // Everything that can be checked here is checked before anything is uploaded.
    let env = parse_env(&args.env)?;
    if let Some(dir) = &args.working_dir
        && !dir.is_dir()
    {
        bail!("--working-dir {}: no such directory", dir.display());
    }
    let (program, rest) = args.command.split_first().expect("clap requires a program");
    let found = find_program(program, args.working_dir.as_deref())?;
    let head = Head::connect(&args.head).await?;
    let working_dir_package = match &args.working_dir {
        Some(dir) => {
            let archive = photon::packages::pack(Some(dir), &[]).map_err(anyhow::Error::msg)?;
            upload(
                &head,
                archive.path(),
                &format!("working directory {}", dir.display()),
            )
            .await?
        }
        None => String::new(),
    };
    let (program, program_package) = match found {
        Program::File(path) => {
            let hash = upload(&head, &path, &format!("program {}", path.display())).await?;
            (program.clone(), hash)
        }
        Program::InWorkingDir(relative) => (relative, String::new()),
        Program::Command(command) => (command, String::new()),
    };
    let request = SubmitJobRequest {
        name: args.name.unwrap_or_default(),
        program,
        args: rest.to_vec(),
        env: env.into_iter().collect(),
        program_package,
        working_dir_package,
    };
    let record = head
        .jobs()
        .submit_job(request)
        .await
        .map_err(|s| head.refused(s))?
        .into_inner();
    let id = &record.job_id;
    eprintln!("job {id} ({}) submitted to {}", record.name, head.address);
    if args.no_wait {
        eprintln!("  logs:    photon job logs {id} --follow");
        eprintln!("  status:  photon job status {id}");
        eprintln!("  stop:    photon job stop {id}");
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    print_logs(&head, id, true).await?;
    let record = get(&head, id).await?;
    eprintln!("job {id} {}", outcome(&record));
    Ok(exit_code_of(&record))
}

/// The exit code `photon job submit` passes on: the driver's, else 1 for a
/// job that did not succeed.
fn exit_code_of(record: &JobRecord) -> ExitCode {
    match (JobState::try_from(record.state), record.exit_code) {
        (Ok(JobState::Succeeded), _) => ExitCode::SUCCESS,
        (_, Some(code)) if (1..=255).contains(&code) => ExitCode::from(code as u8),
        _ => ExitCode::FAILURE,
    }
}

/// Uploads the file at `path` unless the head has it; returns its sha256.
async fn upload(head: &Head, path: &Path, what: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    let uploaded = photon::packages::upload(&mut head.jobs(), path)
        .await
        .map_err(|err| match err {
            photon::packages::UploadError::Head(status) => head.refused(status),
            read => anyhow::anyhow!("cannot upload the {what}: {read}"),
        })?;
    if uploaded.sent {
        eprintln!(
            "uploaded the {what} ({:.1} MiB) in {:.1} s",
            uploaded.bytes as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(uploaded.sha256)
}

async fn get(head: &Head, id: &str) -> anyhow::Result<JobRecord> {
    Ok(head
        .jobs()
        .get_job(JobRequest {
            job_id: id.to_string(),
        })
        .await
        .map_err(|s| head.refused(s))?
        .into_inner())
}

async fn print_logs(head: &Head, id: &str, follow: bool) -> anyhow::Result<()> {
    let mut stream = head
        .jobs()
        .job_logs(JobLogsRequest {
            job_id: id.to_string(),
            follow,
        })
        .await
        .map_err(|s| head.refused(s))?
        .into_inner();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| head.refused(s))?;
        stdout.write_all(&chunk.data)?;
        stdout.flush()?;
    }
    Ok(())
}

async fn stop(head: &Head, id: &str, grace: f64, no_wait: bool) -> anyhow::Result<ExitCode> {
    if !(0.0..=3600.0).contains(&grace) {
        bail!("--grace-period {grace} must be between 0 and 3600 seconds");
    }
    let record = head
        .jobs()
        .stop_job(StopJobRequest {
            job_id: id.to_string(),
            grace_period_ms: (grace * 1000.0).round().max(1.0) as u32,
        })
        .await
        .map_err(|s| head.refused(s))?
        .into_inner();
    if is_terminal(record.state) {
        eprintln!("job {id} had already ended: {}", outcome(&record));
        return Ok(ExitCode::SUCCESS);
    }
    if no_wait {
        eprintln!("job {id} is stopping");
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(grace) + Duration::from_secs(10);
    loop {
        let record = get(head, id).await?;
        if is_terminal(record.state) {
            eprintln!("job {id} {}", outcome(&record));
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            bail!("job {id} has not ended yet; `photon job status {id}` shows where it is");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_terminal(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Stopped)
    )
}

fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state).unwrap_or(JobState::Unspecified) {
        JobState::Pending => "PENDING",
        JobState::Running => "RUNNING",
        JobState::Succeeded => "SUCCEEDED",
        JobState::Failed => "FAILED",
        JobState::Stopped => "STOPPED",
        JobState::Unspecified => "UNKNOWN",
    }
}

/// "SUCCEEDED", "FAILED: the driver exited with code 3", ….
fn outcome(record: &JobRecord) -> String {
    let state = state_name(record.state);
    if record.message.is_empty() {
        state.to_string()
    } else {
        format!("{state}: {}", record.message)
    }
}

fn entrypoint(record: &JobRecord) -> String {
    std::iter::once(record.program.as_str())
        .chain(record.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

fn format_time(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let ago = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .saturating_sub(unix_ms);
    format!("{:.0} s ago", ago as f64 / 1000.0)
}

fn duration(record: &JobRecord) -> String {
    match (record.started_at_unix_ms, record.ended_at_unix_ms) {
        (0, _) => "-".into(),
        (start, 0) => format!("{} (running)", format_time(start)),
        (start, end) => format!("{:.1} s", end.saturating_sub(start) as f64 / 1000.0),
    }
}

fn print_status(record: &JobRecord) {
    println!("job        {}", record.job_id);
    println!("name       {}", record.name);
    println!("state      {}", outcome(record));
    println!("entrypoint {}", entrypoint(record));
    if let Some(code) = record.exit_code {
        println!("exit code  {code}");
    }
    println!("submitted  {}", format_time(record.submitted_at_unix_ms));
    println!("ran        {}", duration(record));
    println!("log        {} (on the head node)", record.log_path);
    if record.state != JobState::Succeeded as i32 && !record.last_lines.is_empty() {
        println!("last output:");
        for line in &record.last_lines {
            println!("  {line}");
        }
    }
}

fn print_list(jobs: &[JobRecord]) {
    if jobs.is_empty() {
        println!("no jobs yet: submit one with `photon job submit -- PROGRAM`");
        return;
    }
    println!(
        "{:<10} {:<20} {:<10} {:>4}  {:<14} {:<16} ENTRYPOINT",
        "JOB", "NAME", "STATE", "EXIT", "SUBMITTED", "RAN"
    );
    for job in jobs {
        println!(
            "{:<10} {:<20} {:<10} {:>4}  {:<14} {:<16} {}",
            job.job_id,
            job.name,
            state_name(job.state),
            job.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
            format_time(job.submitted_at_unix_ms),
            duration(job),
            entrypoint(job)
        );
    }
}

/// A job as `--json` prints it.
#[derive(Debug, Serialize)]
struct JobView {
    job_id: String,
    name: String,
    state: &'static str,
    entrypoint: String,
    exit_code: Option<i32>,
    message: String,
    last_lines: Vec<String>,
    submitted_at_unix_ms: u64,
    started_at_unix_ms: u64,
    ended_at_unix_ms: u64,
    driver_pid: u32,
    log_path: String,
    env: BTreeMap<String, String>,
}

impl From<JobRecord> for JobView {
    fn from(record: JobRecord) -> Self {
        Self {
            state: state_name(record.state),
            entrypoint: entrypoint(&record),
            job_id: record.job_id,
            name: record.name,
            exit_code: record.exit_code,
            message: record.message,
            last_lines: record.last_lines,
            submitted_at_unix_ms: record.submitted_at_unix_ms,
            started_at_unix_ms: record.started_at_unix_ms,
            ended_at_unix_ms: record.ended_at_unix_ms,
            driver_pid: record.driver_pid,
            log_path: record.log_path,
            env: record.env.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn env_pairs_and_programs_are_checked_before_anything_runs() {
        let env = parse_env(&["A=1".into(), "B=x=y".into()]).unwrap();
        assert_eq!(env["B"], "x=y");
        let err = parse_env(&["NOPE".into()]).unwrap_err().to_string();
        assert_eq!(err, "--env \"NOPE\" is not KEY=VALUE");
        let err = find_program("./no-such-job", None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
        let err = find_program("no-such-command-xyz", None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a command on PATH"), "{err}");
        assert!(matches!(find_program("sh", None), Ok(Program::Command(_))));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("run.sh"), "echo hi").unwrap();
        let path = dir.path().join("run.sh").display().to_string();
        let err = find_program(&path, None).err().unwrap().to_string();
        assert!(err.contains("chmod +x"), "{err}");
        let err = find_program("run.sh", Some(dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("chmod +x"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            find_program("run.sh", Some(dir.path())),
            Ok(Program::InWorkingDir(p)) if p == "./run.sh"
        ));
    }
}
