//! `distill label` on the local filesystem with tiny models: caching, order, rejects, bad input.

use crate::common::*;
use distill_cache::model_dir::ModelDir;
use distill_teacher::{DeviceSpec, Teacher};
#[allow(unused_imports)]
use object_store::ObjectStoreExt;

#[tokio::test]
async fn second_label_of_the_same_corpus_is_all_cache_hits() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 50);
    let store = dir.path().join("cache").display().to_string();
    let args = label_args(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--shard-size", "16", "--json"],
    );

    let first = run_json(&args);
    assert_eq!(first["shards"], 4);
    assert_eq!(first["shards_labeled"], 4);
    assert_eq!(first["cache_hits"], 0);
    assert_eq!(first["rows"], 50);
    assert!(
        first["truncated_rows"].as_u64().unwrap() > 0,
        "some rows exceed the 24-token limit"
    );
    assert!(first["teacher_seconds"].as_f64().unwrap() > 0.0);
    assert!(first["bytes_written"].as_u64().unwrap() > 0);
    assert_eq!(shard_files(&store).await.len(), 4);

    let second = run_json(&args);
    assert_eq!(second["cache_hits"], 4);
    assert_eq!(second["shards_labeled"], 0);
    assert_eq!(second["teacher_seconds"], 0.0);
    assert_eq!(second["bytes_written"], 0);
    let saved = second["teacher_seconds_saved"].as_f64().unwrap();
    assert!(
        (saved - first["teacher_seconds"].as_f64().unwrap()).abs() < 1e-3,
        "saved {saved}"
    );
    assert_eq!(second["manifest"], first["manifest"]);
    assert_eq!(shard_files(&store).await.len(), 4);

    // Rows come back in corpus order with their own ids.
    let (ids, values, width) = read_corpus_back(&store, &first).await;
    assert_eq!(ids, (0..50).map(|i| format!("doc-{i}")).collect::<Vec<_>>());
    assert_eq!(width, distill_teacher::fixtures::HIDDEN);
    for row in values.chunks(width) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "normalised embeddings, got norm {norm}"
        );
    }

    // A changed row re-labels only its shard, and only that row of it.
    let changed = dir.path().join("changed.jsonl");
    let body = std::fs::read_to_string(&corpus)
        .unwrap()
        .replace("\"doc-20\",\"text\":\"", "\"doc-20\",\"text\":\"new words ");
    std::fs::write(&changed, body).unwrap();
    let third = label_with(
        changed.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--shard-size", "16"],
    );
    assert_eq!(third["cache_hits"], 3);
    assert_eq!(third["shards_labeled"], 1);
    assert_eq!(
        third["rows_reused"], 15,
        "the changed shard's other rows are copied"
    );
}

#[tokio::test]
async fn batched_outputs_equal_one_at_a_time_outputs() {
    // Padding and masks must not change any row's result: the cached value of each row equals the
    // teacher's output for that text alone.
    let dir = tempfile::tempdir().unwrap();
    for (model, output) in [
        (tiny_encoder(dir.path()), "embeddings"),
        (tiny_classifier(dir.path()), "logits"),
    ] {
        let corpus = dir.path().join("corpus.jsonl");
        write_corpus(&corpus, 30);
        let store = dir
            .path()
            .join(format!("cache-{output}"))
            .display()
            .to_string();
        let summary = label_with(
            corpus.to_str().unwrap(),
            model.to_str().unwrap(),
            &store,
            &["--output", output, "--max-batch-tokens", "200"],
        );
        assert!(summary["padded_tokens"].as_u64().unwrap() >= summary["tokens"].as_u64().unwrap());
        let (ids, values, width) = read_corpus_back(&store, &summary).await;
        let teacher = Teacher::load(
            &ModelDir::inspect("tiny", &model).unwrap(),
            &DeviceSpec::Cpu,
        )
        .unwrap();
        assert_eq!(width, teacher.width());
        for (i, id) in ids.iter().enumerate() {
            let n: usize = id.trim_start_matches("doc-").parse().unwrap();
            let alone = teacher
                .label(&[text(n, 2 + (n * 13) % 30).as_str()], 1)
                .unwrap();
            for (a, b) in alone
                .vectors()
                .values
                .iter()
                .zip(&values[i * width..(i + 1) * width])
            {
                assert!((a - b).abs() < 1e-5, "{output} row {id}: {a} vs {b}");
            }
        }
    }
}

