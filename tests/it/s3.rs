//! The cache on a real S3-compatible server (SeaweedFS, started by scripts/test.sh).

use crate::common::*;
use distill_cache::commit::{commit_shard, CommitOutcome};
#[allow(unused_imports)]
use object_store::ObjectStoreExt;

fn unique(base: &str, name: &str) -> String {
    format!("{}/{name}-{}", base.trim_end_matches('/'), uuid_like())
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[tokio::test]
async fn label_writes_and_rereads_the_cache_on_s3() {
    let Some(base) = s3_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 40);
    let store = unique(&base, "label");
    let args = label_args(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--shard-size", "16", "--json"],
    );
    let first = run_json(&args);
    assert_eq!(
        (first["shards_labeled"].as_u64(), first["rows"].as_u64()),
        (Some(3), Some(40))
    );
    let second = run_json(&args);
    assert_eq!(
        (
            second["cache_hits"].as_u64(),
            second["teacher_seconds"].as_f64()
        ),
        (Some(3), Some(0.0))
    );
    let (ids, _, _) = read_corpus_back(&store, &first).await;
    assert_eq!(ids.len(), 40);
    assert_eq!(shard_files(&store).await.len(), 3);
    let ls = distill(&["cache", "ls", "--store", &store, "--json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(entries[0]["rows"], 40);

    // The same corpus, gzip-compressed in the object store: same shards, so all cache hits.
    let gz = gzip(&std::fs::read(&corpus).unwrap());
    let corpus_url = format!("{store}/input/corpus.jsonl.gz");
    let loc = distill_cache::store::open(&store, false).unwrap();
    loc.store
        .put(&loc.child("input/corpus.jsonl.gz"), gz.into())
        .await
        .unwrap();
    let remote = label_with(
        &corpus_url,
        model.to_str().unwrap(),
        &store,
        &["--shard-size", "16"],
    );
    assert_eq!(
        (remote["cache_hits"].as_u64(), remote["rows"].as_u64()),
        (Some(3), Some(40))
    );
}

/// Compresses with the `gzip` tool, an encoder we did not write.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

#[tokio::test]
async fn the_teacher_can_be_read_from_s3() {
    let Some(base) = s3_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let models = unique(&base, "models");
    let loc = distill_cache::store::open(&models, false).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        let bytes = std::fs::read(model.join(f)).unwrap();
        loc.store
            .put(&loc.child(&format!("tiny/{f}")), bytes.into())
            .await
            .unwrap();
    }
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 10);
    let local_store = dir.path().join("cache").display().to_string();
    let remote = label_with(
        corpus.to_str().unwrap(),
        &format!("{models}/tiny"),
        &local_store,
        &[],
    );
    // The same teacher, loaded from disk, has the same fingerprint: everything is a cache hit.
    let local = label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &local_store,
        &[],
    );
    assert_eq!(remote["teacher_fingerprint"], local["teacher_fingerprint"]);
    assert_eq!(local["cache_hits"], 1);
}

#[tokio::test]
async fn concurrent_commits_of_one_shard_have_exactly_one_winner() {
    let Some(base) = s3_url() else { return };
    let loc = distill_cache::store::open(&unique(&base, "race"), false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let teacher = distill_teacher::Teacher::load(
        &distill_cache::model_dir::ModelDir::inspect("tiny", &model).unwrap(),
        &distill_teacher::DeviceSpec::Cpu,
    )
    .unwrap();
    let corpus = dir.path().join("c.jsonl");
    write_corpus(&corpus, 8);
    let mut reader = distill_cache::corpus::CorpusReader::open(
        &distill_cache::corpus::CorpusSpec::new(corpus.to_str().unwrap()),
    )
    .await
    .unwrap();
    let shard = reader.next_shard(8).await.unwrap().unwrap();
    let spec = distill_cache::spec::OutputSpec::Embeddings {
        dtype: distill_cache::spec::Dtype::F32,
    };
    let labeled =
        distill_teacher::pass::label_shard(&teacher, &shard, &spec, "c.jsonl", 512).unwrap();
    let key = distill_cache::layout::ShardKey {
        teacher: teacher.info().fingerprint.clone(),
        output: spec.fingerprint(),
        shard: shard.fingerprint.clone(),
    };
    for round in 0..5 {
        let mut key = key.clone();
        key.shard = distill_cache::fingerprint::Hasher::new("race")
            .u64(round)
            .clone()
            .finish();
        let mut meta = labeled.meta.clone();
        meta.shard_fingerprint = key.shard.clone();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (loc, key, meta, data) =
                    (loc.clone(), key.clone(), meta.clone(), labeled.data.clone());
                tokio::spawn(
                    async move { commit_shard(&loc, &key, &meta, &data, &[]).await.unwrap() },
                )
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), CommitOutcome::Committed { .. }) {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}");
    }
}

#[test]
fn a_missing_bucket_and_an_unreachable_endpoint_are_named() {
    let Some(_) = s3_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 3);
    let e = expect_error(&label_args(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        "s3://no-such-bucket-distill/x",
        &[],
    ));
    assert!(
        e.contains("s3://no-such-bucket-distill/x") && e.contains("bucket does not exist"),
        "{e}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args([
            "label",
            "--corpus",
            corpus.to_str().unwrap(),
            "--teacher",
            model.to_str().unwrap(),
            "--store",
            "s3://distill-test/x",
        ])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot reach the store"), "{err}");
}

#[test]
fn a_coordinator_whose_bucket_is_missing_exits_with_the_reason() {
    let Some(_) = s3_url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = crate::cluster::free_port();
    let mut c = crate::cluster::coordinator(
        dir.path(),
        "no-bucket",
        port,
        "s3://no-such-bucket-distill/x",
        &[],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(s) = c.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a coordinator on a missing bucket kept running"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(!status.success());
    let log = c.log_text();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ")
            && last.contains("s3://no-such-bucket-distill/x")
            && last.contains("bucket does not exist"),
        "{log}"
    );
}
