//! The gRPC contract of distill, package `distill.v1` (`proto/distill/v1/distill.proto`), and the
//! transport both ends share.
//!
//! - [`v1`]: the tonic/prost code generated from the .proto; [`DESCRIPTOR_SET`] feeds server reflection.
//! - [`auth`]: the bearer token (`authorization: Bearer …` metadata) checked on the server and attached
//!   by clients, compared in constant time.
//! - [`connect`]: a client channel to a coordinator URL (`http://` or, with TLS, `https://`).
//! - [`retry`]: the exponential backoff every retry loop uses.
//! - [`http`]: the small HTTP endpoint (`/metrics`, `/healthz`, `/readyz`) of coordinator and workers.
//!
//! Conversions between these messages and the domain types live with the domain, in the coordinator
//! crate's `wire` module (`distill_coordinator::wire`).

pub mod auth;
pub mod http;
pub mod retry;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("distill.v1");
}

/// Encoded `FileDescriptorSet` of the .proto files, for the reflection service.
pub const DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("distill_descriptor");

/// Version of the worker protocol; a coordinator refuses workers that state another one.
pub const PROTOCOL_VERSION: u32 = 1;

/// How a coordinator's NOT_FOUND for a worker id it does not know begins: the worker registers again
/// (other NOT_FOUNDs, for leases or jobs, must not make it do so).
pub const UNKNOWN_WORKER: &str = "unknown worker";

/// Largest message either side accepts (larger ones get RESOURCE_EXHAUSTED).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Errors of setting up a connection.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("coordinator URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Connect { url: String, reason: String },
}

/// How to reach a coordinator.
#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    /// `http://host:port`, or `https://host:port` for TLS.
    pub url: String,
    /// Bearer token, if the coordinator requires one.
    pub token: Option<String>,
    /// PEM file of the CA that signed the coordinator's certificate (TLS); system roots otherwise.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// A channel that attaches the token to every call.
pub type Channel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, auth::AttachToken>;

pub type JobClient = v1::job_service_client::JobServiceClient<Channel>;
pub type WorkerClient = v1::worker_service_client::WorkerServiceClient<Channel>;

/// Selects rustls's ring crypto provider for the process (more than one is compiled in through the
/// object-store clients, so rustls cannot pick one itself). Idempotent.
pub fn init_tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Connects to a coordinator (one attempt; callers that should wait retry with backoff).
pub async fn connect(cfg: &ClientConfig) -> Result<Channel, TransportError> {
    init_tls();
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let bad = |reason: String| TransportError::Url {
        url: cfg.url.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(cfg.url.clone())
        .map_err(|e| {
            bad(format!(
                "{e} (expected http://host:port or https://host:port)"
            ))
        })?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if cfg.url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &cfg.tls_ca {
            let pem = std::fs::read(ca).map_err(|source| TransportError::Io {
                path: ca.clone(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| bad(format!("TLS: {e}")))?;
    } else if cfg.tls_ca.is_some() {
        return Err(bad("--tls-ca given but the URL is not https://".into()));
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| TransportError::Connect {
            url: cfg.url.clone(),
            reason: error_chain(&e),
        })?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        auth::AttachToken::new(cfg.token.as_deref()),
    ))
}

/// A job-service client with the message limits of [`MAX_MESSAGE_BYTES`].
pub fn job_client(ch: Channel) -> JobClient {
    v1::job_service_client::JobServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A worker-service client with the message limits of [`MAX_MESSAGE_BYTES`].
pub fn worker_client(ch: Channel) -> WorkerClient {
    v1::worker_service_client::WorkerServiceClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
