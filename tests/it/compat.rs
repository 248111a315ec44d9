//! Compatibility is a promise: a store written by the first release (`tests/data/compat-0.1.0`, made
//! with that release's binary) keeps every fingerprint — labeling its corpus again is all cache hits —
//! and is read whole: `cache ls`, its task, a student trained from it. A store that also holds an
//! entry of an output kind this release does not know is listed and skipped, not refused.

use crate::common::*;
use std::path::Path;

const ENCODER: &str = "7baa6a570dc2a9b21e33fb49e85fdbad";
const CLASSIFIER: &str = "d88f3aaa10a0a70786b6d1b70bfb30f1";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A fresh copy of the first release's store, and its corpus.
fn old_store(dir: &Path) -> (String, String) {
    let data = repo_root().join("tests/data/compat-0.1.0");
    let store = dir.join("store");
    copy_dir(&data.join("store"), &store);
    let corpus = dir.join("corpus.jsonl");
    std::fs::copy(data.join("corpus.jsonl"), &corpus).unwrap();
    (store.display().to_string(), corpus.display().to_string())
}

#[test]
fn a_store_of_the_first_release_is_all_cache_hits() {
    let dir = tempfile::tempdir().unwrap();
    let (store, corpus) = old_store(dir.path());
    let encoder = tiny_encoder(dir.path());
    let classifier = tiny_classifier(dir.path());
    for (model, fp) in [(&encoder, ENCODER), (&classifier, CLASSIFIER)] {
        let md = distill_cache::model_dir::ModelDir::inspect("m", model).unwrap();
        assert_eq!(
            md.fingerprint("f32").unwrap().as_str(),
            fp,
            "teacher fingerprint"
        );
    }
    for (model, extra) in [
        (&encoder, vec![]),
        (&encoder, vec!["--dtype", "f16"]),
        (&classifier, vec!["--output", "logits"]),
    ] {
        let mut args = vec!["--shard-size", "5"];
        args.extend(extra.iter());
        let s = label_with(&corpus, model.to_str().unwrap(), &store, &args);
        assert_eq!(s["shards"], 3, "{extra:?}");
        assert_eq!(s["cache_hits"], 3, "{extra:?}: every shard a hit");
        assert_eq!(s["shards_labeled"], 0);
        assert_eq!(s["teacher_seconds"], 0.0);
    }
    // Nothing was added: the same shard files as the first release wrote.
    let files = shard_files_sync(&store);
    assert_eq!(files.len(), 12, "{files:?}");
    // Its task is read and a student trains from it.
    let out = dir.path().join("student");
    let run = distill(&[
        "train",
        "--cache",
        &store,
        "--task",
        "sentiment",
        "--student",
        "ngram",
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.join("config.json").is_file() || out.read_dir().unwrap().next().is_some());
}

/// The first release wrote no row keys: the planner rebuilds them from its shards' texts, so its rows
/// are reused by a corpus that holds them in another order under other ids.
#[test]
fn rows_of_the_first_release_are_reused_in_a_new_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, corpus) = old_store(dir.path());
    let encoder = tiny_encoder(dir.path());
    let body = std::fs::read_to_string(&corpus).unwrap();
    let reordered: String = body
        .lines()
        .rev()
        .map(|l| l.replace("\"doc-", "\"old-") + "\n")
        .collect();
    let other = dir.path().join("reordered.jsonl");
    std::fs::write(&other, reordered).unwrap();
    let s = label_with(
        other.to_str().unwrap(),
        encoder.to_str().unwrap(),
        &store,
        &["--shard-size", "5"],
    );
    assert_eq!(s["cache_hits"], 0);
    assert_eq!(s["rows_reused"], s["rows"], "every row copied: {s}");
    assert_eq!(s["teacher_seconds"], 0.0);
    // The three shards of the old f32 entry got their row keys, and the three new shards theirs.
    let entry = Path::new(&store).join("v1").join(ENCODER);
    let keys: usize = std::fs::read_dir(&entry)
        .unwrap()
        .flatten()
        .filter_map(|o| std::fs::read_dir(o.path().join("rows")).ok())
        .map(|r| r.count())
        .sum();
    assert_eq!(keys, 6);
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn shard_files_sync(store: &str) -> Vec<String> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(shard_files(store))
}

/// Adds an entry of a kind a newer release might write: its own output.json, one shard whose footer
/// names the kind, and a corpus manifest.
fn add_future_entry(store: &Path) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let teacher = store.join("v1").join(ENCODER);
    let base = teacher.join("26052538ee7fdf2d9765ae98f2c0398a");
    let future = teacher.join("0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(future.join("shards")).unwrap();
    std::fs::create_dir_all(future.join("corpora")).unwrap();
    let spec = r#"{"kind":"future_kind","dtype":"f32","beams":4}"#;
    std::fs::write(future.join("output.json"), spec).unwrap();
    let shard = std::fs::read_dir(base.join("shards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&shard).unwrap()).unwrap();
    let kv: Vec<parquet::file::metadata::KeyValue> = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|e| match e.key.as_str() {
            "distill.output_spec" => {
                parquet::file::metadata::KeyValue::new(e.key.clone(), spec.to_string())
            }
            "distill.output_fingerprint" => parquet::file::metadata::KeyValue::new(
                e.key.clone(),
                "0123456789abcdef0123456789abcdef".to_string(),
            ),
            _ => e.clone(),
        })
        .collect();
    let schema = reader.schema().clone();
    let batches: Vec<_> = reader.build().unwrap().map(|b| b.unwrap()).collect();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(kv))
        .build();
    let out =
        std::fs::File::create(future.join("shards").join(shard.file_name().unwrap())).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(out, schema, Some(props)).unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    for m in std::fs::read_dir(base.join("corpora")).unwrap() {
        let m = m.unwrap().path();
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
        json["output"] = "0123456789abcdef0123456789abcdef".into();
        std::fs::write(
            future.join("corpora").join(m.file_name().unwrap()),
            json.to_string(),
        )
        .unwrap();
    }
}

#[test]
fn an_unknown_output_kind_is_listed_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = old_store(dir.path());
    add_future_entry(Path::new(&store));
    let ls = distill(&["cache", "ls", "--store", &store]);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(text.contains("future_kind (unknown kind)"), "{text}");
    assert!(
        text.contains("embeddings/f32") && text.contains("logits/f32"),
        "{text}"
    );
    // Tasks only look at the kinds they know: the classifier's logits are still a task.
    let s = run_json(&[
        "task",
        "fit",
        "--cache",
        &store,
        "--name",
        "from-classifier",
        "--teacher-fingerprint",
        CLASSIFIER,
        "--json",
    ]);
    assert_eq!(s["kind"], "teacher", "{s}");
    // One teacher's two outputs of a corpus are told apart by --output, and named when ambiguous.
    let gold = repo_root().join("tests/data/compat-0.1.0/gold.jsonl");
    let fit = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "task",
            "fit",
            "--cache",
            &store,
            "--name",
            "again",
            "--teacher-fingerprint",
            ENCODER,
            "--labels",
            gold.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push("--json".into());
        a
    };
    let err = expect_error(&refs(&fit(&[])));
    assert!(
        err.contains("embeddings/f32 260525") && err.contains("embeddings/f16 d26be2"),
        "{err}"
    );
    assert!(err.contains("--output"), "{err}");
    let s = run_json(&refs(&fit(&["--output", "embeddings/f16"])));
    assert_eq!(s["base_output"], "d26be282dd03820813af14cd76cc0b3f", "{s}");
}
