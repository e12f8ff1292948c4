//! Reaching a running head from a `photon` command: where it is, with which
//! token, and errors that say what to do.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use photon_proto::auth::AttachToken;
use photon_proto::v1::head_client::HeadClient;
use photon_proto::v1::jobs_client::JobsClient;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::session;

/// `--address` and `--token-file` of commands that talk to a running head.
#[derive(Debug, Clone, Args)]
pub struct HeadArgs {
    /// The head, HOST:PORT (default: PHOTON_ADDRESS or this machine's head).
    #[arg(long)]
    pub address: Option<String>,
    /// File holding the cluster token (default: PHOTON_TOKEN, else this
    /// machine's head). The token itself is never a flag: argv is public.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// The head's connection file (address, token and, with TLS, the CA),
    /// for a head on another machine.
    #[arg(long, value_name = "PATH")]
    pub connection_file: Option<PathBuf>,
    /// The CA certificate (PEM) of a cluster that uses TLS (default: the
    /// connection file's, else PHOTON_TLS_CA, else this machine's head's).
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
}

type Authed = InterceptedService<Channel, AttachToken>;

/// A connection to a head.
pub struct Head {
    /// Where it is.
    pub address: String,
    channel: Channel,
    attach: AttachToken,
}

impl Head {
    /// Connects to the head `args` name.
    pub async fn connect(args: &HeadArgs) -> anyhow::Result<Self> {
        let connection = session::connection_file(args.connection_file.as_deref())?;
        let address = session::resolve_address(args.address.clone(), connection.as_ref())?;
        let token = session::resolve_token(args.token_file.as_deref(), connection.as_ref())?;
        crate::tls::configure_client(args.tls_ca.as_deref(), connection.as_ref(), &address)?;
        let endpoint = photon_proto::tls::endpoint(&address)
            .map_err(anyhow::Error::msg)?
            .connect_timeout(Duration::from_secs(3));
        let channel = endpoint.connect().await.map_err(|err| {
            anyhow::anyhow!(
                "cannot reach the head at {address} ({}): is it running? Check --address or PHOTON_ADDRESS{}",
                photon_proto::tls::describe(&err),
                crate::tls::plaintext_hint()
            )
        })?;
        let attach = AttachToken::new(&token).map_err(anyhow::Error::msg)?;
        Ok(Self {
            address,
            channel,
            attach,
        })
    }

    /// The control-plane service.
    pub fn head(&self) -> HeadClient<Authed> {
        HeadClient::with_interceptor(self.channel.clone(), self.attach.clone())
    }

    /// The jobs service.
    pub fn jobs(&self) -> JobsClient<Authed> {
        JobsClient::with_interceptor(self.channel.clone(), self.attach.clone())
    }

    /// The head's refusal as a one-line error that says what to do.
    pub fn refused(&self, status: tonic::Status) -> anyhow::Error {
        let address = &self.address;
        match status.code() {
            Code::Unavailable => anyhow::anyhow!(
                "lost the head at {address} ({}): is it still running?{}",
                status.message(),
                crate::tls::plaintext_hint()
            ),
            Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition => {
                anyhow::anyhow!("{}", status.message())
            }
            // A TLS head answers a plaintext call with an HTTP/2 error.
            Code::Unknown | Code::Internal => anyhow::anyhow!(
                "the head at {address} answered: {}{}",
                status.message(),
                crate::tls::plaintext_hint()
            ),
            _ => anyhow::anyhow!("the head at {address} answered: {}", status.message()),
        }
    }
}
