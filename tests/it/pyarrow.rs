//! A produced shard, read by pyarrow: a reader we did not write checks the schema and metadata.

use crate::common::*;

const SCRIPT: &str = r#"
import json, sys
import pyarrow.parquet as pq
f = pq.ParquetFile(sys.argv[1])
t = f.read()
meta = {k.decode(): v.decode() for k, v in (f.metadata.metadata or {}).items() if k.startswith(b"distill.")}
print(json.dumps({
    "fields": [[fld.name, str(fld.type)] for fld in t.schema],
    "rows": t.num_rows,
    "meta": meta,
    "first_id": t.column("id")[0].as_py(),
    "first_len": len(t.column(sys.argv[2])[0].as_py()),
}))
"#;

#[tokio::test]
async fn pyarrow_reads_the_documented_schema_and_metadata() {
    let Some(python) = python_with("pyarrow") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(dir.path());
    let classifier = tiny_classifier(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 12);
    for (model, output, dtype, column, item) in [
        (
            &encoder,
            "embeddings",
            "f32",
            "embedding",
            "fixed_size_list<item: float not null>[32]",
        ),
        (
            &encoder,
            "embeddings",
            "f16",
            "embedding",
            "fixed_size_list<item: halffloat not null>[32]",
        ),
        (
            &classifier,
            "logits",
            "f32",
            "logits",
            "fixed_size_list<item: float not null>[3]",
        ),
    ] {
        let store = dir
            .path()
            .join(format!("cache-{output}-{dtype}"))
            .display()
            .to_string();
        let s = label_with(
            corpus.to_str().unwrap(),
            model.to_str().unwrap(),
            &store,
            &["--output", output, "--dtype", dtype],
        );
        let files = shard_files(&store).await;
        assert_eq!(files.len(), 1);
        let path = std::path::Path::new(&store).join(&files[0]);
        let out = std::process::Command::new(&python)
            .args(["-c", SCRIPT, path.to_str().unwrap(), column])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let fields: Vec<(String, String)> = serde_json::from_value(v["fields"].clone()).unwrap();
        let expect = [
            ("id", "string"),
            ("text", "string"),
            ("tokens", "int32"),
            ("truncated", "bool"),
            (column, item),
        ];
        assert_eq!(
            fields,
            expect
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        );
        assert_eq!(v["rows"], 12);
        assert_eq!(v["first_id"], "doc-0");
        let meta = &v["meta"];
        assert_eq!(meta["distill.schema_version"], "1");
        assert_eq!(meta["distill.rows"], "12");
        assert_eq!(
            meta["distill.teacher_fingerprint"],
            s["teacher_fingerprint"]
        );
        assert_eq!(meta["distill.output_fingerprint"], s["output_fingerprint"]);
        assert!(files[0].ends_with(&format!(
            "{}.parquet",
            meta["distill.shard_fingerprint"].as_str().unwrap()
        )));
        let spec: serde_json::Value =
            serde_json::from_str(meta["distill.output_spec"].as_str().unwrap()).unwrap();
        assert_eq!(
            (spec["kind"].as_str(), spec["dtype"].as_str()),
            (Some(output), Some(dtype))
        );
        let teacher: serde_json::Value =
            serde_json::from_str(meta["distill.teacher"].as_str().unwrap()).unwrap();
        assert_eq!(teacher["fingerprint"], s["teacher_fingerprint"]);
        for key in [
            "distill.producer",
            "distill.tokens",
            "distill.device_seconds",
            "distill.device",
            "distill.shard_index",
            "distill.truncated_rows",
        ] {
            assert!(meta.get(key).is_some(), "metadata key {key}");
        }
    }
}

/// Every snippet of docs/cache-format.md's "Reading the cache elsewhere", run with pyarrow, DuckDB and
/// polars on a store that holds two kinds of entry (embeddings, and a task's derived logits) and two
/// corpora of the same rows: the per-entry paths read one entry (both corpora), the union by name
/// reads both entries, the manifest one corpus.
#[test]
fn the_cache_format_pages_snippets_run_with_pyarrow_duckdb_and_polars() {
    let Some(python) = python_with("pyarrow, duckdb, polars") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let encoder = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 30);
    let store = dir.path().join("cache").display().to_string();
    let job = label_with(
        corpus.to_str().unwrap(),
        encoder.to_str().unwrap(),
        &store,
        &["--shard-size", "16"],
    );
    // The same rows in another order: new shards of copied rows, so the entry holds each text twice
    // and only the manifest says which rows are the first corpus's.
    let body = std::fs::read_to_string(&corpus).unwrap();
    let reversed = dir.path().join("reversed.jsonl");
    let lines: String = body.lines().rev().map(|l| format!("{l}\n")).collect();
    std::fs::write(&reversed, lines).unwrap();
    let again = label_with(
        reversed.to_str().unwrap(),
        encoder.to_str().unwrap(),
        &store,
        &["--shard-size", "16"],
    );
    assert_eq!(again["rows_reused"], 30);
    let manifest = job["manifest"].as_str().unwrap();
    let corpus_fp = manifest
        .rsplit('/')
        .next()
        .and_then(|f| f.strip_suffix(".json"))
        .unwrap();
    let gold = dir.path().join("gold.jsonl");
    let lines: String = (0..30)
        .map(|i| {
            format!(
                "{{\"id\":\"doc-{i}\",\"label\":\"{}\"}}\n",
                ["a", "b"][i % 2]
            )
        })
        .collect();
    std::fs::write(&gold, lines).unwrap();
    let task = run_json(&[
        "task",
        "fit",
        "--cache",
        &store,
        "--name",
        "docs",
        "--corpus",
        "corpus.jsonl",
        "--labels",
        gold.to_str().unwrap(),
        "--json",
    ]);
    assert_ne!(
        task["output"], task["base_output"],
        "a derived logits entry"
    );
    let doc = repo_root().join("docs/cache-format.md");
    let script = repo_root().join("scripts/check_cache_docs.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args([
            doc.to_str().unwrap(),
            &store,
            job["teacher_fingerprint"].as_str().unwrap(),
            job["output_fingerprint"].as_str().unwrap(),
            "60",
            "90",
            corpus_fp,
            "30",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        said.lines().filter(|l| l.starts_with("ok ")).count(),
        7,
        "{said}"
    );
}
