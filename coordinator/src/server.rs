//! The gRPC face of the coordinator: `distill.v1.JobService` and `distill.v1.WorkerService`, the
//! standard health service (for probes: it answers without a token) and server reflection (v1 and
//! v1alpha, so `grpcurl` can list and call every method), token auth and optional TLS.

use crate::sched::{Held, JobState, JobView, Refusal, ShardStats};
use crate::service::{parse_format, Coordinator, Submission};
use distill_cache::corpus::CorpusSpec;
use distill_proto::auth::CheckToken;
use distill_proto::v1;
use distill_proto::v1::job_service_server::{JobService, JobServiceServer};
use distill_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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
    coord.set_health(reporter);
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

fn unix_ms(at: Instant) -> i64 {
    let now = SystemTime::now();
    let wall = if at >= Instant::now() {
        now + at.duration_since(Instant::now())
    } else {
        now - Instant::now().duration_since(at)
    };
    wall.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The prompt of a job spec, from the wire.
pub fn prompt_from_wire(p: v1::Prompt) -> distill_cache::format::PromptSpec {
    distill_cache::format::PromptSpec {
        template: p.template,
        choices: p
            .choices
            .into_iter()
            .map(|c| distill_cache::format::Choice {
                label: c.label,
                continuation: c.continuation,
            })
            .collect(),
        chat: p.chat,
        system: p.system,
        answer_prefix: p.answer_prefix,
        length_normalize: p.length_normalize,
    }
}

/// The prompt of a job spec, to the wire.
pub fn prompt_to_wire(p: &distill_cache::format::PromptSpec) -> v1::Prompt {
    v1::Prompt {
        template: p.template.clone(),
        choices: p
            .choices
            .iter()
            .map(|c| v1::Choice {
                label: c.label.clone(),
                continuation: c.continuation.clone(),
            })
            .collect(),
        chat: p.chat,
        system: p.system.clone(),
        answer_prefix: p.answer_prefix.clone(),
        length_normalize: p.length_normalize,
    }
}

/// A job in wire form (`store`: the coordinator's store, where every job's cache is).
pub fn job_to_wire(v: JobView, store: &str) -> v1::Job {
    let l = v.ledger;
    let info = &v.info;
    let topk = match &info.output_spec {
        distill_cache::format::OutputSpec::TokenTopk(t) => Some(*t),
        _ => None,
    };
    v1::Job {
        job_id: info.id.clone(),
        spec: Some(v1::JobSpec {
            corpus: Some(v1::CorpusSpec {
                url: info.corpus.clone(),
                format: info.format.clone(),
                text_field: info.text_field.clone(),
                id_field: info.id_field.clone(),
            }),
            teacher: info.teacher.clone(),
            store: store.to_owned(),
            output: info.output.clone(),
            dtype: info.dtype.clone(),
            shard_size: info.shard_size,
            strict: info.strict,
            max_attempts: info.max_attempts,
            top_k: topk.map(|t| t.top_k).unwrap_or(0),
            samples: topk.map(|t| t.samples).unwrap_or(0),
            window: topk.map(|t| t.window).unwrap_or(0),
            stride: topk.map(|t| t.stride).unwrap_or(0),
            prompt: match &info.output_spec {
                distill_cache::format::OutputSpec::Logits {
                    prompt: Some(p), ..
                } => Some(prompt_to_wire(p)),
                _ => None,
            },
        }),
        state: match v.state {
            JobState::Running => v1::JobState::Running,
            JobState::Succeeded => v1::JobState::Succeeded,
            JobState::Failed => v1::JobState::Failed,
            JobState::Cancelled => v1::JobState::Cancelled,
        } as i32,
        teacher_fingerprint: v.info.teacher_fingerprint.clone(),
        output_fingerprint: v.info.output_fingerprint.clone(),
        ledger: Some(v1::Ledger {
            shards: l.shards,
            shards_labeled: l.shards_labeled,
            cache_hits: l.cache_hits,
            shards_failed: l.shards_failed,
            rows: l.rows,
            rejected_rows: l.rejected_rows,
            truncated_rows: l.truncated_rows,
            tokens: l.tokens,
            padded_tokens: l.padded_tokens,
            teacher_seconds: l.teacher_seconds,
            teacher_seconds_saved: l.teacher_seconds_saved,
            bytes_written: l.bytes_written,
            wall_seconds: l.wall_seconds,
            retries: l.retries,
            lease_expiries: l.lease_expiries,
            speculative_leases: l.speculative_leases,
            progress: l.progress,
            progress_total: l.progress_total,
        }),
        failed_shards: v
            .failed
            .into_iter()
            .take(WIRE_LIST_LIMIT)
            .map(|f| v1::FailedShard {
                index: f.index,
                fingerprint: f.fingerprint.to_string(),
                attempts: f.attempts,
                last_error: f.last_error,
            })
            .collect(),
        error: v.error.unwrap_or_default(),
        planned: v.planned,
        shards_pending: v.pending,
        shards_leased: v.leased,
        shards_done: v.done,
        manifest: v.manifest.unwrap_or_default(),
        created_unix_ms: v.created_unix_ms,
        finished_unix_ms: v.finished_unix_ms,
        reject_files: v.reject_files.into_iter().take(WIRE_LIST_LIMIT).collect(),
    }
}

/// Failed shards and reject files sent per job (the counts are in the ledger, the full lists in the
/// job's `result.json`): a job of a million shards still fits in a message.
pub const WIRE_LIST_LIMIT: usize = 100;

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
        let corpus = spec.corpus.unwrap_or_default();
        let or = |s: String, d: &str| if s.is_empty() { d.to_owned() } else { s };
        let submission = Submission {
            corpus: CorpusSpec {
                url: corpus.url,
                format: parse_format(&corpus.format)?,
                text_field: or(corpus.text_field, "text"),
                id_field: or(corpus.id_field, "id"),
            },
            teacher: spec.teacher,
            store: spec.store,
            output: or(spec.output, "embeddings"),
            dtype: or(spec.dtype, "f32"),
            top_k: spec.top_k,
            samples: spec.samples,
            window: spec.window,
            stride: spec.stride,
            prompt: spec.prompt.map(prompt_from_wire),
            shard_size: spec.shard_size,
            strict: spec.strict,
            max_attempts: spec.max_attempts,
        };
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
        let held = r
            .held
            .into_iter()
            .map(|h| Held {
                lease_id: h.lease_id,
                job: h.job_id,
                index: h.shard_index,
            })
            .collect();
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
        let lease = v1::ShardLease {
            lease_id: g.lease_id,
            job_id: g.job,
            shard_index: g.index,
            shard_fingerprint: g.fingerprint.to_string(),
            teacher: info.teacher.clone(),
            teacher_fingerprint: info.teacher_fingerprint.clone(),
            output: info.output.clone(),
            dtype: info.dtype.clone(),
            store: info.store.clone(),
            input: g.input,
            corpus: info.corpus.clone(),
            deadline_unix_ms: unix_ms(g.deadline),
            speculative: g.speculative,
            attempt: g.attempt,
            output_spec: serde_json::to_string(&info.output_spec).expect("serialisable"),
        };
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
        let stats = ShardStats {
            rows: st.rows,
            tokens: st.tokens,
            padded_tokens: st.padded_tokens,
            truncated_rows: st.truncated_rows,
            device_seconds: st.device_seconds,
            bytes_written: st.bytes_written,
        };
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
