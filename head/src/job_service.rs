//! The `photon.v1.Jobs` gRPC service: packages, submission, status, logs, stop.

use std::io::{Read, Seek, SeekFrom, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use photon_proto::v1::jobs_server::Jobs;
use photon_proto::v1::{
    HasPackageReply, JobLogsRequest, JobRecord, JobRequest, ListJobsReply, ListJobsRequest,
    LogChunk, PackageChunk, PackageRef, StopJobRequest, SubmitJobRequest, WorkerLogLines,
    WorkerLogReply,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::jobs::is_terminal;
use crate::packages::CHUNK;
use crate::service::HeadState;
use crate::supervisor::DEFAULT_GRACE;

/// How often `photon job logs --follow` looks for new output.
const FOLLOW_PERIOD: Duration = Duration::from_millis(200);

/// The gRPC service over [`HeadState`]'s jobs and packages.
#[derive(Clone)]
pub struct JobService {
    pub(crate) state: Arc<HeadState>,
}

type ChunkStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl JobService {
    fn job(&self, id: &str) -> Result<JobRecord, Status> {
        self.state.jobs.get(id).ok_or_else(|| {
            Status::not_found(format!(
                "no job {id:?} on this cluster; `photon job list` shows its jobs"
            ))
        })
    }
}

#[tonic::async_trait]
impl Jobs for JobService {
    async fn has_package(
        &self,
        request: Request<PackageRef>,
    ) -> Result<Response<HasPackageReply>, Status> {
        let present = self.state.packages.has(&request.get_ref().sha256);
        Ok(Response::new(HasPackageReply { present }))
    }

    async fn upload_package(
        &self,
        request: Request<Streaming<PackageChunk>>,
    ) -> Result<Response<PackageRef>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload: no chunk named the package"))?;
        let sha256 = first.sha256.clone();
        let packages = self.state.packages.clone();
        let mut upload = packages
            .begin_upload(&sha256)
            .map_err(Status::invalid_argument)?;
        upload.write(&first.data).map_err(Status::internal)?;
        while let Some(chunk) = chunks.message().await? {
            upload.write(&chunk.data).map_err(Status::internal)?;
        }
        let size = tokio::task::spawn_blocking(move || upload.finish())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::invalid_argument)?;
        tracing::info!(package = %sha256, size, "package uploaded");
        Ok(Response::new(PackageRef { sha256, size }))
    }

    type DownloadPackageStream = ChunkStream<PackageChunk>;

    async fn download_package(
        &self,
        request: Request<PackageRef>,
    ) -> Result<Response<Self::DownloadPackageStream>, Status> {
        let sha256 = request.into_inner().sha256;
        if !self.state.packages.has(&sha256) {
            return Err(Status::not_found(format!(
                "package {sha256} is not on this head"
            )));
        }
        let path = self
            .state
            .packages
            .path(&sha256)
            .expect("a stored package has a path");
        let mut file = std::fs::File::open(&path)
            .map_err(|e| Status::internal(format!("cannot read {}: {e}", path.display())))?;
        let (sender, receiver) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0; CHUNK];
            loop {
                let chunk = match file.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => Ok(PackageChunk {
                        sha256: sha256.clone(),
                        data: Bytes::copy_from_slice(&buffer[..n]),
                    }),
                    Err(e) => Err(Status::internal(format!(
                        "cannot read package {sha256}: {e}"
                    ))),
                };
                let failed = chunk.is_err();
                if sender.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<JobRecord>, Status> {
        self.state
            .submit_job(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_job(&self, request: Request<JobRequest>) -> Result<Response<JobRecord>, Status> {
        self.job(&request.get_ref().job_id).map(Response::new)
    }

    async fn list_jobs(
        &self,
        _: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsReply>, Status> {
        Ok(Response::new(ListJobsReply {
            jobs: self.state.jobs.all(),
        }))
    }

    async fn stop_job(
        &self,
        request: Request<StopJobRequest>,
    ) -> Result<Response<JobRecord>, Status> {
        let request = request.into_inner();
        let grace = match request.grace_period_ms {
            0 => DEFAULT_GRACE,
            ms => Duration::from_millis(u64::from(ms)),
        };
        self.state
            .stop_job(&request.job_id, grace)
            .await
            .map(Response::new)
    }

    async fn delete_job(
        &self,
        request: Request<JobRequest>,
    ) -> Result<Response<JobRecord>, Status> {
        self.state
            .delete_job(&request.get_ref().job_id)
            .await
            .map(Response::new)
    }

    type JobLogsStream = ChunkStream<LogChunk>;

    async fn job_logs(
        &self,
        request: Request<JobLogsRequest>,
    ) -> Result<Response<Self::JobLogsStream>, Status> {
        let request = request.into_inner();
        let record = self.job(&request.job_id)?;
        let path = std::path::PathBuf::from(&record.log_path);
        let (sender, receiver) = mpsc::channel(4);
        let state = self.state.clone();
        let id = request.job_id;
        self.state.tasks.spawn(async move {
            let mut offset = 0u64;
            loop {
                // Read whether it ended before reading, so no output written
                // before the end is missed.
                let ended = state.jobs.get(&id).is_none_or(|r| is_terminal(r.state));
                let chunk = match read_from(&path, offset) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let _ = sender.send(Err(Status::internal(e))).await;
                        return;
                    }
                };
                if !chunk.is_empty() {
                    offset += chunk.len() as u64;
                    if sender.send(Ok(LogChunk { data: chunk })).await.is_err() {
                        return;
                    }
                    continue;
                }
                if !request.follow || ended {
                    return;
                }
                tokio::select! {
                    () = state.cancel.cancelled() => return,
                    () = sender.closed() => return,
                    () = tokio::time::sleep(FOLLOW_PERIOD) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn append_worker_logs(
        &self,
        request: Request<WorkerLogLines>,
    ) -> Result<Response<WorkerLogReply>, Status> {
        let lines = request.into_inner();
        // Lines of a job this head does not know (an ad-hoc driver's) stay in
        // the worker's own log files only.
        if let Some(record) = self.state.jobs.get(&lines.job_id) {
            let path = record.log_path;
            tokio::task::spawn_blocking(move || {
                let mut file = std::fs::OpenOptions::new().append(true).open(&path)?;
                file.write_all(&lines.data)
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("cannot append to the job log: {e}")))?;
        }
        Ok(Response::new(WorkerLogReply {}))
    }
}

/// Up to one chunk of the file at `path` from `offset`; empty at its end or
/// while it does not exist yet.
fn read_from(path: &std::path::Path, offset: u64) -> Result<Bytes, String> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Bytes::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut buffer = Vec::with_capacity(CHUNK);
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.take(CHUNK as u64).read_to_end(&mut buffer))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Bytes::from(buffer))
}
