//! Shared helpers: tiny models, corpora, running the binary, prerequisites.

use distill_teacher::fixtures::{write_tiny_bert, TinyKind};
use object_store::ObjectStoreExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn require_all() -> bool {
    std::env::var("DISTILL_REQUIRE_ALL")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// Skips (returns None) or fails, depending on `DISTILL_REQUIRE_ALL`, when a prerequisite is missing.
pub fn prerequisite<T>(what: &str, value: Option<T>) -> Option<T> {
    if value.is_none() {
        assert!(!require_all(), "prerequisite missing: {what}");
        eprintln!("skipped: {what} is not available");
    }
    value
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real all-MiniLM-L6-v2 directory, if fetched.
pub fn minilm() -> Option<PathBuf> {
    let dir = std::env::var("DISTILL_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("assets/models/all-MiniLM-L6-v2"));
    prerequisite(
        "the real teacher (run scripts/fetch-assets.sh)",
        dir.join("model.safetensors").is_file().then_some(dir),
    )
}

/// The Rotten Tomatoes corpus, if fetched.
pub fn rotten_tomatoes() -> Option<PathBuf> {
    let p = repo_root().join("assets/corpora/rotten-tomatoes/corpus.jsonl");
    prerequisite(
        "the Rotten Tomatoes corpus (run scripts/fetch-assets.sh)",
        p.is_file().then_some(p),
    )
}

pub fn s3_url() -> Option<String> {
    prerequisite(
        "an S3 server (DISTILL_TEST_S3_URL; scripts/test.sh starts SeaweedFS)",
        std::env::var("DISTILL_TEST_S3_URL").ok(),
    )
}

pub fn tiny_encoder(dir: &Path) -> PathBuf {
    let p = dir.join("tiny-encoder");
    write_tiny_bert(
        &p,
        &TinyKind::SentenceEncoder {
            pooling: "mean",
            normalize: true,
        },
        7,
    )
    .unwrap();
    p
}

pub fn tiny_classifier(dir: &Path) -> PathBuf {
    let p = dir.join("tiny-classifier");
    write_tiny_bert(
        &p,
        &TinyKind::Classifier {
            labels: vec!["negative".into(), "positive".into(), "neutral".into()],
        },
        11,
    )
    .unwrap();
    p
}

const WORDS: &[&str] = &[
    "the", "movie", "was", "good", "bad", "very", "fun", "boring", "film", "great", "awful", "not",
    "a",
];

/// A deterministic text of `n` words.
pub fn text(i: usize, n: usize) -> String {
    (0..n)
        .map(|j| WORDS[(i * 7 + j * 3 + i / 5) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A JSONL corpus of `n` rows with ids `doc-<i>` and varied lengths (some longer than the tiny model's
/// 24-token limit).
pub fn write_corpus(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        let len = 2 + (i * 13) % 30;
        s.push_str(
            &serde_json::json!({"id": format!("doc-{i}"), "text": text(i, len)}).to_string(),
        );
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

pub fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .env("DISTILL_LOG", "warn")
        .output()
        .expect("run distill")
}

/// Runs a command that must fail; returns its stderr, checked to be one `error:` line.
pub fn expect_error(args: &[&str]) -> String {
    let out = distill(args);
    assert!(!out.status.success(), "expected failure of {args:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let last = err.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("error: "), "{err}");
    last
}

/// Every `.parquet` object under a store (relative paths).
pub async fn shard_files(store: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let loc = distill_cache::store::open(store, true).unwrap();
    let all: Vec<_> = loc
        .store
        .list(Some(&loc.prefix))
        .try_collect()
        .await
        .unwrap();
    let mut v: Vec<String> = all
        .into_iter()
        .map(|o| o.location.to_string())
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    v.sort();
    v
}

/// Reads every shard of a corpus manifest back, in corpus order: (ids, values, width).
pub async fn read_corpus_back(
    store: &str,
    summary: &serde_json::Value,
) -> (Vec<String>, Vec<f32>, usize) {
    let loc = distill_cache::store::open(store, false).unwrap();
    let manifest_path = loc.child(summary["manifest"].as_str().unwrap());
    let bytes = loc
        .store
        .get(&manifest_path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let m: distill_cache::catalog::CorpusManifest = serde_json::from_slice(&bytes).unwrap();
    let (mut ids, mut values, mut width) = (vec![], vec![], 0);
    for s in &m.shards {
        let key = distill_cache::layout::ShardKey {
            teacher: m.teacher.clone(),
            output: m.output.clone(),
            shard: s.fingerprint.clone(),
        };
        let (meta, data) = distill_cache::commit::read_shard(&loc, &key).await.unwrap();
        assert_eq!(meta.rows, s.rows);
        ids.extend(data.ids.clone());
        let v = data.vectors().expect("per-example values");
        values.extend(v.values.clone());
        width = v.width;
    }
    (ids, values, width)
}

/// The command line `label --corpus C --teacher T --store S EXTRA…`.
pub fn label_args<'a>(
    corpus: &'a str,
    teacher: &'a str,
    store: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "label",
        "--corpus",
        corpus,
        "--teacher",
        teacher,
        "--store",
        store,
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs a full `distill …` command line that ends in `--json`; returns the summary, panics with stderr.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let out = distill(args);
    assert!(
        out.status.success(),
        "distill {} failed: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary JSON")
}

/// `distill label --corpus C --teacher T --store S EXTRA… --json`, returning the summary.
pub fn label_with(corpus: &str, teacher: &str, store: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = label_args(corpus, teacher, store, extra);
    args.push("--json");
    run_json(&args)
}

/// The Python interpreter (`DISTILL_PYTHON`, default `python3`) if it can import `modules`; a missing
/// one is a skipped prerequisite (a failure under `DISTILL_REQUIRE_ALL=1`).
pub fn python_with(modules: &str) -> Option<String> {
    let python = std::env::var("DISTILL_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    prerequisite(&format!("{python} with {modules}"), ok.then_some(python))
}

/// Runs `scripts/llama_reference.py` (the independent float64 numpy decoder) with `args` and an input
/// file (`input_flag`: `--texts` or `--ids`, `input` its JSON) and returns its output.
pub fn llama_reference(
    python: &str,
    args: &[&str],
    input_flag: &str,
    input: &serde_json::Value,
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (
        dir.path().join("input.json"),
        dir.path().join("reference.json"),
    );
    std::fs::write(&inp, serde_json::to_vec(input).unwrap()).unwrap();
    let run = Command::new(python)
        .arg(repo_root().join("scripts/llama_reference.py"))
        .args(args)
        .arg(input_flag)
        .arg(&inp)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "llama_reference.py: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
}
