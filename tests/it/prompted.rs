//! Prompted labeling: a decoder teacher labels a task from a prompt (class logits = log-probabilities
//! of each choice's continuation), alone and through a coordinator; the task calibrated on gold labels
//! by cross-validation; a student distilled from it; bad prompts refused in one line.

use crate::common::*;
use crate::decoder::{smollm2, tiny_llama};

fn prompt_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--prompt",
        "review: {text}",
        "--choice",
        "good= good",
        "--choice",
        "bad= bad",
        "--answer-prefix",
        "\nthe film is",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn a_prompted_task_labels_calibrates_and_trains_a_student() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), Default::default());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 40);
    let store = dir.path().join("cache").display().to_string();
    let (c, m) = (corpus.to_str().unwrap(), model.to_str().unwrap());
    let s = label_with(c, m, &store, &prompt_args(&["--shard-size", "10"]));
    assert_eq!(s["shards_labeled"], 4);
    // The same prompt again: all cache hits; another prompt: another entry.
    let again = label_with(c, m, &store, &prompt_args(&["--shard-size", "10"]));
    assert_eq!(again["cache_hits"], 4);
    assert_eq!(again["teacher_seconds"], 0.0);
    let other = label_with(
        c,
        m,
        &store,
        &prompt_args(&["--shard-size", "10", "--length-normalize"]),
    );
    assert_eq!(other["shards_labeled"], 4);
    assert_ne!(other["output_fingerprint"], s["output_fingerprint"]);
    let ls =
        String::from_utf8_lossy(&distill(&["cache", "ls", "--store", &store]).stdout).into_owned();
    assert!(ls.contains("logits/f32/prompted/good|bad"), "{ls}");
    // Calibrated on gold labels (a made-up rule the tiny model knows nothing of).
    let gold = dir.path().join("gold.jsonl");
    let body: String = (0..20)
        .map(|i| serde_json::json!({"id": format!("doc-{i}"), "label": if i % 2 == 0 { "good" } else { "bad" }}).to_string() + "\n")
        .collect();
    std::fs::write(&gold, body).unwrap();
    let fp = &s["output_fingerprint"].as_str().unwrap()[..12];
    let task = run_json(&[
        "task",
        "fit",
        "--cache",
        &store,
        "--name",
        "prompted",
        "--output",
        fp,
        "--labels",
        gold.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(task["kind"], "head");
    assert_eq!(task["labels"], serde_json::json!(["good", "bad"]));
    let cv = &task["cross_validation"];
    assert_eq!(cv["figures"].as_array().unwrap().len(), 3, "{cv}");
    assert!(["none", "bias", "head"].contains(&cv["chosen"].as_str().unwrap()));
    // Without gold labels: the raw zero-shot task.
    let raw = run_json(&[
        "task", "fit", "--cache", &store, "--name", "raw", "--output", fp, "--json",
    ]);
    assert_eq!(raw["kind"], "teacher");
    // A student distills it like any task.
    let out = dir.path().join("student");
    let run = distill(&[
        "train",
        "--cache",
        &store,
        "--task",
        "prompted",
        "--student",
        "ngram",
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "2",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // A transformer student of the decoder's task needs an encoder to start from: refused without
    // one, trained from MiniLM's first layer and its own tokenizer with --init, exported as a
    // checkpoint transformers loads as is.
    let encoder = dir.path().join("encoder");
    let err = expect_error(&[
        "train",
        "--cache",
        &store,
        "--task",
        "prompted",
        "--student",
        "transformer",
        "--out",
        encoder.to_str().unwrap(),
    ]);
    assert!(err.contains("a decoder") && err.contains("--init"), "{err}");
    assert!(!encoder.exists(), "nothing written");
    let not_bert = expect_error(&[
        "train",
        "--cache",
        &store,
        "--task",
        "prompted",
        "--student",
        "transformer",
        "--init",
        m,
        "--out",
        encoder.to_str().unwrap(),
    ]);
    assert!(
        not_bert.contains(m) && not_bert.contains("BERT-family"),
        "{not_bert}"
    );
    if let Some(minilm) = minilm() {
        let run = distill(&[
            "train",
            "--cache",
            &store,
            "--task",
            "prompted",
            "--student",
            "transformer",
            "--init",
            minilm.to_str().unwrap(),
            "--layers",
            "1",
            "--epochs",
            "2",
            "--holdout",
            "0.4",
            "--patience",
            "1",
            "--layer-lr-decay",
            "0.8",
            "--out",
            encoder.to_str().unwrap(),
        ]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(encoder.join("distill.json")).unwrap()).unwrap();
        assert_eq!(
            info["training"]["mimic_epochs"], 0,
            "no mimicry of a decoder's embeddings"
        );
        assert!(
            info["training"]["init"]
                .as_str()
                .unwrap()
                .contains("MiniLM"),
            "{info}"
        );
        // Early stopping on a held-out slice of the soft rows, layer-wise rates: both recorded.
        let t = &info["training"];
        assert_eq!(
            (t["holdout"].as_f64(), t["patience"].as_u64()),
            (Some(0.4), Some(1)),
            "{t}"
        );
        assert_eq!(t["layer_lr_decay"].as_f64(), Some(0.8), "{t}");
        assert!(
            !dir.path().join("encoder.checkpoint").exists(),
            "the checkpoint (with the best epoch's weights) is removed once the model is written"
        );
        crate::students::hf_compatible(encoder.to_str().unwrap());
    }
    // A gold file that leaves a choice out cannot calibrate it.
    let one = dir.path().join("one-class.jsonl");
    std::fs::write(
        &one,
        "{\"id\": \"doc-0\", \"label\": \"good\"}\n{\"id\": \"doc-1\", \"label\": \"good\"}\n",
    )
    .unwrap();
    let err = expect_error(&[
        "task",
        "fit",
        "--cache",
        &store,
        "--name",
        "x",
        "--output",
        fp,
        "--labels",
        one.to_str().unwrap(),
    ]);
    assert!(
        err.contains("one-class.jsonl") && err.contains("\"bad\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_prompted_job_runs_through_a_coordinator() {
    use crate::cluster::*;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), Default::default());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 30);
    let store = dir.path().join("cache").display().to_string();
    let port = free_port();
    let _coord = coordinator(dir.path(), "coord", port, &store, &[]);
    let url = format!("http://127.0.0.1:{port}");
    let w = worker(dir.path(), "w1", &url, &[]);
    let mut args = vec![
        "label",
        "--coordinator",
        &url,
        "--corpus",
        corpus.to_str().unwrap(),
        "--teacher",
        model.to_str().unwrap(),
        "--shard-size",
        "10",
        "--json",
    ];
    args.extend(prompt_args(&["--chat"]));
    let out = distill(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["shards"], 3);
    assert_eq!(committed(&[&w]), 3);
    // The job keeps its prompt on the wire.
    let mut c = client(&url, None).await;
    let jobs = c
        .list_jobs(distill_proto::v1::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let p = jobs[0].spec.clone().unwrap().prompt.unwrap();
    assert!(p.chat && p.choices.len() == 2 && p.template == "review: {text}");
    // A bad prompt is refused at submission, naming the field.
    let mut bad = vec![
        "label",
        "--coordinator",
        &url,
        "--corpus",
        corpus.to_str().unwrap(),
        "--teacher",
        model.to_str().unwrap(),
    ];
    let long = format!("{} {{text}}", "the film ".repeat(80));
    bad.extend([
        "--prompt",
        long.as_str(),
        "--choice",
        "a= good",
        "--choice",
        "b= bad",
    ]);
    let err = expect_error(&bad);
    assert!(err.contains("prompt") && err.contains("context"), "{err}");
}

#[test]
fn bad_prompts_are_refused_in_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), Default::default());
    let encoder = tiny_encoder(dir.path());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 4);
    let store = dir.path().join("cache");
    let (c, m, s) = (
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        store.to_str().unwrap(),
    );
    let long = format!("{} {{text}}", "the film ".repeat(80));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--prompt",
                "no placeholder",
                "--choice",
                "a= good",
                "--choice",
                "b= bad",
            ],
            "{text}",
        ),
        (
            vec![
                "--prompt", "{text}", "--choice", "a= good", "--choice", "a= bad",
            ],
            "twice",
        ),
        (
            vec!["--prompt", "{text}", "--choice", "a=", "--choice", "b= bad"],
            "must not be empty",
        ),
        (
            vec![
                "--prompt", "{text}", "--choice", "a good", "--choice", "b= bad",
            ],
            "LABEL=CONTINUATION",
        ),
        (
            vec!["--prompt", "{text}", "--choice", "a= good"],
            "at least two",
        ),
        (
            vec![
                "--prompt",
                long.as_str(),
                "--choice",
                "a= good",
                "--choice",
                "b= bad",
            ],
            "context",
        ),
        (vec!["--choice", "a= good"], "need --prompt"),
        (vec!["--length-normalize"], "need --prompt"),
        (
            vec![
                "--prompt", "{text}", "--choice", "a= good", "--choice", "b= bad", "--system",
                "be brief",
            ],
            "needs --chat",
        ),
        (
            vec![
                "--prompt",
                "{text}",
                "--choice",
                "a= good",
                "--choice",
                "b= bad",
                "--output",
                "embeddings",
            ],
            "leave --output out",
        ),
    ];
    for (extra, expect) in cases {
        let err = expect_error(&label_args(c, m, s, &extra));
        assert!(err.contains(expect), "{extra:?}: {err}");
    }
    let err = expect_error(&label_args(
        c,
        encoder.to_str().unwrap(),
        s,
        &prompt_args(&[]),
    ));
    assert!(err.contains("not a causal language model"), "{err}");
    assert!(
        !store.exists() || std::fs::read_dir(&store).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn real_smollm2_labels_review_snippets_from_a_prompt() {
    let (Some(model), Some(rt)) = (smollm2(), rotten_tomatoes()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 24 review snippets, half fresh and half rotten.
    let gold_all = std::fs::read_to_string(rt.with_file_name("gold.jsonl")).unwrap();
    let mut picked: Vec<(String, String)> = vec![];
    let (mut fresh, mut rotten) = (0, 0);
    for l in gold_all.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let label = v["label"].as_str().unwrap().to_owned();
        let take = match label.as_str() {
            "fresh" if fresh < 12 => {
                fresh += 1;
                true
            }
            "rotten" if rotten < 12 => {
                rotten += 1;
                true
            }
            _ => false,
        };
        if take {
            picked.push((v["id"].as_str().unwrap().to_owned(), label));
        }
    }
    let ids: std::collections::HashSet<&str> = picked.iter().map(|p| p.0.as_str()).collect();
    let corpus = dir.path().join("corpus.jsonl");
    let body: String = std::fs::read_to_string(&rt)
        .unwrap()
        .lines()
        .filter(|l| {
            ids.contains(
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap(),
            )
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&corpus, body).unwrap();
    let gold = dir.path().join("gold.jsonl");
    std::fs::write(
        &gold,
        picked
            .iter()
            .map(|(id, l)| serde_json::json!({"id": id, "label": l}).to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let store = dir.path().join("cache").display().to_string();
    let s = label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &[
            "--prompt",
            "Is this movie review positive or negative? Review: {text}",
            "--chat",
            "--answer-prefix",
            "The review is",
            "--choice",
            "fresh= positive",
            "--choice",
            "rotten= negative",
        ],
    );
    assert_eq!(s["rows"], 24);
    let task = run_json(&[
        "task",
        "fit",
        "--cache",
        &store,
        "--name",
        "sentiment",
        "--labels",
        gold.to_str().unwrap(),
        "--folds",
        "4",
        "--json",
    ]);
    let figures = task["cross_validation"]["figures"].as_array().unwrap();
    let best = figures
        .iter()
        .map(|f| f["accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max);
    // The LLM knows sentiment: well above chance on the snippets, calibrated by cross-validation.
    assert!(best >= 0.6, "{figures:?}");
}
