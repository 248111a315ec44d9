//! A writer killed mid-shard (SIGKILL of the real process) leaves no partial shard, and a rerun
//! finishes the job, reusing what was committed.

use crate::common::*;
#[allow(unused_imports)]
use object_store::ObjectStoreExt;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_writer_killed_mid_shard_leaves_no_committed_partial_shard() {
    let Some(model) = minilm() else { return };
    let Some(rt) = rotten_tomatoes() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 600 real snippets in shards of 100: each shard takes the real teacher a while on a CPU.
    let corpus = dir.path().join("corpus.jsonl");
    let body: String = std::fs::read_to_string(&rt)
        .unwrap()
        .lines()
        .take(600)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&corpus, body).unwrap();
    let store = dir.path().join("cache").display().to_string();
    let args = label_args(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--shard-size", "100"],
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first commit, then kill while the next shard is being labeled.
    let deadline = Instant::now() + Duration::from_secs(300);
    while shard_files(&store).await.is_empty() {
        assert!(Instant::now() < deadline, "no shard committed in time");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job must still be running when killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let committed = shard_files(&store).await;
    assert!(
        !committed.is_empty() && committed.len() < 6,
        "killed mid-job: {} shards",
        committed.len()
    );
    // Every object that looks like a result is a complete, valid shard.
    let loc = distill_cache::store::open(&store, false).unwrap();
    for f in &committed {
        let bytes = loc
            .store
            .get(&object_store::path::Path::from(f.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (meta, data) = distill_cache::format::decode(f, bytes).unwrap();
        assert_eq!(meta.rows + meta.rejected_rows, 100);
        assert_eq!(data.rows() as u64, meta.rows);
    }

    // The rerun labels only what is missing and ends with every row exactly once.
    let s = run_json(&[&args[..], &["--json"]].concat());
    assert_eq!(s["cache_hits"].as_u64().unwrap(), committed.len() as u64);
    assert_eq!(
        s["shards_labeled"].as_u64().unwrap(),
        6 - committed.len() as u64
    );
    // The first 600 snippets hold one empty text (rt-00221): a reject, not a row.
    assert_eq!(
        (s["rows"].as_u64(), s["rejected_rows"].as_u64()),
        (Some(599), Some(1))
    );
    let (ids, _, _) = read_corpus_back(&store, &s).await;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (599, 599));
    assert!(!ids.contains(&"rt-00221".to_string()));
}
