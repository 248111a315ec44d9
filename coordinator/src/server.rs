//! The gRPC face of the coordinator: `distill.v1.JobService` and `distill.v1.WorkerService`, the
//! standard health service (for probes: it answers without a token) and server reflection (v1 and
//! v1alpha, so `grpcurl` can list and call every method), token auth and optional TLS.

use crate::job::JobSpec;
use crate::sched::{Held, JobView, Refusal, ShardStats};
use crate::service::Coordinator;
use crate::wire::{job_to_wire, lease_to_wire};
use distill_proto::auth::CheckToken;
use distill_proto::v1;
use distill_proto::v1::job_service_server::{JobService, JobServiceServer};
use distill_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// How the server is reached and secured.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// Bearer token every call (health excepted) must carry.
    pub token: Option<String>,
    /// PEM certificate chain and private key: serve TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotFound(m) => Status::not_found(m),
            Refusal::FailedPrecondition(m) => Status::failed_precondition(m),
            Refusal::InvalidArgument(m) => Status::invalid_argument(m),
            Refusal::Unavailable(m) => Status::unavailable(m),
            Refusal::Internal(m) => Status::internal(m),
        }
    }
}

/// Mirrors the coordinator's readiness on the health service (overall and per service) until the
/// coordinator is dropped.
async fn report_health(
    mut ready: tokio::sync::watch::Receiver<bool>,
    reporter: tonic_health::server::HealthReporter,
) {
    loop {
        let now = *ready.borrow_and_update();
        let status = if now {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        if now {
            reporter.set_serving::<JobServiceServer<Jobs>>().await;
            reporter.set_serving::<WorkerServiceServer<Workers>>().await;
        } else {
            reporter.set_not_serving::<JobServiceServer<Jobs>>().await;
            reporter
                .set_not_serving::<WorkerServiceServer<Workers>>()
                .await;
        }
        if ready.changed().await.is_err() {
            return;
        }
    }
}

/// Serves the coordinator on `listener` until `shutdown` resolves.
pub async fn serve(
    coord: Arc<Coordinator>,
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    tokio::spawn(report_health(coord.watch_ready(), reporter));
    let check = CheckToken::new(opts.token.as_deref());
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(distill_proto::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .expect("valid descriptor set");
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .expect("valid descriptor set");
    let max = distill_proto::MAX_MESSAGE_BYTES;
    let jobs = JobServiceServer::new(Jobs(coord.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let workers = WorkerServiceServer::new(Workers(coord.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)));
    if let Some((cert, key)) = opts.tls {
        distill_proto::init_tls();
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    use tonic::service::interceptor::InterceptedService as Auth;
    builder
        .add_service(health)
        .add_service(Auth::new(reflection_v1, check.clone()))
        .add_service(Auth::new(reflection_v1alpha, check.clone()))
        .add_service(Auth::new(jobs, check.clone()))
        .add_service(Auth::new(workers, check))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

fn wire(coord: &Coordinator, v: JobView) -> v1::Job {
    job_to_wire(v, &coord.store().url)
}

/// `distill.v1.JobService`.
#[derive(Debug, Clone)]
pub struct Jobs(pub Arc<Coordinator>);

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(
        &self,
        req: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: missing"))?;
        let submission = JobSpec::from_wire(spec)?;
        let view = self.0.submit(submission).await?;
        Ok(Response::new(v1::SubmitJobResponse {
            job: Some(wire(&self.0, view)),
        }))
    }

    async fn get_job(
        &self,
        req: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::GetJobResponse>, Status> {
        let view = self.0.view(&req.into_inner().job_id)?;
        Ok(Response::new(v1::GetJobResponse {
            job: Some(wire(&self.0, view)),
        }))
    }

    async fn list_jobs(
        &self,
        _req: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let jobs = self
            .0
            .views()
            .into_iter()
            .map(|v| wire(&self.0, v))
            .collect();
        Ok(Response::new(v1::ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        req: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::CancelJobResponse>, Status> {
        let view = self.0.cancel(&req.into_inner().job_id).await?;
        Ok(Response::new(v1::CancelJobResponse {
            job: Some(wire(&self.0, view)),
        }))
    }

    type WatchJobStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<v1::WatchJobResponse, Status>> + Send + 'static>,
    >;

    async fn watch_job(
        &self,
        req: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = req.into_inner().job_id;
        self.0.view(&id)?;
        let coord = self.0.clone();
        // Poll the job a few times a second and send it when it changed; end after its final state.
        let stream = futures::stream::unfold(
            (coord, id, None::<v1::Job>, false),
            |(coord, id, last, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if last.is_some() {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    let job = match coord.view(&id) {
                        Ok(v) => wire(&coord, v),
                        Err(r) => return Some((Err(Status::from(r)), (coord, id, last, true))),
                    };
                    let finished = job.state != v1::JobState::Running as i32;
                    // Wall time alone is no change worth a message.
                    let same = last.as_ref().is_some_and(|l| {
                        let mut a = l.clone();
                        let mut b = job.clone();
                        for j in [&mut a, &mut b] {
                            if let Some(led) = j.ledger.as_mut() {
                                led.wall_seconds = 0.0;
                            }
                        }
                        a == b
                    });
                    if !same || finished {
                        let item = v1::WatchJobResponse {
                            job: Some(job.clone()),
                        };
                        return Some((Ok(item), (coord, id, Some(job), finished)));
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// `distill.v1.WorkerService`.
#[derive(Debug, Clone)]
pub struct Workers(pub Arc<Coordinator>);

#[tonic::async_trait]
impl WorkerService for Workers {
    async fn register(
        &self,
        req: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        let caps = r.capabilities.unwrap_or_default();
        let held = r.held.into_iter().map(Held::from_wire).collect();
        let name = if r.name.is_empty() {
            "unnamed".into()
        } else {
            r.name
        };
        let (worker_id, adopted) = self.0.register(
            r.protocol_version,
            name,
            caps.device,
            caps.teachers_loaded,
            held,
        )?;
        let cfg = &self.0.settings().sched;
        Ok(Response::new(v1::RegisterResponse {
            worker_id,
            heartbeat_interval_ms: cfg.heartbeat_interval.as_millis() as u32,
            lease_ttl_ms: cfg.lease_ttl.as_millis() as u32,
            adopted_lease_ids: adopted,
        }))
    }

    async fn lease(
        &self,
        req: Request<v1::LeaseRequest>,
    ) -> Result<Response<v1::LeaseResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        let now = Instant::now();
        let mut s = self.0.sched();
        let grant = s.lease(&r.worker_id, &r.teachers_loaded, now)?;
        let Some(g) = grant else {
            let retry = s.config().heartbeat_interval.min(Duration::from_secs(1));
            return Ok(Response::new(v1::LeaseResponse {
                lease: None,
                retry_after_ms: retry.as_millis() as u32,
            }));
        };
        let info = s.job_info(&g.job).expect("granted from a known job");
        let lease = lease_to_wire(g, info);
        drop(s);
        Ok(Response::new(v1::LeaseResponse {
            lease: Some(lease),
            retry_after_ms: 0,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        let revoked = self
            .0
            .sched()
            .heartbeat(&r.worker_id, &r.lease_ids, Instant::now())?;
        Ok(Response::new(v1::HeartbeatResponse {
            revoked_lease_ids: revoked,
        }))
    }

    async fn complete(
        &self,
        req: Request<v1::CompleteRequest>,
    ) -> Result<Response<v1::CompleteResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        let st = r.stats.unwrap_or_default();
        let stats = ShardStats::from_wire(&st);
        let (duplicate, effects) =
            self.0
                .sched()
                .complete(&r.worker_id, &r.lease_id, stats, Instant::now())?;
        self.0.apply(effects);
        Ok(Response::new(v1::CompleteResponse { duplicate }))
    }

    async fn fail(
        &self,
        req: Request<v1::FailRequest>,
    ) -> Result<Response<v1::FailResponse>, Status> {
        self.0.check_ready()?;
        let r = req.into_inner();
        let (will_retry, effects) = self.0.sched().fail(
            &r.worker_id,
            &r.lease_id,
            &r.error,
            r.release,
            Instant::now(),
        )?;
        if !r.release {
            tracing::warn!(worker = %r.worker_id, lease = %r.lease_id, will_retry, "shard attempt failed: {}", r.error);
        }
        self.0.apply(effects);
        Ok(Response::new(v1::FailResponse { will_retry }))
    }
}