#[tokio::test]
async fn bad_rows_go_to_the_rejects_record_or_fail_under_strict() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    let mut body = String::new();
    body.push_str("{\"id\":\"a\",\"text\":\"good movie\"}\n");
    body.push_str("{\"id\":\"b\",\"text\":\"\"}\n");
    body.push_str("{\"id\":\"c\",\"body\":\"wrong field\"}\n");
    body.push_str("{broken json\n");
    body.push_str("{\"id\":\"e\",\"text\":\"bad film\"}\n");
    let mut bytes = body.into_bytes();
    bytes.extend_from_slice(b"{\"id\":\"f\",\"text\":\"caf\xe9\"}\n");
    std::fs::write(&corpus, bytes).unwrap();
    let store = dir.path().join("cache").display().to_string();

    let strict = expect_error(&label_args(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--strict"],
    ));
    assert!(
        strict.contains("line 2")
            && strict.contains("empty text")
            && strict.contains("corpus.jsonl"),
        "{strict}"
    );
    assert!(
        shard_files(&store).await.is_empty(),
        "strict failure leaves no shard"
    );

    let s = label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &[],
    );
    assert_eq!(s["rows"], 2);
    assert_eq!(s["rejected_rows"], 4);
    // The console names the first rejected lines (`corpus:line: reason`), then the count.
    let firsts: Vec<&str> = s["first_rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(firsts.len(), 4, "{firsts:?}");
    assert!(
        firsts[0].ends_with("corpus.jsonl:2: empty text"),
        "{firsts:?}"
    );
    assert!(firsts[3].contains("corpus.jsonl:6: "), "{firsts:?}");
    let out = distill(&label_args(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &[],
    ));
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        console.contains(&format!("rejected    {}", firsts[0]))
            && console.contains("rejects     4 in 1 file(s)"),
        "{console}"
    );
    let loc = distill_cache::store::open(&store, false).unwrap();
    let rejects_url = s["reject_files"][0].as_str().unwrap();
    let rel = rejects_url.strip_prefix(&format!("{store}/")).unwrap();
    let text = String::from_utf8(
        loc.store
            .get(&loc.child(rel))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let reasons: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<u64> = reasons
        .iter()
        .map(|r| r["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3, 4, 6]);
    assert!(reasons[1]["reason"]
        .as_str()
        .unwrap()
        .contains("missing text field"));
    assert!(reasons[2]["reason"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));
    assert!(reasons[3]["reason"]
        .as_str()
        .unwrap()
        .contains("invalid UTF-8"));
}

/// A gzip corpus of a few hundred KB holding one line of 512 MiB: the line is a reject naming the
/// limit, the rows around it are labeled, and the labeling process's peak resident memory (the
/// kernel's figure, read through Python's `getrusage` of the child) stays far below the line's size.
#[test]
fn a_huge_line_in_a_small_gzip_is_a_reject_in_bounded_memory() {
    use std::io::Write;
    let Some(python) = python_with("resource") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("bomb.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"{\"id\":\"a\",\"text\":\"good movie\"}\n{\"id\":\"big\",\"text\":\"")
        .unwrap();
    let piece = vec![b'x'; 1 << 20];
    for _ in 0..512 {
        gz.write_all(&piece).unwrap();
    }
    gz.write_all(b"\"}\n{\"id\":\"b\",\"text\":\"bad film\"}\n")
        .unwrap();
    let bytes = gz.finish().unwrap();
    assert!(bytes.len() < 4 << 20, "{} bytes compressed", bytes.len());
    std::fs::write(&corpus, bytes).unwrap();
    let store = dir.path().join("cache").display().to_string();
    let measure = "import resource, subprocess, sys\n\
r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE)\n\
sys.stdout.buffer.write(r.stdout)\n\
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n\
sys.exit(r.returncode)";
    let mut args = vec!["-c", measure, env!("CARGO_BIN_EXE_distill")];
    args.extend(label_args(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--json"],
    ));
    let out = std::process::Command::new(&python)
        .args(&args)
        .env("DISTILL_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (s["rows"].as_u64(), s["rejected_rows"].as_u64()),
        (Some(2), Some(1))
    );
    let first = s["first_rejects"][0].as_str().unwrap();
    assert!(
        first.contains(":2: a line of ")
            && first.ends_with("bytes, longer than the limit of 8388608 (--max-row-bytes)"),
        "{first}"
    );
    let peak_kb: u64 = err.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        peak_kb < 256 << 10,
        "peak RSS {peak_kb} kB for a line of 512 MiB"
    );
}

#[tokio::test]
async fn classifier_teachers_give_logits_and_refuse_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_classifier(dir.path());
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "good movie\n\nbad film\nvery fun\n").unwrap();
    let store = dir.path().join("cache").display().to_string();
    let s = label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--output", "logits", "--dtype", "f16"],
    );
    assert_eq!(s["rows"], 3);
    let (ids, values, width) = read_corpus_back(&store, &s).await;
    assert_eq!(ids, vec!["line-1", "line-3", "line-4"]);
    assert_eq!((width, values.len()), (3, 9));
    let err = expect_error(&label_args(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &[],
    ));
    assert!(err.contains("--output logits"), "{err}");
}

