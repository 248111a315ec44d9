//! A labeling job in this process: a coordinator and a worker holding the teacher, on loopback.

use crate::remote::Coordinator;
use crate::{JobSummary, LabelError, LabelSpec, Result};
use distill_cache::model_dir::ModelDir;
use distill_cache::store::Location;
use distill_teacher::Teacher;
use std::sync::Arc;
use std::time::Duration;

/// Checks the store, the output request and the prompt against the model before loading anything,
/// then loads the teacher and runs the job here.
pub async fn label(spec: &LabelSpec, progress: bool) -> Result<JobSummary> {
    let store_url = spec
        .store
        .as_deref()
        .ok_or_else(|| LabelError::Invalid("--store is required without --coordinator".into()))?;
    let store = distill_cache::store::open(store_url, true)?;
    distill_cache::store::probe(&store).await?;
    let dir = ModelDir::resolve(&spec.teacher.model).await?;
    spec.output.resolve(&dir)?;
    if let Some(p) = &spec.output.prompt {
        distill_teacher::prompt::check(&dir, p)?;
    }
    let teacher = spec.teacher.load_dir(dir).await?;
    with_teacher(spec, store, Arc::new(teacher), progress).await
}

/// Runs `spec` with an already loaded teacher: coordinator and worker on loopback, for one job. The
/// coordinator's refusals (a missing corpus, a bad request) come back as the message alone.
pub async fn with_teacher(
    spec: &LabelSpec,
    store: Location,
    teacher: Arc<Teacher>,
    progress: bool,
) -> Result<JobSummary> {
    let coord = distill_coordinator::Coordinator::new(store.clone(), settings());
    coord.start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| LabelError::Local(format!("cannot listen on loopback: {e}")))?;
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| LabelError::Local(e.to_string()))?
    );
    let token = uuid::Uuid::new_v4().simple().to_string();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = {
        let mut stopped = stopped.clone();
        let opts = distill_coordinator::server::ServeOptions {
            token: Some(token.clone()),
            tls: None,
        };
        tokio::spawn(distill_coordinator::server::serve(
            coord.clone(),
            listener,
            opts,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    };
    while !coord.is_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = distill_proto::ClientConfig {
        url,
        token: Some(token),
        tls_ca: None,
    };
    let worker = tokio::spawn(distill_worker::pull::run(
        worker_config(spec, &client, store),
        Arc::new(distill_worker::pull::TeacherSlot::with(teacher)),
        Default::default(),
        stopped,
    ));
    let result = async {
        let ch = distill_proto::connect(&client).await?;
        let mut to = Coordinator::in_process(
            &client.url,
            Duration::from_secs_f64(crate::spec::WAIT_SECONDS),
        );
        to.run(ch, spec.job().to_wire(), progress).await
    }
    .await;
    let _ = stop.send(true);
    let stopped = |what: &str, e: String| LabelError::Local(format!("the {what} in process: {e}"));
    worker
        .await
        .map_err(|e| stopped("worker", e.to_string()))?
        .map_err(|e| stopped("worker", e.to_string()))?;
    server
        .await
        .map_err(|e| stopped("coordinator", e.to_string()))?
        .map_err(|e| stopped("coordinator", e.to_string()))?;
    result
}

/// A coordinator for one local job: short heartbeats and retries, no speculation, no resume.
fn settings() -> distill_coordinator::Settings {
    distill_coordinator::Settings {
        sched: distill_coordinator::sched::Config {
            lease_ttl: Duration::from_secs(120),
            heartbeat_interval: Duration::from_secs(5),
            retry_backoff: Duration::from_millis(500),
            speculate_after: None,
            ..Default::default()
        },
        resume: false,
        plan_ahead: 64,
        store_lease: None,
        ..Default::default()
    }
}

fn worker_config(
    spec: &LabelSpec,
    client: &distill_proto::ClientConfig,
    store: Location,
) -> distill_worker::pull::PullConfig {
    distill_worker::pull::PullConfig {
        client: client.clone(),
        name: "in-process".into(),
        device: spec.teacher.device.clone(),
        load: spec.teacher.load_options(),
        max_batch_tokens: spec.teacher.max_batch_tokens,
        drain_grace: Duration::from_secs(600),
        stores: vec![store],
        idle_poll_max: Duration::from_millis(100),
    }
}
