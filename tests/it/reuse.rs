//! Row reuse and corpora of many files, against the local filesystem and SeaweedFS S3: rows labeled
//! once are copied into the shards of a corpus that holds them prepended to, shuffled, sampled, split
//! over files or renamed; only new rows go through the teacher. And planning with writes in flight,
//! cancelled midway.

use crate::common::*;
use std::collections::HashMap;

/// Where a test's corpora go: a local folder or an S3 prefix.
enum Place {
    Local(std::path::PathBuf),
    S3(String),
}

impl Place {
    /// Writes `bytes` as `name` (a relative path); returns its path or URL.
    async fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        match self {
            Place::Local(dir) => {
                let p = dir.join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, bytes).unwrap();
                p.display().to_string()
            }
            Place::S3(base) => {
                use object_store::ObjectStoreExt;
                let loc = distill_cache::store::open(base, false).unwrap();
                loc.store.put(&loc.child(name), bytes.into()).await.unwrap();
                format!("{base}/{name}")
            }
        }
    }

    /// The URL of a folder (prefix) under it.
    fn folder(&self, name: &str) -> String {
        match self {
            Place::Local(dir) => dir.join(name).display().to_string(),
            Place::S3(base) => format!("{base}/{name}/"),
        }
    }
}

fn jsonl(rows: &[(String, String)]) -> Vec<u8> {
    rows.iter()
        .map(|(id, text)| serde_json::json!({"id": id, "text": text}).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

/// Rows with distinct texts of varied lengths.
fn base_rows(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let text = format!("review {i}: {}", text(i, 2 + (i * 13) % 30));
            (format!("doc-{i}"), text)
        })
        .collect()
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// Each row's embedding, by text, read back through the job's manifest.
async fn outputs_by_text(
    store: &str,
    summary: &serde_json::Value,
    texts: &HashMap<String, String>,
) -> HashMap<String, Vec<f32>> {
    let (ids, values, width) = read_corpus_back(store, summary).await;
    ids.iter()
        .zip(values.chunks(width))
        .map(|(id, v)| (texts[id].clone(), v.to_vec()))
        .collect()
}

async fn reuse_cases(store: &str, place: Place) {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let model = model.to_str().unwrap();
    let label = |corpus: &str| label_with(corpus, model, store, &["--shard-size", "16"]);
    let rows = base_rows(200);
    let base = place.put("base.jsonl", jsonl(&rows)).await;
    let first = label(&base);
    assert_eq!(num(&first, "shards_labeled"), 13);
    assert_eq!(num(&first, "rows_reused"), 0);
    let mut texts: HashMap<String, String> = rows.iter().cloned().collect();
    let reference = outputs_by_text(store, &first, &texts).await;

    let fresh = (
        "new-0".to_owned(),
        "a review nobody wrote before".to_owned(),
    );
    let prepended: Vec<_> = std::iter::once(fresh.clone())
        .chain(rows.iter().cloned())
        .collect();
    let shuffled: Vec<_> = (0..200)
        .map(|i| rows[(i * 37 + 11) % 200].clone())
        .collect();
    let sampled: Vec<_> = rows.iter().step_by(2).cloned().collect();
    let renamed: Vec<_> = rows
        .iter()
        .map(|(id, t)| (format!("renamed-{id}"), t.clone()))
        .collect();
    // Split over three text files (no ids: each row's id comes from its file and line).
    for (part, chunk) in rows.chunks(70).enumerate() {
        let body: String = chunk.iter().map(|(_, t)| format!("{t}\n")).collect();
        place
            .put(&format!("split/part-{part}.txt"), body.into_bytes())
            .await;
        for (line, (_, t)) in chunk.iter().enumerate() {
            texts.insert(format!("part-{part}.txt:line-{}", line + 1), t.clone());
        }
    }
    for (id, t) in prepended.iter().chain(&renamed) {
        texts.insert(id.clone(), t.clone());
    }
    let cases = [
        (
            "prepended",
            place.put("prepended.jsonl", jsonl(&prepended)).await,
            201,
            1,
        ),
        (
            "shuffled",
            place.put("shuffled.jsonl", jsonl(&shuffled)).await,
            200,
            0,
        ),
        (
            "sampled",
            place.put("sampled.jsonl", jsonl(&sampled)).await,
            100,
            0,
        ),
        ("split over files", place.folder("split"), 200, 0),
        (
            "renamed",
            place.put("renamed.jsonl", jsonl(&renamed)).await,
            200,
            0,
        ),
    ];
    let seconds = first["teacher_seconds"].as_f64().unwrap();
    for (case, url, total, new) in cases {
        let s = label(&url);
        assert_eq!(num(&s, "rows"), total, "{case}");
        assert_eq!(num(&s, "cache_hits"), 0, "{case}: every shard is new");
        assert_eq!(
            num(&s, "rows_reused"),
            total - new,
            "{case}: old rows copied"
        );
        // Saved seconds count the copied rows' shares of what their shards cost (no shard was a
        // hit): about the first pass's seconds in proportion to the rows copied. A row copied from
        // an earlier case's shard carries a share of that shard's cost, new rows' included, so the
        // figure is an estimate, not exact.
        let saved = s["teacher_seconds_saved"].as_f64().unwrap();
        let expect = seconds * (total - new) as f64 / 200.0;
        assert!(
            saved > 0.5 * expect && saved < 2.0 * expect,
            "{case}: saved {saved} s, about {expect} s expected"
        );
        // Every old row's outputs are the ones computed the first time, bit for bit.
        let got = outputs_by_text(store, &s, &texts).await;
        assert_eq!(got.len(), total as usize, "{case}");
        for (text, v) in &got {
            match reference.get(text) {
                Some(r) => assert_eq!(v, r, "{case}: {text}"),
                None => assert_eq!(text, &fresh.1, "{case}"),
            }
        }
    }

    // Exact duplicates within a shard are labeled once.
    let dups: Vec<_> = (0..16)
        .map(|i| (format!("dup-{i}"), format!("a twice-seen review {}", i / 2)))
        .collect();
    let s = label(&place.put("dups.jsonl", jsonl(&dups)).await);
    assert_eq!(num(&s, "rows_reused"), 8);
    for (id, t) in &dups {
        texts.insert(id.clone(), t.clone());
    }
    let got = outputs_by_text(store, &s, &texts).await;
    assert_eq!(got.len(), 8);

    // Duplicates across shards of one job: the second shard waits for the first and copies it.
    let cross: Vec<_> = (0..48)
        .map(|i| {
            (
                format!("cross-{i}"),
                format!("a review seen in two shards {}", i % 16),
            )
        })
        .collect();
    let s = label(&place.put("cross.jsonl", jsonl(&cross)).await);
    assert_eq!(num(&s, "shards_labeled"), 3);
    assert_eq!(
        num(&s, "rows_reused"),
        32,
        "shards 1 and 2 copy shard 0: {s}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_are_reused_whatever_the_order_sample_ids_or_files_local() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cache").display().to_string();
    reuse_cases(&store, Place::Local(dir.path().join("corpora"))).await;
    // The row keys are beside the shards, one object per shard.
    let keys = std::fs::read_dir(dir.path().join("cache/v1"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir() && e.file_name() != "jobs")
        .flat_map(|t| std::fs::read_dir(t.path()).unwrap().flatten())
        .filter(|o| o.path().is_dir())
        .map(|o| std::fs::read_dir(o.path().join("rows")).unwrap().count())
        .sum::<usize>();
    assert!(keys >= 13, "{keys} row-key objects");
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_are_reused_whatever_the_order_sample_ids_or_files_s3() {
    let Some(base) = s3_url() else { return };
    let unique = format!(
        "{}/reuse-{}-{}",
        base.trim_end_matches('/'),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    reuse_cases(
        &format!("{unique}/cache"),
        Place::S3(format!("{unique}/corpora")),
    )
    .await;
}

/// A row-key object lost (a worker killed between its commit and that write, or one deleted) is
/// rebuilt by the next planner from the shard's texts, and the rows are still reused.
#[test]
fn lost_row_keys_are_rebuilt_from_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let store = dir.path().join("cache");
    let rows = base_rows(40);
    let base = dir.path().join("base.jsonl");
    std::fs::write(&base, jsonl(&rows)).unwrap();
    let label = |c: &std::path::Path| {
        label_with(
            c.to_str().unwrap(),
            model.to_str().unwrap(),
            store.to_str().unwrap(),
            &["--shard-size", "8"],
        )
    };
    label(&base);
    let mut removed = 0;
    for e in walk(&store) {
        if e.extension().is_some_and(|x| x == "keys") {
            std::fs::remove_file(e).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 5);
    let reversed: Vec<_> = rows.iter().rev().cloned().collect();
    let other = dir.path().join("reversed.jsonl");
    std::fs::write(&other, jsonl(&reversed)).unwrap();
    let s = label(&other);
    assert_eq!(num(&s, "rows_reused"), 40);
    assert_eq!(s["teacher_seconds"].as_f64(), Some(0.0), "nothing labeled");
    let rebuilt = walk(&store)
        .iter()
        .filter(|e| e.extension().is_some_and(|x| x == "keys"))
        .count();
    assert_eq!(rebuilt, 10, "five rebuilt, five new");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

const DATASET: &str = r#"
import sys
import pyarrow as pa
import pyarrow.dataset as ds
ids = [f"p{i}" for i in range(50)]
texts = [f"parquet review {i} of a film" for i in range(50)]
table = pa.table({"id": ids, "text": texts, "stars": list(range(50))})
ds.write_dataset(table, sys.argv[1], format="parquet", max_rows_per_file=12, max_rows_per_group=12,
                 basename_template="part-{i}.parquet")
open(sys.argv[1] + "/_SUCCESS", "w").close()
"#;

/// A Parquet data set written by pyarrow as many files under a folder labels as one corpus: every
/// row, ids from the files, in file order; a glob picks some of the files; mixed formats and an empty
/// match are refused in one line.
#[test]
fn a_pyarrow_parquet_dataset_labels_as_one_corpus() {
    let Some(python) = python_with("pyarrow") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dataset");
    let out = std::process::Command::new(&python)
        .args(["-c", DATASET, data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = std::fs::read_dir(&data).unwrap().count();
    assert_eq!(files, 6, "five part files and _SUCCESS");
    let model = tiny_encoder(dir.path());
    let store = dir.path().join("cache").display().to_string();
    let model = model.to_str().unwrap();
    let s = label_with(
        data.to_str().unwrap(),
        model,
        &store,
        &["--shard-size", "16"],
    );
    assert_eq!(num(&s, "rows"), 50);
    assert_eq!(num(&s, "rejected_rows"), 0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ids, _, _) = rt.block_on(read_corpus_back(&store, &s));
    let want: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    assert_eq!(ids, want, "ids from the id column, in file order");
    // A glob: two of the five files, every row already in the cache.
    let glob = format!("{}/part-[01].parquet", data.display());
    let s = label_with(&glob, model, &store, &["--shard-size", "16"]);
    assert_eq!(num(&s, "rows"), 24);
    assert_eq!(
        num(&s, "cache_hits"),
        1,
        "the first 16 rows are the first shard"
    );
    assert_eq!(num(&s, "rows_reused"), 8, "the other 8 are copied");
    // A JSONL file beside them: two formats, refused naming both.
    std::fs::write(data.join("extra.jsonl"), "{\"text\":\"x\"}\n").unwrap();
    let err = expect_error(&label_args(data.to_str().unwrap(), model, &store, &[]));
    assert!(
        err.contains("two formats")
            && err.contains("extra.jsonl")
            && err.contains("part-0.parquet"),
        "{err}"
    );
    let none = format!("{}/*.txt", data.display());
    let err = expect_error(&label_args(&none, model, &store, &[]));
    assert!(err.contains("no file matches \"*.txt\""), "{err}");
}

/// A job cancelled while it is being planned — lookups and staged writes in flight — leaves no
/// staged input behind once it has ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_cancelled_while_planning_leaves_no_staged_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("big.jsonl");
    let rows: Vec<_> = (0..20_000)
        .map(|i| {
            (
                format!("b{i}"),
                format!("row {i} of a corpus cancelled early"),
            )
        })
        .collect();
    std::fs::write(&corpus, jsonl(&rows)).unwrap();
    let store =
        distill_cache::store::open(dir.path().join("cache").to_str().unwrap(), true).unwrap();
    let settings = distill_coordinator::Settings {
        resume: false,
        ..Default::default()
    };
    let coord = distill_coordinator::Coordinator::new(store.clone(), settings);
    coord.start();
    while !coord.is_ready() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let corpus = distill_cache::corpus::CorpusSpec::new(corpus.to_str().unwrap());
    let spec = distill_coordinator::JobSpec::embeddings(corpus, model.to_str().unwrap(), 2);
    let id = coord.submit(spec).await.unwrap().info.job_id;
    // Cancel once some shards are staged, while the rest are being planned.
    while coord.view(&id).unwrap().ledger.shards < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let view = coord.cancel(&id).await.unwrap();
    assert!(!view.planned, "cancelled before planning ended");
    let inputs = store.child(&distill_cache::jobs::inputs_dir(&id));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = coord.view(&id).unwrap();
        let left = distill_cache::catalog::list_under(&store, &inputs)
            .await
            .unwrap();
        if v.finished_unix_ms > 0 && v.planned && left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "staged inputs left after the cancelled job ended: {} (planned {})",
            left.len(),
            v.planned
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