#[tokio::test]
async fn bad_models_stores_and_corpora_fail_with_one_clear_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 5);
    let c = corpus.to_str().unwrap();
    let store = dir.path().join("cache").display().to_string();
    let run = |teacher: &str, corpus: &str, store: &str| {
        expect_error(&label_args(corpus, teacher, store, &[]))
    };

    let e = run("/nonexistent/model", c, &store);
    assert!(
        e.contains("/nonexistent/model") && e.contains("not a directory"),
        "{e}"
    );

    let empty = dir.path().join("empty-model");
    std::fs::create_dir_all(&empty).unwrap();
    let e = run(empty.to_str().unwrap(), c, &store);
    assert!(e.contains("no config.json"), "{e}");

    // Tokenizer from another model: more tokens than config.json allows.
    let small_vocab = dir.path().join("small-vocab");
    copy_dir(&good, &small_vocab);
    edit_config(&small_vocab, |cfg| cfg["vocab_size"] = 10.into());
    let e = run(small_vocab.to_str().unwrap(), c, &store);
    assert!(e.contains("do not belong together"), "{e}");

    // Weights of another size than config.json says.
    let wide = dir.path().join("wide");
    copy_dir(&good, &wide);
    edit_config(&wide, |cfg| cfg["intermediate_size"] = 128.into());
    let e = run(wide.to_str().unwrap(), c, &store);
    assert!(
        e.contains("weights do not fit config.json") && e.contains("intermediate"),
        "{e}"
    );

    let no_weights = dir.path().join("no-weights");
    copy_dir(&good, &no_weights);
    std::fs::remove_file(no_weights.join("model.safetensors")).unwrap();
    assert!(run(no_weights.to_str().unwrap(), c, &store).contains("no model.safetensors"));

    let e = run(good.to_str().unwrap(), "/nonexistent/corpus.jsonl", &store);
    assert!(e.contains("/nonexistent/corpus.jsonl"), "{e}");

    // A store path that is a file cannot be a directory.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let e = run(
        good.to_str().unwrap(),
        c,
        file.join("cache").to_str().unwrap(),
    );
    assert!(e.contains("a-file"), "{e}");

    let e = run(good.to_str().unwrap(), c, "ftp://host/x");
    assert!(e.contains("unsupported scheme"), "{e}");

    let e = expect_error(&label_args(
        c,
        good.to_str().unwrap(),
        &store,
        &["--shard-size", "0"],
    ));
    assert!(e.contains("shard-size"), "{e}");

    assert!(shard_files(&store).await.is_empty());
}

#[tokio::test]
async fn cache_ls_lists_teacher_output_and_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 20);
    let store = format!("file://{}", dir.path().join("cache").display());
    label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--shard-size", "8"],
    );
    label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--dtype", "f16"],
    );
    let out = distill(&["cache", "ls", "--store", &store, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.len(), 2);
    let shards: Vec<u64> = entries
        .iter()
        .map(|e| e["shards"].as_u64().unwrap())
        .collect();
    assert!(shards.contains(&3) && shards.contains(&1), "{shards:?}");
    for e in &entries {
        assert_eq!(e["rows"], 20);
        assert!(e["bytes"].as_u64().unwrap() > 0);
        assert_eq!(e["corpora"][0], corpus.to_str().unwrap());
    }
    let table = distill(&["cache", "ls", "--store", &store]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("embeddings/f16") && text.contains("embeddings/f32"),
        "{text}"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn edit_config(dir: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut cfg);
    std::fs::write(&p, serde_json::to_vec(&cfg).unwrap()).unwrap();
}
