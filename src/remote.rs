//! Reaching a coordinator from the command line: `--coordinator`, `--token`, `--tls-ca`, and gRPC
//! statuses turned into one-line errors.

use clap::Args;

/// Where the coordinator is and how to authenticate.
#[derive(Debug, Clone, Default, Args)]
pub struct RemoteArgs {
    /// Coordinator URL (http://host:port, or https:// with TLS). Without it, `distill label` runs a
    /// coordinator and a worker in this process.
    #[arg(long, env = "DISTILL_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Token the coordinator requires (sent as `authorization: Bearer …`).
    #[arg(long, env = "DISTILL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the coordinator's TLS certificate (default: public roots).
    #[arg(long, env = "DISTILL_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl RemoteArgs {
    pub fn client_config(&self) -> anyhow::Result<distill_proto::ClientConfig> {
        let url = self
            .coordinator
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--coordinator (or DISTILL_COORDINATOR) is required"))?;
        Ok(distill_proto::ClientConfig {
            url,
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
        })
    }

    pub async fn connect(&self) -> anyhow::Result<distill_proto::Channel> {
        Ok(distill_proto::connect(&self.client_config()?).await?)
    }
}

/// A gRPC status as a one-line error: its code and message.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator: {} ({:?})", s.message(), s.code())
}
