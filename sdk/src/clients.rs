//! gRPC clients of the head, raylets and workers, all carrying the cluster
//! token. Connections are lazy and shared: tonic channels multiplex calls.

use std::time::Duration;

use photon_proto::auth::AttachToken;
use photon_proto::v1::head_client::HeadClient;
use photon_proto::v1::worker_client::WorkerClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::error::{Error, Result};

pub(crate) use photon_raylet::transfer::PeerClient as RayletClient;

/// A client of the head.
pub(crate) type Head = HeadClient<InterceptedService<Channel, AttachToken>>;
/// A client of a worker process.
pub(crate) type Worker = WorkerClient<InterceptedService<Channel, AttachToken>>;

fn channel(what: &str, address: &str) -> Result<Channel> {
    let endpoint = photon_proto::tls::endpoint(address)
        .map_err(|err| Error::Config(format!("{what} {err}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

fn attach(token: &str) -> Result<AttachToken> {
    AttachToken::new(token).map_err(Error::Config)
}

pub(crate) fn head(address: &str, token: &str) -> Result<Head> {
    Ok(HeadClient::with_interceptor(
        channel("head", address)?,
        attach(token)?,
    ))
}

pub(crate) fn jobs(address: &str, token: &str) -> Result<crate::packages::Jobs> {
    Ok(photon_proto::v1::jobs_client::JobsClient::with_interceptor(
        channel("head", address)?,
        attach(token)?,
    ))
}

pub(crate) fn raylet(address: &str, token: &str) -> Result<RayletClient> {
    photon_raylet::transfer::connect(address, token).map_err(Error::Config)
}

pub(crate) fn worker(address: &str, token: &str) -> Result<Worker> {
    Ok(
        WorkerClient::with_interceptor(channel("worker", address)?, attach(token)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
    )
}
