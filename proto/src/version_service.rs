//! `photon.v1.Version`, answered by every Photon server.

use tonic::{Request, Response, Status};

use crate::v1::version_server::Version;
use crate::v1::{VersionRequest, VersionResponse};
use crate::version::PROTOCOL_VERSION;

/// Answers with this build's [`PROTOCOL_VERSION`] and crate version.
#[derive(Debug, Clone, Copy, Default)]
pub struct VersionService;

#[tonic::async_trait]
impl Version for VersionService {
    async fn get_version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            protocol_version: PROTOCOL_VERSION,
            build_version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}
