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

/// Fails every shard-file put after the first `allow` of them.
#[derive(Debug)]
struct FailShardPuts {
    inner: Arc<dyn ObjectStore>,
    allow: usize,
    seen: AtomicUsize,
}

impl std::fmt::Display for FailShardPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FailShardPuts({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FailShardPuts {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if location.as_ref().ends_with(".parquet")
            && self.seen.fetch_add(1, Ordering::SeqCst) >= self.allow
        {
            return Err(object_store::Error::Generic {
                store: "fault",
                source: "injected: connection reset by peer".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
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

struct Quiet;
impl distill_coordinator::Progress for Quiet {
    fn start(&self, _: u64) {}
    fn shard_done(&self, _: u64, _: u64, _: bool) {}
}

async fn run_job(
    store: Location,
    model: &std::path::Path,
    corpus: &std::path::Path,
) -> distill_coordinator::Result<distill_coordinator::JobSummary> {
    let dir = distill_cache::model_dir::ModelDir::inspect("tiny", model).unwrap();
    let teacher = distill_worker::Teacher::load(&dir, &distill_worker::DeviceSpec::Cpu).unwrap();
    let exec = Arc::new(distill::label::TeacherExecutor {
        teacher,
        max_batch_tokens: 512,
    });
    let job = distill_coordinator::JobSpec {
        corpus: distill_cache::corpus::CorpusSpec::new(corpus.to_str().unwrap()),
        store,
        output: distill_cache::format::OutputSpec {
            kind: distill_cache::format::OutputKind::Embeddings,
            dtype: distill_cache::format::Dtype::F32,
        },
        shard_size: 10,
        strict: false,
    };
    distill_coordinator::local::run(job, exec, &Quiet).await
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
        let faulty = real.clone().with_store(Arc::new(FailShardPuts {
            inner: real.store.clone(),
            allow: 2,
            seen: AtomicUsize::new(0),
        }));
        let err = run_job(faulty, &model, &corpus)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("injected") && err.contains(".parquet") && err.contains(&url),
            "{err}"
        );
        assert_eq!(
            shard_files(&url).await.len(),
            2,
            "{url}: only the shards committed before the fault"
        );
        let summary = run_job(real, &model, &corpus).await.unwrap();
        assert_eq!(
            (summary.cache_hits, summary.shards_labeled, summary.rows),
            (2, 3, 50),
            "{url}"
        );
        assert_eq!(shard_files(&url).await.len(), 5);
    }
}
