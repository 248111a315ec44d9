//! Reaching a coordinator from the command line: `--coordinator`, `--token`, `--tls-ca`,
//! `--wait-seconds`, mapped onto the library's [`RemoteSpec`] (which rides out restarts).

use clap::Args;
use distill_label::spec::WAIT_SECONDS;
use distill_label::RemoteSpec;

/// Where the coordinator is and how to authenticate.
#[derive(Debug, Clone, Args)]
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
    /// Clients (`label --coordinator`, `jobs`): seconds to keep retrying a coordinator that cannot be
    /// reached or is not ready (a restart, a rollout) before giving up; the job goes on without the
    /// client. A worker retries without limit.
    #[arg(long, env = "DISTILL_WAIT_SECONDS", default_value_t = WAIT_SECONDS)]
    pub wait_seconds: f64,
}

impl RemoteArgs {
    /// The library's remote spec: `None` without `--coordinator`.
    pub fn spec(&self) -> anyhow::Result<Option<RemoteSpec>> {
        let Some(url) = &self.coordinator else {
            return Ok(None);
        };
        let spec = RemoteSpec {
            url: url.clone(),
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
            wait_seconds: self.wait_seconds,
        };
        spec.wait()?;
        Ok(Some(spec))
    }

    /// The remote spec, which these commands need.
    pub fn required(&self) -> anyhow::Result<RemoteSpec> {
        self.spec()?
            .ok_or_else(|| anyhow::anyhow!("--coordinator (or DISTILL_COORDINATOR) is required"))
    }

    /// Connects, retrying for up to `--wait-seconds` while the coordinator cannot be reached.
    pub async fn connect(&self) -> anyhow::Result<distill_proto::Channel> {
        Ok(distill_label::remote::connect(&self.required()?).await?)
    }
}

/// A gRPC status as a one-line error: its code and message.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("coordinator: {} ({:?})", s.message(), s.code())
}
