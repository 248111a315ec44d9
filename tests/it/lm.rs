//! LM students from a decoder teacher's cached per-token top-k, with the teacher switched off: train
//! (CE, top-k + tail KD, sampled KD), evaluate on held-out rows from the cache, score and continue
//! texts, export (HF directory checked by an independent numpy forward; GGUF), resume after SIGKILL,
//! and refuse what cannot train.

use crate::common::*;
use crate::decoder::tiny_llama;
use std::path::{Path, PathBuf};

/// A tiny GGUF teacher, a corpus of 60 rows labeled with top-8 and 8 samples per position, and a
/// held-out file of 8 ids.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    corpus: PathBuf,
    store: String,
    held_out: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let model = tiny_llama(&root, Default::default());
    let corpus = root.join("corpus.jsonl");
    write_corpus(&corpus, 60);
    let store = root.join("cache").display().to_string();
    label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &[
            "--output",
            "token-topk",
            "--top-k",
            "8",
            "--samples",
            "8",
            "--shard-size",
            "20",
        ],
    );
    let held_out = root.join("held-out.txt");
    std::fs::write(
        &held_out,
        (52..60).map(|i| format!("doc-{i}\n")).collect::<String>(),
    )
    .unwrap();
    Setup {
        _dir: dir,
        root,
        model,
        corpus,
        store,
        held_out,
    }
}

fn train_args<'a>(s: &'a Setup, out: &'a str, loss: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--cache",
        &s.store,
        "--student",
        "lm",
        "--out",
        out,
        "--loss",
        loss,
        "--exclude",
        s.held_out.to_str().unwrap(),
        "--layers",
        "1",
        "--max-seq",
        "16",
        "--batch",
        "4",
        "--epochs",
        "3",
    ];
    a.extend_from_slice(extra);
    a
}

fn eval(s: &Setup, model: &Path) -> serde_json::Value {
    run_json(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--cache",
        &s.store,
        "--held-out",
        s.held_out.to_str().unwrap(),
        "--json",
    ])
}

