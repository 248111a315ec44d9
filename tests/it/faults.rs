//! Object-store failures injected through an `ObjectStore` decorator around the real store.

use crate::common::*;
use async_trait::async_trait;
use distill_cache::store::Location;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Shard-file puts with a fault: failing every one after the first `allow` (a store that broke for
/// good), or with `transient` the first put of each shard only (a store that drops a request now and
/// then), or with a [`Gate`] held back (a slow store).
#[derive(Debug)]
struct ShardPuts {
    inner: Arc<dyn ObjectStore>,
    allow: usize,
    seen: AtomicUsize,
    transient: bool,
    failed_once: std::sync::Mutex<std::collections::HashSet<String>>,
    gate: Option<Gate>,
}

/// Holds every shard-file put back until `at` of them are waiting at once or it has waited three
/// seconds (labeling the tests' ten-row shards takes milliseconds), and records the most that ever
/// were in flight together.
#[derive(Debug)]
struct Gate {
    at: usize,
    open: tokio::sync::watch::Sender<bool>,
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

impl ShardPuts {
    fn new(inner: Arc<dyn ObjectStore>, allow: usize, transient: bool) -> Self {
        Self {
            inner,
            allow,
            seen: AtomicUsize::new(0),
            transient,
            failed_once: Default::default(),
            gate: None,
        }
    }

    fn gated(inner: Arc<dyn ObjectStore>, at: usize) -> Self {
        Self {
            gate: Some(Gate {
                at,
                open: tokio::sync::watch::channel(false).0,
                in_flight: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
            }),
            ..Self::new(inner, usize::MAX, false)
        }
    }

    fn fails(&self, location: &Path) -> bool {
        if !location.as_ref().ends_with(".parquet") {
            return false;
        }
        if self.transient {
            return self
                .failed_once
                .lock()
                .unwrap()
                .insert(location.to_string());
        }
        self.seen.fetch_add(1, Ordering::SeqCst) >= self.allow
    }
}

impl std::fmt::Display for ShardPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardPuts({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ShardPuts {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fails(location) {
            return Err(object_store::Error::Generic {
                store: "fault",
                source: "injected: connection reset by peer".into(),
            });
        }
        let Some(gate) = self
            .gate
            .as_ref()
            .filter(|_| location.as_ref().ends_with(".parquet"))
        else {
            return self.inner.put_opts(location, payload, opts).await;
        };
        let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        gate.most.fetch_max(now, Ordering::SeqCst);
        if now >= gate.at {
            gate.open.send_replace(true);
        }
        let mut open = gate.open.subscribe();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(3), open.wait_for(|o| *o)).await;
        let result = self.inner.put_opts(location, payload, opts).await;
        gate.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Runs a job through the in-process coordinator and worker (the `distill label` path) on `store`.
async fn run_job(
    store: Location,
    model: &std::path::Path,
    corpus: &std::path::Path,
) -> anyhow::Result<distill_coordinator::JobSummary> {
    let mut spec = distill_label::LabelSpec::new(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store.url,
        distill_cache::format::OutputRequest::simple(
            distill_cache::spec::OutputKind::Embeddings,
            distill_cache::spec::Dtype::F32,
        ),
    );
    spec.shard_size = 10;
    let dir = distill_cache::model_dir::ModelDir::inspect(model.to_str().unwrap(), model).unwrap();
    let teacher = distill_teacher::Teacher::load(&dir, &distill_teacher::DeviceSpec::Cpu).unwrap();
    Ok(distill_label::local::with_teacher(&spec, store, Arc::new(teacher), false).await?)
}

#[tokio::test]
async fn a_failing_store_fails_the_job_clearly_and_a_rerun_reuses_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 50);
    let mut stores = vec![dir.path().join("cache").display().to_string()];
    if let Ok(s3) = std::env::var("DISTILL_TEST_S3_URL") {
        stores.push(format!("{s3}/faults-{}", std::process::id()));
    }
    for url in stores {
        let real = distill_cache::store::open(&url, true).unwrap();
        let faulty =
            real.clone()
                .with_store(Arc::new(ShardPuts::new(real.store.clone(), 2, false)));
        let err = format!("{:#}", run_job(faulty, &model, &corpus).await.unwrap_err());
        // Every attempt of the last three shards failed: the job ends, naming them and the cause.
        assert!(
            err.contains("3 of 5 shards failed")
                && err.contains("after 3 attempts")
                && err.contains("injected")
                && err.contains(".parquet"),
            "{err}"
        );
        assert_eq!(
            shard_files(&url).await.len(),
            2,
            "{url}: only the shards committed before the fault"
        );
        let summary = run_job(real.clone(), &model, &corpus).await.unwrap();
        assert_eq!(
            (
                summary.ledger.cache_hits,
                summary.ledger.shards_labeled,
                summary.ledger.rows
            ),
            (2, 3, 50),
            "{url}"
        );
        assert_eq!(shard_files(&url).await.len(), 5);
        // No staged input is left behind once a job is finished.
        let records = distill_cache::catalog::list_under(&real, &real.child("v1/jobs"))
            .await
            .unwrap();
        assert!(records
            .iter()
            .any(|o| o.location.as_ref().ends_with("result.json")));
        assert!(
            records
                .iter()
                .all(|o| !o.location.as_ref().contains("/inputs/")),
            "{records:?}"
        );
    }
}

#[tokio::test]
async fn transient_store_failures_are_retried_and_the_job_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 30);
    let mut stores = vec![dir.path().join("cache").display().to_string()];
    if let Ok(s3) = std::env::var("DISTILL_TEST_S3_URL") {
        stores.push(format!("{s3}/transient-{}", std::process::id()));
    }
    for url in stores {
        let real = distill_cache::store::open(&url, true).unwrap();
        let flaky = real
            .clone()
            .with_store(Arc::new(ShardPuts::new(real.store.clone(), 0, true)));
        let summary = run_job(flaky, &model, &corpus).await.unwrap();
        assert_eq!(summary.state, "succeeded");
        assert_eq!(
            (
                summary.ledger.shards_labeled,
                summary.ledger.retries,
                summary.ledger.rows
            ),
            (3, 3, 30),
            "{url}"
        );
        assert!(summary.failed_shards.is_empty());
        assert_eq!(shard_files(&url).await.len(), 3);
    }
}

#[tokio::test]
async fn labeling_runs_ahead_of_a_slow_store_up_to_the_commit_bound() {
    // Shard commits are held back: the worker labels the next shards meanwhile, until
    // COMMITS_IN_FLIGHT commits wait at once, and no further (it then waits for one to finish). A
    // worker without the pipeline gets one at a time; one without the bound, more (the gate opens
    // for them at bound + 1).
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 50);
    let bound = distill_worker::pull::COMMITS_IN_FLIGHT;
    let url = dir.path().join("cache").display().to_string();
    let real = distill_cache::store::open(&url, true).unwrap();
    let gated = Arc::new(ShardPuts::gated(real.store.clone(), bound + 1));
    let summary = run_job(real.clone().with_store(gated.clone()), &model, &corpus)
        .await
        .unwrap();
    assert_eq!(
        (summary.state.as_str(), summary.ledger.rows),
        ("succeeded", 50)
    );
    assert_eq!(shard_files(&url).await.len(), 5);
    let gate = gated.gate.as_ref().unwrap();
    assert_eq!(
        gate.most.load(Ordering::SeqCst),
        bound,
        "shard commits waiting at once (labeling ran ahead of the store, and stopped at the bound)"
    );
}