#[test]
fn lm_students_train_evaluate_score_and_export() {
    let s = setup();
    let mut reports = vec![];
    for loss in ["ce", "topk", "sampled"] {
        let out = s.root.join(format!("student-{loss}"));
        let run = distill(&train_args(
            &s,
            out.to_str().unwrap(),
            loss,
            &["--gguf", "q8_0"],
        ));
        assert!(
            run.status.success(),
            "{loss}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "distill.json",
            "model.gguf",
        ] {
            assert!(out.join(f).is_file(), "{loss}: {f}");
        }
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("distill.json")).unwrap()).unwrap();
        assert_eq!(info["kind"], "lm");
        assert_eq!(info["training"]["excluded_ids"], 8);
        let r = eval(&s, &out);
        assert_eq!(r["rows"], 8, "{r}");
        assert!(r["perplexity"].as_f64().unwrap().is_finite(), "{r}");
        assert!(r["kl_to_teacher"].as_f64().unwrap() >= 0.0);
        assert!(r["tokens_per_second_batched"].as_f64().unwrap() > 0.0);
        reports.push(r);
    }
    // The teacher against its own cache: no divergence, full agreement.
    let t = eval(&s, &s.model);
    assert!(t["kl_to_teacher"].as_f64().unwrap() < 1e-3, "{t}");
    assert_eq!(t["top1_agreement"], 1.0, "{t}");

    // Scoring and continuing texts with a student.
    let student = s.root.join("student-topk");
    let texts = s.root.join("texts.jsonl");
    std::fs::write(&texts, "{\"id\": \"a\", \"text\": \"the movie was good\"}\n{\"id\": \"b\", \"text\": \"a very boring film\"}\n").unwrap();
    let out = distill(&[
        "predict",
        "--model",
        student.to_str().unwrap(),
        "--input",
        texts.to_str().unwrap(),
        "--generate",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["log_likelihood"].as_f64().unwrap() < 0.0);
    assert!(lines[0]["continuation"].is_string());

    // The exported HF directory, read by an independent numpy forward: the same log-likelihoods.
    let Some(python) = python_with("numpy, safetensors, gguf, regex") else {
        return;
    };
    let tok = distill_teacher::tokenizer::TextTokenizer::hf_decoder(
        "student",
        &student.join("tokenizer.json"),
    )
    .unwrap();
    let ids: Vec<Vec<u32>> = tok
        .encode(&["the movie was good", "a very boring film"])
        .unwrap()
        .into_iter()
        .map(|e| e.ids)
        .collect();
    for (source, path) in [
        ("--hf", student.clone()),
        ("--gguf", student.join("model.gguf")),
    ] {
        let r = llama_reference(
            &python,
            &[
                source,
                path.to_str().unwrap(),
                "--top-k",
                "3",
                "--dump-logprobs",
            ],
            "--ids",
            &serde_json::json!(ids),
        );
        for (row, line) in r["rows"].as_array().unwrap().iter().zip(&lines) {
            let lps: Vec<f64> =
                serde_json::from_value(row["logprobs_at"]["target_logprob"].clone()).unwrap();
            let want: f64 = lps.iter().sum();
            let got = line["log_likelihood"].as_f64().unwrap();
            // The GGUF holds q8_0 matrices: the reference dequantizes them, distill scores the f32
            // safetensors, so that comparison is looser.
            let tol = if source == "--hf" { 1e-3 } else { 0.15 };
            assert!((got - want).abs() < tol, "{source}: {got} vs {want}");
        }
    }
    // And distill reads its own GGUF export.
    let out = distill(&[
        "predict",
        "--model",
        student.join("model.gguf").to_str().unwrap(),
        "--input",
        texts.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_lm_student_killed_mid_run_resumes_to_the_same_weights() {
    let s = setup();
    let whole = s.root.join("whole");
    let run = distill(&train_args(
        &s,
        whole.to_str().unwrap(),
        "topk",
        &["--checkpoint-every", "2"],
    ));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let killed = s.root.join("killed");
    let args = train_args(
        &s,
        killed.to_str().unwrap(),
        "topk",
        &["--checkpoint-every", "2"],
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let position = s.root.join("killed.checkpoint/lm/position.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !position.is_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let run = distill(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read(whole.join("model.safetensors")).unwrap(),
        std::fs::read(killed.join("model.safetensors")).unwrap(),
        "resumed run ends with the uninterrupted run's weights"
    );
    assert!(
        !s.root.join("killed.checkpoint").exists(),
        "checkpoint removed"
    );
}

#[test]
fn lm_training_refuses_what_cannot_train_in_one_line() {
    let s = setup();
    let out = s.root.join("refused");
    let o = out.to_str().unwrap();
    // Temperatures other than 1.
    let err = expect_error(&train_args(&s, o, "topk", &["--temperature", "2"]));
    assert!(
        err.contains("temperature") && err.contains("refuses"),
        "{err}"
    );
    // A teacher with another tokenizer (BOS added) than the entry's.
    let other = tiny_llama(
        &s.root,
        distill_teacher::fixtures::TinyLlama {
            seed: 6,
            add_bos: true,
            ..Default::default()
        },
    );
    let err = expect_error(&train_args(
        &s,
        o,
        "topk",
        &["--teacher", other.to_str().unwrap()],
    ));
    assert!(
        err.contains("tokenizer") && err.contains("student's"),
        "{err}"
    );
    // An entry of another kind.
    let emb = label_with(
        s.corpus.to_str().unwrap(),
        s.model.to_str().unwrap(),
        &s.store,
        &["--output", "embeddings"],
    );
    let fp = emb["output_fingerprint"].as_str().unwrap()[..12].to_owned();
    let err = expect_error(&train_args(&s, o, "topk", &["--output", &fp]));
    assert!(
        err.contains(&fp) && err.contains("not a token_topk entry"),
        "{err}"
    );
    // Rows whose token_ids are not what their text tokenizes to (a tampered cache).
    tamper_first_text(Path::new(&s.store));
    let err = expect_error(&train_args(&s, o, "topk", &[]));
    assert!(
        err.contains("token_ids are not what the tokenizer makes"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
}

/// Rewrites the first text of one token-topk shard (keeping everything else, metadata included).
fn tamper_first_text(store: &Path) {
    use arrow_array::{Array, RecordBatch, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut files = vec![];
    let mut stack = vec![store.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                files.push(p);
            }
        }
    }
    for f in files {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap();
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .cloned();
        if !reader
            .schema()
            .fields()
            .iter()
            .any(|x| x.name() == "token_ids")
        {
            continue;
        }
        let schema = reader.schema().clone();
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let b = &batches[0];
        let idx = schema.index_of("text").unwrap();
        let texts = b
            .column(idx)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let mut v: Vec<String> = (0..texts.len())
            .map(|i| texts.value(i).to_owned())
            .collect();
        v[0] = format!("{} and something else entirely", v[0]);
        let mut cols = b.columns().to_vec();
        cols[idx] = std::sync::Arc::new(StringArray::from(v));
        let nb = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_key_value_metadata(kv)
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&f).unwrap(),
            schema,
            Some(props),
        )
        .unwrap();
        w.write(&nb).unwrap();
        w.close().unwrap();
        return;
    }
    panic!("no token-topk shard found");
}
