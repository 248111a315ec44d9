//! Tasks and students from the cache: `distill task fit`, `train`, `eval`, `predict`, `quickstart`.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

const POSITIVE: &[&str] = &["great", "wonderful", "superb", "moving"];
const NEGATIVE: &[&str] = &["awful", "dreadful", "tedious", "boring"];
const FILLER: &[&str] = &[
    "the", "movie", "film", "was", "a", "plot", "with", "very", "and", "story",
];

/// A synthetic, separable sentiment corpus: `n` rows, the class given by one cue word among filler.
/// Writes corpus.jsonl, train.jsonl (gold of the first 80%), test.jsonl (the rest), exclude.txt.
struct Synthetic {
    dir: PathBuf,
    store: String,
}

impl Synthetic {
    fn new(root: &Path, n: usize) -> Self {
        let dir = root.to_owned();
        let (mut corpus, mut train, mut test, mut exclude) =
            (String::new(), String::new(), String::new(), String::new());
        for i in 0..n {
            let pos = i % 2 == 0;
            let cue = if pos {
                POSITIVE[(i / 2) % 4]
            } else {
                NEGATIVE[(i / 2) % 4]
            };
            let len = 3 + (i * 7) % 9;
            let mut words: Vec<&str> = (0..len)
                .map(|j| FILLER[(i * 3 + j * 5) % FILLER.len()])
                .collect();
            words.insert((i * 5) % (len + 1), cue);
            let id = format!("s-{i}");
            corpus.push_str(&serde_json::json!({"id": id, "text": words.join(" ")}).to_string());
            corpus.push('\n');
            let gold = serde_json::json!({"id": id, "label": if pos { "pos" } else { "neg" }})
                .to_string()
                + "\n";
            if i < n * 4 / 5 {
                train.push_str(&gold);
            } else {
                test.push_str(&gold);
                exclude.push_str(&format!("{id}\n"));
            }
        }
        std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
        std::fs::write(dir.join("train.jsonl"), train).unwrap();
        std::fs::write(dir.join("test.jsonl"), test).unwrap();
        std::fs::write(dir.join("exclude.txt"), exclude).unwrap();
        let store = dir.join("cache").display().to_string();
        Self { dir, store }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn label(&self, teacher: &Path) -> serde_json::Value {
        label_with(
            &self.path("corpus.jsonl"),
            teacher.to_str().unwrap(),
            &self.store,
            &["--shard-size", "64"],
        )
    }

    fn fit(&self, name: &str, labels: &str) -> serde_json::Value {
        run_json(&[
            "task",
            "fit",
            "--cache",
            &self.store,
            "--name",
            name,
            "--labels",
            labels,
            "--json",
        ])
    }
}

fn ok(args: &[&str]) -> String {
    let out = distill(args);
    assert!(
        out.status.success(),
        "distill {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `distill ARGS`, SIGKILLs it as soon as `marker` exists (a checkpoint), and reports whether
/// it was killed (a fast run may finish first).
fn kill_when_exists(args: &[String], marker: &Path) -> bool {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !marker.exists() && start.elapsed().as_secs() < 120 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let killed = child.try_wait().unwrap().is_none();
    child.kill().ok();
    child.wait().unwrap();
    eprintln!("killed before the end: {killed}");
    killed
}

/// Probabilities of the top label per input line, from `distill predict`.
fn top_probabilities(model: &str, input: &str) -> Vec<f64> {
    ok(&["predict", "--model", model, "--input", input])
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["probability"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_task_from_the_cache_and_an_ngram_student_that_learns_it() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tiny_encoder(tmp.path());
    let s = Synthetic::new(tmp.path(), 300);
    let job = s.label(&teacher);
    assert_eq!(job["rows"], 300);

    let task = s.fit("syn", &s.path("train.jsonl"));
    assert_eq!(task["kind"], "head");
    assert_eq!(task["labels"], serde_json::json!(["neg", "pos"]));
    assert_eq!(task["rows"], 300);
    assert_eq!(task["gold"].as_array().unwrap().len(), 240);
    assert_eq!(task["teacher_seconds"], 0.0, "a head costs no teacher pass");
    assert!(ok(&["task", "ls", "--cache", &s.store]).contains("syn"));
    // The task's logits are a derived logits entry that `cache ls` lists next to the embeddings.
    let ls = ok(&["cache", "ls", "--store", &s.store, "--json"]);
    assert!(ls.contains("logits") && ls.contains("embeddings"), "{ls}");

    // Gold only, test ids excluded: a separable task is learned almost perfectly.
    let model = s.path("ngram");
    ok(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--student",
        "ngram",
        "--gold-only",
        "--exclude",
        &s.path("exclude.txt"),
        "--out",
        &model,
        "--epochs",
        "40",
        "--buckets",
        "4096",
        "--dim",
        "16",
    ]);
    for f in ["config.json", "model.safetensors", "distill.json"] {
        assert!(Path::new(&model).join(f).is_file(), "{f}");
    }
    let report = run_json(&[
        "eval",
        "--model",
        &model,
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--labels",
        &s.path("test.jsonl"),
        "--json",
        "--blind-spots",
        "3",
    ]);
    assert_eq!(report["examples"], 60);
    assert!(report["accuracy"].as_f64().unwrap() >= 0.95, "{report}");
    assert!(report["macro_f1"].as_f64().unwrap() >= 0.95, "{report}");
    assert!(report["throughput"].as_f64().unwrap() > 0.0);
    assert_eq!(report["parameters"], 4096 * 16 + 2 * 16 + 2);
    // The teacher itself, evaluated as teacher + the task's head: it agrees with its cached logits.
    let th = run_json(&[
        "eval",
        "--model",
        teacher.to_str().unwrap(),
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--labels",
        &s.path("test.jsonl"),
        "--json",
    ]);
    assert_eq!(th["agreement"], 1.0, "{th}");
    assert_eq!(
        report["blind_spots"]["teacher_least_confident"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // predict: JSONL in, labels with probabilities out; the gold field is checked and scored.
    let preds = s.path("preds.jsonl");
    let out = distill(&[
        "predict",
        "--model",
        &model,
        "--input",
        &s.path("corpus.jsonl"),
        "--output",
        &preds,
    ]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 300);
    let right = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| l["label"] == if i % 2 == 0 { "pos" } else { "neg" })
        .count();
    assert!(right >= 285, "{right}/300");
    let p: f64 = ["neg", "pos"]
        .iter()
        .map(|k| lines[0]["probabilities"][k].as_f64().unwrap())
        .sum();
    assert!((p - 1.0).abs() < 1e-5);

    // Distilled from the task's soft labels (the head on the tiny teacher's embeddings).
    let distilled = s.path("ngram-kd");
    ok(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--student",
        "ngram",
        "--exclude",
        &s.path("exclude.txt"),
        "--out",
        &distilled,
        "--epochs",
        "5",
        "--buckets",
        "4096",
    ]);
    let r = run_json(&[
        "eval",
        "--model",
        &distilled,
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--labels",
        &s.path("test.jsonl"),
        "--json",
    ]);
    let agreement = r["agreement"].as_f64().unwrap();
    // It learned the teacher's decisions on test texts it never saw (chance is about 0.5).
    assert!(agreement >= 0.75, "agreement with the teacher {agreement}");
}

#[test]
fn transformer_student_trains_resumes_after_a_kill_and_exports_a_bert_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tiny_encoder(tmp.path());
    let s = Synthetic::new(tmp.path(), 200);
    s.label(&teacher);
    s.fit("syn", &s.path("train.jsonl"));
    let train = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--cache",
            &s.store,
            "--task",
            "syn",
            "--student",
            "transformer",
            "--out",
            out,
            "--layers",
            "1",
            "--max-seq",
            "24",
            "--batch",
            "8",
            "--epochs",
            "2",
            "--mimic-epochs",
            "1",
            "--checkpoint-every",
            "3",
            "--exclude",
            &s.path("exclude.txt"),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    // Uninterrupted.
    let whole = s.path("whole");
    let args = train(&whole, &[]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&whole).join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["num_hidden_layers"], 1);
    assert_eq!(config["id2label"]["1"], "pos");
    assert!(Path::new(&whole).join("tokenizer.json").is_file());
    assert!(
        !Path::new(&format!("{whole}.checkpoint")).exists(),
        "checkpoints are removed at the end"
    );

    // Killed once a distillation checkpoint exists, then rerun: it resumes and ends where the
    // uninterrupted run ended.
    let resumed = s.path("resumed");
    let args = train(&resumed, &[]);
    let marker = Path::new(&format!("{resumed}.checkpoint"))
        .join("distill")
        .join("position.json");
    let killed = kill_when_exists(&args, &marker);
    if killed {
        assert!(
            !Path::new(&resumed).exists(),
            "no model before training ends"
        );
    }
    let mut args = args;
    args.extend(["--log".to_string(), "info".to_string()]);
    let out = distill(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if killed {
        assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from checkpoint"));
    }
    let texts = s.path("test.jsonl");
    let a = top_probabilities(&whole, &s.path("corpus.jsonl"));
    let b = top_probabilities(&resumed, &s.path("corpus.jsonl"));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "resumed run differs: {x} vs {y}");
    }
    hf_compatible(&whole);
    let r = run_json(&[
        "eval", "--model", &whole, "--cache", &s.store, "--task", "syn", "--labels", &texts,
        "--json",
    ]);
    assert!(r["latency_p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_task_and_student_input_gets_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tiny_encoder(tmp.path());
    let s = Synthetic::new(tmp.path(), 60);

    let empty = tmp.path().join("empty").display().to_string();
    std::fs::create_dir_all(&empty).unwrap();
    let e = expect_error(&[
        "task",
        "fit",
        "--cache",
        &empty,
        "--name",
        "x",
        "--labels",
        &s.path("train.jsonl"),
    ]);
    assert!(e.contains("holds no labeled corpus"), "{e}");

    s.label(&teacher);
    let write = |name: &str, body: &str| {
        let p = s.path(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let unknown = write(
        "unknown.jsonl",
        "{\"id\":\"s-0\",\"label\":\"pos\"}\n{\"id\":\"nope\",\"label\":\"neg\"}\n{\"id\":\"s-2\",\"label\":\"pos\"}\n{\"id\":\"s-1\",\"label\":\"neg\"}\n",
    );
    let e = expect_error(&[
        "task", "fit", "--cache", &s.store, "--name", "x", "--labels", &unknown,
    ]);
    assert!(
        e.contains("unknown.jsonl, line 2") && e.contains("\"nope\""),
        "{e}"
    );
    let single = write(
        "single.jsonl",
        "{\"id\":\"s-0\",\"label\":\"pos\"}\n{\"id\":\"s-2\",\"label\":\"pos\"}\n",
    );
    let e = expect_error(&[
        "task", "fit", "--cache", &s.store, "--name", "x", "--labels", &single,
    ]);
    assert!(e.contains("at least two classes"), "{e}");
    let few = write("few.jsonl", "{\"id\":\"s-0\",\"label\":\"pos\"}\n{\"id\":\"s-2\",\"label\":\"pos\"}\n{\"id\":\"s-1\",\"label\":\"neg\"}\n");
    let e = expect_error(&[
        "task", "fit", "--cache", &s.store, "--name", "x", "--labels", &few,
    ]);
    assert!(e.contains("class \"neg\" has 1 example"), "{e}");
    let e = expect_error(&[
        "task",
        "fit",
        "--cache",
        &s.store,
        "--name",
        "../x",
        "--labels",
        &s.path("train.jsonl"),
    ]);
    assert!(e.contains("task name"), "{e}");
    // Nothing was published by the failures.
    assert!(!ok(&["task", "ls", "--cache", &s.store]).contains('x'));

    s.fit("syn", &s.path("train.jsonl"));
    let e = expect_error(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "nosuch",
        "--student",
        "ngram",
        "--out",
        &s.path("m"),
    ]);
    assert!(e.contains("no such task") && e.contains("syn"), "{e}");

    // A teacher other than the cache's: the student would get another tokenizer and weights.
    let other = tmp.path().join("other-teacher");
    distill_teacher::fixtures::write_tiny_bert(
        &other,
        &distill_teacher::fixtures::TinyKind::SentenceEncoder {
            pooling: "mean",
            normalize: true,
        },
        99,
    )
    .unwrap();
    let e = expect_error(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--student",
        "transformer",
        "--out",
        &s.path("m"),
        "--teacher",
        other.to_str().unwrap(),
    ]);
    assert!(e.contains("fingerprint") && e.contains("--teacher"), "{e}");
    assert!(!Path::new(&s.path("m")).exists());

    // An --out that is something else is never overwritten.
    let precious = s.path("precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(Path::new(&precious).join("notes.txt"), "mine").unwrap();
    let e = expect_error(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--student",
        "ngram",
        "--out",
        &precious,
        "--epochs",
        "1",
    ]);
    assert!(e.contains("not a distill model directory"), "{e}");
    assert_eq!(
        std::fs::read_to_string(Path::new(&precious).join("notes.txt")).unwrap(),
        "mine"
    );

    let model = s.path("m");
    ok(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--student",
        "ngram",
        "--out",
        &model,
        "--epochs",
        "1",
        "--buckets",
        "1024",
    ]);
    let bad = write(
        "badlabel.jsonl",
        "{\"text\":\"great film\",\"label\":\"meh\"}\n",
    );
    let e = expect_error(&["predict", "--model", &model, "--input", &bad]);
    assert!(
        e.contains("badlabel.jsonl, line 1") && e.contains("\"meh\""),
        "{e}"
    );
    let e = expect_error(&[
        "eval", "--model", &model, "--cache", &s.store, "--task", "syn", "--labels", &bad,
    ]);
    assert!(e.contains("line 1"), "{e}");

    // A --checkpoint folder that holds something else is refused, never deleted.
    let e = expect_error(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--student",
        "ngram",
        "--out",
        &s.path("m2"),
        "--checkpoint",
        &precious,
    ]);
    assert!(e.contains("not a distill checkpoint"), "{e}");
    assert!(Path::new(&precious).join("notes.txt").is_file());
    let e = expect_error(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--student",
        "ngram",
        "--out",
        &s.path("m2"),
        "--batch",
        "0",
    ]);
    assert!(e.contains("--batch"), "{e}");

    // A corrupted model file.
    let weights = Path::new(&model).join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let e = expect_error(&[
        "predict",
        "--model",
        &model,
        "--input",
        &s.path("corpus.jsonl"),
    ]);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[tokio::test]
async fn tasks_and_students_on_s3() {
    let Some(url) = s3_url() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tiny_encoder(tmp.path());
    let mut s = Synthetic::new(tmp.path(), 120);
    s.store = format!("{url}/students-{}", std::process::id());
    s.label(&teacher);
    let task = s.fit("syn", &s.path("train.jsonl"));
    assert_eq!(task["rows"], 120);
    let model = s.path("m");
    ok(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--student",
        "ngram",
        "--gold-only",
        "--out",
        &model,
        "--epochs",
        "30",
        "--buckets",
        "2048",
        "--exclude",
        &s.path("exclude.txt"),
        "--shuffle-buffer",
        "16",
    ]);
    let r = run_json(&[
        "eval",
        "--model",
        &model,
        "--cache",
        &s.store,
        "--task",
        "syn",
        "--labels",
        &s.path("test.jsonl"),
        "--json",
    ]);
    assert!(r["accuracy"].as_f64().unwrap() >= 0.9, "{r}");
}

/// The quickstart pipeline in a reduced mode: a tenth of Rotten Tomatoes, fewer gold labels, short
/// training. Checks the report's shape and the zero-teacher-second second task, not the targets.
#[test]
fn quickstart_reduced() {
    let (Some(model), Some(rt)) = (minilm(), rotten_tomatoes()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut corpus, mut gold) = (String::new(), String::new());
    let c = std::fs::read_to_string(&rt).unwrap();
    let g = std::fs::read_to_string(rt.with_file_name("gold.jsonl")).unwrap();
    for (i, (a, b)) in c.lines().zip(g.lines()).enumerate() {
        if i % 12 == 0 {
            corpus.push_str(a);
            corpus.push('\n');
            gold.push_str(b);
            gold.push('\n');
        }
    }
    let dir = tmp.path();
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    std::fs::write(dir.join("gold.jsonl"), gold).unwrap();
    let out = dir.join("qs");
    // The prompted LLM teacher on a few hundred rows, where the real one is fetched.
    let llm = crate::decoder::smollm2()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let args = [
        "quickstart",
        "--llm-teacher",
        &llm,
        "--llm-rows",
        "150",
        // One encoder student of the LLM, small, started from the teacher's MiniLM.
        "--llm-encoder-layers",
        "2",
        "--encoder-init",
        model.to_str().unwrap(),
        "--corpus",
        &dir.join("corpus.jsonl").display().to_string(),
        "--gold",
        &dir.join("gold.jsonl").display().to_string(),
        "--teacher",
        model.to_str().unwrap(),
        "--store",
        &dir.join("cache").display().to_string(),
        "--out",
        &out.display().to_string(),
        "--gold-count",
        "40",
        "--max-seq",
        "48",
        "--latency-samples",
        "10",
        "--finetune-epochs",
        "2",
        // One student draw and a second draw of the labeling loop alone.
        "--loop-draws",
        "2",
    ]
    .map(|s| s.to_string());
    let stdout = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        stdout.contains("Task 1: fresh vs rotten") && stdout.contains("Task 2"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let models = |task: &str| {
        rows.iter()
            .filter(|r| r["task"] == task && r["draw"] == 0)
            .map(|r| r["model"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let mut expect = vec![
        "teacher + head, C = 1",
        "teacher + head",
        "n-gram, gold only",
        "n-gram, distilled",
        "n-gram, distilled, test texts unseen",
        "transformer, distilled",
        "teacher + head, + random labels",
        "teacher + head, + suggested labels",
        "tuned teacher (classifier) + head",
        "n-gram, distilled from the tuned teacher (classifier)",
    ];
    if !llm.is_empty() {
        expect.extend([
            "LLM (SmolLM2, prompted) + calibration",
            "n-gram, distilled from the LLM",
            "n-gram, distilled from the LLM, test texts unseen",
            "encoder (2 layers), distilled from the LLM, test texts unseen",
        ]);
        assert!(report["llm_label_job"]["rows"].as_u64().unwrap() > 0);
        // The LLM's encoder student never saw a test text, and is held to its teacher.
        let encoder = rows
            .iter()
            .find(|r| {
                r["model"]
                    .as_str()
                    .unwrap()
                    .starts_with("encoder (2 layers)")
            })
            .unwrap();
        assert_eq!(encoder["unseen"], true);
        let checks = report["targets"].as_array().unwrap();
        assert!(checks.iter().any(|c| c["what"]
            .as_str()
            .unwrap()
            .starts_with("encoder (2 layers), distilled from the LLM, test texts unseen: ")));
    }
    assert_eq!(models("sentiment"), expect);
    assert_eq!(
        models("review-vs-plot"),
        [
            "teacher + head, C = 1",
            "teacher + head",
            "n-gram, gold only",
            "n-gram, distilled",
            "n-gram, distilled, test texts unseen"
        ]
    );
    // The loop's second draw holds its two rows only, its head and the n-gram student it read.
    let second_draw: Vec<&str> = rows
        .iter()
        .filter(|r| r["draw"] == 1)
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(
        second_draw,
        [
            "teacher + head, + random labels",
            "teacher + head, + suggested labels"
        ]
    );
    assert!(out
        .join("models/quickstart-sentiment-d1-n-gram-distilled")
        .is_dir());
    assert_eq!(
        report["labeling_loop"]["draws"], 2,
        "{}",
        report["labeling_loop"]
    );
    assert!(stdout.contains("Labeling loop (40 + 50 labels"), "{stdout}");
    // The labeling loop's two tasks hold the same number of gold labels: 40 + 50 each, in each
    // draw, and the draws' gold labels differ.
    for d in 0..2 {
        for more in ["more-random", "more-suggested"] {
            let g = std::fs::read_to_string(
                out.join(format!("split/quickstart-sentiment-d{d}-{more}.gold.jsonl")),
            )
            .unwrap();
            assert_eq!(g.lines().count(), 90, "{more}");
        }
    }
    assert_ne!(
        std::fs::read(out.join("split/quickstart-sentiment-d0.gold.jsonl")).unwrap(),
        std::fs::read(out.join("split/quickstart-sentiment-d1.gold.jsonl")).unwrap()
    );
    assert_eq!(report["students_saw_test_texts"], true);
    let summary: Vec<String> = report["summary"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["task"] == "sentiment")
        .map(|s| s["model"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        summary[..4],
        [
            "teacher + head, C = 1",
            "teacher + head",
            "teacher + head, + random labels",
            "teacher + head, + suggested labels"
        ]
    );
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(
        targets.len(),
        if llm.is_empty() { 10 } else { 15 },
        "3 checks for each of the 2 distilled students, CV against fixed C, suggested against random, 2 for the tuned teacher and its student, 2 for the LLM teacher and its student, 3 for its encoder student"
    );
    // The encoder teacher's unseen-texts row is a diagnostic; the LLM's encoder students (which
    // all train without the test texts) are held to targets.
    assert!(targets.iter().all(|t| {
        let what = t["what"].as_str().unwrap();
        !what.contains("unseen") || what.starts_with("encoder (")
    }));
    // The second task's gold labels are drawn equally per class.
    let second =
        std::fs::read_to_string(out.join("split/quickstart-review-vs-plot.gold.jsonl")).unwrap();
    let plots = second.lines().filter(|l| l.contains("\"plot\"")).count();
    assert_eq!(plots * 2, second.lines().count(), "{second}");
    for (name, secs) in report["task_teacher_seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t[0].clone(), t[1].as_f64().unwrap()))
    {
        // A head costs no teacher pass; the tuned teacher's task is a new teacher and its pass.
        if !name.as_str().unwrap().contains("-tuned") {
            assert_eq!(secs, 0.0, "task {name} ran the teacher");
        }
    }
    // The split file lists the test ids; the unseen-texts student was trained without them, the
    // main-setup student distilled over the whole unlabeled corpus.
    let test_ids = std::fs::read_to_string(out.join("split/test-ids.txt"))
        .unwrap()
        .lines()
        .count();
    assert!(test_ids > 0);
    let excluded = |model: &str| -> u64 {
        let info: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join("models").join(model).join("distill.json")).unwrap(),
        )
        .unwrap();
        info["training"]["excluded_ids"].as_u64().unwrap()
    };
    assert_eq!(
        excluded("quickstart-sentiment-d0-n-gram-distilled-test-texts-unseen"),
        test_ids as u64
    );
    assert_eq!(excluded("quickstart-sentiment-d0-n-gram-distilled"), 0);
    if !llm.is_empty() {
        assert_eq!(
            excluded("quickstart-sentiment-llm-d0-encoder-2"),
            test_ids as u64
        );
    }
    for r in rows {
        let acc = r["accuracy"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&acc) && r["examples"].as_u64().unwrap() > 0,
            "{r}"
        );
    }
    // The tuned teacher is a teacher of its own: an HF directory that the cache lists as another
    // teacher, labeled once.
    let tuned = out.join("models/quickstart-sentiment-d0-tuned-classifier-teacher");
    assert!(tuned.join("model.safetensors").is_file() && tuned.join("modules.json").is_file());
    let task: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("cache/v1/tasks/quickstart-sentiment-d0-tuned-classifier.json"))
            .unwrap(),
    )
    .unwrap();
    let base: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("cache/v1/tasks/quickstart-sentiment-d0.json")).unwrap(),
    )
    .unwrap();
    assert_ne!(task["teacher"], base["teacher"]);
    assert!(
        task["teacher_seconds"].as_f64().unwrap() > 0.0,
        "the tuned pass costs teacher time"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("accuracy-latency.svg") && out.join("accuracy-latency.svg").is_file());
    let svg = std::fs::read_to_string(out.join("accuracy-latency.svg")).unwrap();
    assert!(
        svg.contains("Task 1: fresh vs rotten")
            && svg.contains("Task 2: critic review vs plot summary"),
        "a legend"
    );
    // The teacher pass is paid once: labeling the corpus again is all cache hits.
    let again = label_with(
        &dir.join("corpus.jsonl").display().to_string(),
        model.to_str().unwrap(),
        &dir.join("cache").display().to_string(),
        &[],
    );
    assert_eq!(again["shards_labeled"], 0);
    assert_eq!(again["teacher_seconds"], 0.0);
}

/// An independent reader checks the exported transformer: exactly the tensor names and shapes
/// transformers' BertForSequenceClassification expects, and its forward pass re-implemented in float64
/// numpy (`scripts/hf_bert_check.py`) gives the probabilities `distill predict` gives.
pub fn hf_compatible(model: &str) {
    let Some(python) = python_with("numpy, safetensors, tokenizers") else {
        return;
    };
    let texts = ["the film was great", "awful and boring", "a plot"];
    let out = std::process::Command::new(&python)
        .arg(repo_root().join("scripts/hf_bert_check.py"))
        .arg(model)
        .args(texts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let input = Path::new(model).with_extension("texts.txt");
    std::fs::write(&input, texts.join("\n")).unwrap();
    let ours = ok(&[
        "predict",
        "--model",
        model,
        "--input",
        input.to_str().unwrap(),
    ]);
    for (i, line) in ours.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (j, label) in theirs["labels"].as_array().unwrap().iter().enumerate() {
            let a = v["probabilities"][label.as_str().unwrap()]
                .as_f64()
                .unwrap();
            let b = theirs["probabilities"][i][j].as_f64().unwrap();
            assert!(
                (a - b).abs() < 1e-4,
                "text {i}, {label}: distill {a} vs numpy {b}"
            );
        }
    }
}

#[test]
fn zero_shot_and_classifier_teacher_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Synthetic::new(tmp.path(), 80);
    let encoder = tiny_encoder(tmp.path());
    s.label(&encoder);
    // Zero-shot: the teacher embeds two label descriptions (a few teacher-milliseconds, not a pass).
    let zs = run_json(&[
        "task",
        "fit",
        "--cache",
        &s.store,
        "--name",
        "zs",
        "--describe",
        "pos=great wonderful superb",
        "--describe",
        "neg=awful dreadful boring",
        "--teacher",
        encoder.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(zs["kind"], "zero_shot");
    assert_eq!(zs["labels"], serde_json::json!(["pos", "neg"]));
    assert_eq!(zs["temperature"], 0.05);
    assert!(zs["teacher_seconds"].as_f64().unwrap() > 0.0);
    let e = expect_error(&[
        "task",
        "fit",
        "--cache",
        &s.store,
        "--name",
        "zs2",
        "--describe",
        "pos",
    ]);
    assert!(e.contains("LABEL=description"), "{e}");
    let model = s.path("zs-ngram");
    ok(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "zs",
        "--student",
        "ngram",
        "--out",
        &model,
        "--epochs",
        "2",
        "--buckets",
        "1024",
    ]);
    assert_eq!(top_probabilities(&model, &s.path("corpus.jsonl")).len(), 80);

    // A classifier teacher's cached logits are a task as they are.
    let classifier = tiny_classifier(tmp.path());
    let store = tmp.path().join("logits-cache").display().to_string();
    label_with(
        &s.path("corpus.jsonl"),
        classifier.to_str().unwrap(),
        &store,
        &["--output", "logits"],
    );
    let t = run_json(&["task", "fit", "--cache", &store, "--name", "cls", "--json"]);
    assert_eq!(t["kind"], "teacher");
    assert_eq!(
        t["labels"],
        serde_json::json!(["negative", "positive", "neutral"])
    );
    assert_eq!(
        t["output"], t["base_output"],
        "no derived entry: the teacher's logits are the task"
    );
    let model = s.path("cls-ngram");
    ok(&[
        "train",
        "--cache",
        &store,
        "--task",
        "cls",
        "--student",
        "ngram",
        "--out",
        &model,
        "--epochs",
        "2",
        "--buckets",
        "1024",
    ]);
    // Embedding mimicry needs embeddings: a classifier-teacher task trains the transformer without it.
    let tr = s.path("cls-transformer");
    ok(&[
        "train",
        "--cache",
        &store,
        "--task",
        "cls",
        "--student",
        "transformer",
        "--out",
        &tr,
        "--epochs",
        "1",
        "--layers",
        "1",
        "--max-seq",
        "24",
        "--teacher",
        classifier.to_str().unwrap(),
    ]);
    assert_eq!(top_probabilities(&tr, &s.path("corpus.jsonl")).len(), 80);
}

#[test]
fn ngram_training_resumes_from_its_epoch_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Synthetic::new(tmp.path(), 4000);
    s.label(&tiny_encoder(tmp.path()));
    s.fit("syn", &s.path("train.jsonl"));
    let args = |out: &str| -> Vec<String> {
        [
            "train",
            "--cache",
            &s.store,
            "--task",
            "syn",
            "--student",
            "ngram",
            "--out",
            out,
            "--epochs",
            "6",
            "--buckets",
            "65536",
            "--dim",
            "32",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let whole = s.path("whole");
    ok(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    let resumed = s.path("resumed");
    let killed = kill_when_exists(
        &args(&resumed),
        &Path::new(&format!("{resumed}.checkpoint"))
            .join("ngram")
            .join("position.json"),
    );
    let mut again = args(&resumed);
    again.extend(["--log".to_string(), "info".to_string()]);
    let out = distill(&again.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success());
    if killed {
        assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from checkpoint"));
    }
    let (a, b) = (
        top_probabilities(&whole, &s.path("corpus.jsonl")),
        top_probabilities(&resumed, &s.path("corpus.jsonl")),
    );
    assert_eq!(a, b, "a resumed run ends where an uninterrupted one does");
    // A corrupt checkpoint is named, not silently ignored.
    let ckpt = format!("{}.checkpoint", s.path("broken"));
    std::fs::create_dir_all(Path::new(&ckpt).join("ngram")).unwrap();
    std::fs::write(Path::new(&ckpt).join(".distill-checkpoint"), "").unwrap();
    std::fs::write(Path::new(&ckpt).join("ngram/position.json"), "{not json").unwrap();
    let e = expect_error(
        &args(&s.path("broken"))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        e.contains("position.json") && e.contains("delete the checkpoint"),
        "{e}"
    );
}

/// The loop of issue 15 on a small task: a head whose C and temperature are cross-validated (and
/// `--c` fixing C), `eval` on labeled texts that are not in the cache, `task suggest` and `task fit
/// --add` taking the labeled suggestions in.
#[test]
fn cross_validated_heads_eval_on_new_texts_and_the_labeling_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tiny_encoder(tmp.path());
    let s = Synthetic::new(tmp.path(), 200);
    s.label(&teacher);
    let train = std::fs::read_to_string(s.path("train.jsonl")).unwrap();
    let few = s.path("few.jsonl");
    std::fs::write(
        &few,
        train
            .lines()
            .take(40)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();

    // C and the temperature chosen by 5-fold CV; the record says what CV found.
    let task = s.fit("loop", &few);
    let cv = &task["cross_validation"];
    assert_eq!(cv["folds"], 5, "{cv}");
    assert_eq!(cv["c_fixed"], false);
    let grid: Vec<f64> = cv["grid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["c"].as_f64().unwrap())
        .collect();
    assert_eq!(grid.len(), 9);
    assert!(grid.contains(&cv["c"].as_f64().unwrap()));
    let acc = cv["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc) && cv["temperature"].as_f64().unwrap() > 0.0);
    // --c fixes C (temperature 1: the head of earlier releases); the human output shows the CV figures.
    let fixed = run_json(&[
        "task", "fit", "--cache", &s.store, "--name", "loop-c", "--labels", &few, "--c", "2.5",
        "--json",
    ]);
    let f = &fixed["cross_validation"];
    assert_eq!(
        (f["c"].as_f64(), f["c_fixed"].as_bool()),
        (Some(2.5), Some(true))
    );
    assert_eq!(f["temperature"], 1.0);
    assert_eq!(f["grid"].as_array().unwrap().len(), 1);
    let shown = ok(&[
        "task", "fit", "--cache", &s.store, "--name", "loop-h", "--labels", &few,
    ]);
    assert!(shown.contains("cross-validated accuracy"), "{shown}");
    let e = expect_error(&[
        "task", "fit", "--cache", &s.store, "--name", "x", "--labels", &few, "--c", "0",
    ]);
    assert!(e.contains("--c 0"), "{e}");

    // eval on a labels file mixing cached ids with new texts (no ids): the teacher runs on the new
    // ones, so the teacher + head agrees with "its" logits on every row.
    let test = std::fs::read_to_string(s.path("test.jsonl")).unwrap();
    let mut mixed: String = test.lines().take(10).map(|l| format!("{l}\n")).collect();
    for (i, cue) in ["great", "awful", "superb", "tedious", "moving", "boring"]
        .iter()
        .enumerate()
    {
        let label = if i % 2 == 0 { "pos" } else { "neg" };
        mixed += &format!(
            "{}\n",
            serde_json::json!({"text": format!("a story never seen, {cue} from start to end"), "label": label})
        );
    }
    let mixed_path = s.path("mixed.jsonl");
    std::fs::write(&mixed_path, &mixed).unwrap();
    let th = run_json(&[
        "eval",
        "--model",
        teacher.to_str().unwrap(),
        "--cache",
        &s.store,
        "--task",
        "loop",
        "--labels",
        &mixed_path,
        "--json",
    ]);
    assert_eq!(th["examples"], 16, "{th}");
    assert_eq!(th["agreement"], 1.0, "{th}");
    // A row that is neither in the cache nor brings its text is named.
    let bad = s.path("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}{}\n",
            test.lines().next().unwrap().to_owned() + "\n",
            r#"{"id":"nowhere","label":"pos"}"#
        ),
    )
    .unwrap();
    let e = expect_error(&[
        "eval",
        "--model",
        teacher.to_str().unwrap(),
        "--cache",
        &s.store,
        "--task",
        "loop",
        "--labels",
        &bad,
    ]);
    assert!(
        e.contains("bad.jsonl, line 2") && e.contains("\"text\""),
        "{e}"
    );

    // suggest: 10 rows of the corpus that are not gold yet, distinct, ready to be labeled.
    let student = s.path("loop-ngram");
    ok(&[
        "train",
        "--cache",
        &s.store,
        "--task",
        "loop",
        "--student",
        "ngram",
        "--out",
        &student,
        "--epochs",
        "3",
        "--buckets",
        "4096",
    ]);
    let sugg = s.path("suggest.jsonl");
    ok(&[
        "task",
        "suggest",
        "--cache",
        &s.store,
        "--task",
        "loop",
        "--n",
        "10",
        "--student",
        &student,
        "--out",
        &sugg,
    ]);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&sugg)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 10);
    let gold_ids: std::collections::HashSet<String> = std::fs::read_to_string(&few)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    let ids: std::collections::HashSet<&str> =
        rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 10, "distinct");
    assert!(
        ids.iter().all(|id| !gold_ids.contains(*id)),
        "no gold id suggested"
    );
    assert!(rows
        .iter()
        .all(|r| r["label"] == "" && r["text"].is_string()));
    // Label them (the synthetic truth: even rows positive) and add them to the task.
    let labeled: String = rows
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap();
            let i: usize = id.trim_start_matches("s-").parse().unwrap();
            format!("{}\n", serde_json::json!({"id": id, "label": if i.is_multiple_of(2) { "pos" } else { "neg" }, "text": r["text"]}))
        })
        .collect();
    let more = s.path("more.jsonl");
    // A suggestion left unlabeled is skipped, not refused.
    let labeled = labeled + "{\"id\":\"s-199\",\"label\":\"\"}\n";
    std::fs::write(&more, labeled).unwrap();
    let grown = run_json(&[
        "task", "fit", "--cache", &s.store, "--name", "loop", "--add", "--labels", &more, "--json",
    ]);
    assert_eq!(grown["gold"].as_array().unwrap().len(), 50);
    assert_eq!(grown["base_output"], task["base_output"], "the same entry");
    // A gold id labeled the other way is named, and nothing is refitted.
    let first = std::fs::read_to_string(&few).unwrap();
    let v: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let flipped = if v["label"] == "pos" { "neg" } else { "pos" };
    let conflict = s.path("conflict.jsonl");
    std::fs::write(
        &conflict,
        format!("{}\n", serde_json::json!({"id": v["id"], "label": flipped})),
    )
    .unwrap();
    let e = expect_error(&[
        "task", "fit", "--cache", &s.store, "--name", "loop", "--add", "--labels", &conflict,
    ]);
    assert!(
        e.contains("conflict.jsonl, line 1") && e.contains("fix one"),
        "{e}"
    );
}

/// `task fit --finetune` of task `name` on the base teacher's entry into `out`, with `extra` flags.
fn fit_tuned(s: &Synthetic, base_fp: &str, name: &str, out: &str, extra: &[&str]) -> Output {
    let train = s.path("train.jsonl");
    let mut args = vec![
        "task",
        "fit",
        "--teacher-fingerprint",
        base_fp,
        "--cache",
        &s.store,
        "--name",
        name,
        "--labels",
        &train,
        "--finetune",
        "--tuned-out",
        out,
        "--json",
    ];
    args.extend(extra);
    distill(&args)
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `task fit --finetune`: the tuned teacher is a model directory of its own, labeled once through the
/// normal path (a rerun reuses it and hits the cache), and the task's head sits on its embeddings.
#[test]
fn a_finetuned_teacher_is_a_teacher_of_its_own_labeled_once() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = tiny_encoder(tmp.path());
    let s = Synthetic::new(tmp.path(), 120);
    let base = s.label(&teacher);
    let tuned = s.path("tuned");
    // The base teacher named: once tuned, the cache holds two embeddings entries of the corpus.
    let base_fp = base["teacher_fingerprint"].as_str().unwrap().to_owned();
    let contrastive = [
        "--finetune-objective",
        "contrastive",
        "--finetune-pairs",
        "1",
    ];
    let task = json_of(&fit_tuned(&s, &base_fp, "ft", &tuned, &contrastive));
    assert_ne!(
        task["teacher"], base["teacher_fingerprint"],
        "a new teacher"
    );
    assert_eq!(task["rows"], 120);
    assert!(task["teacher_seconds"].as_f64().unwrap() > 0.0);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "distill.json",
    ] {
        assert!(Path::new(&tuned).join(f).is_file(), "{f}");
    }
    // The same run again: the tuned teacher is reused and its pass is all cache hits.
    let again = json_of(&fit_tuned(&s, &base_fp, "ft", &tuned, &contrastive));
    assert_eq!(again["teacher"], task["teacher"]);
    assert_eq!(
        again["teacher_seconds"], 0.0,
        "reused, and every shard a cache hit"
    );
    // The tuned teacher + the task's head agrees with the task's cached logits on new texts too.
    let new = s.path("new.jsonl");
    std::fs::write(&new, "{\"text\":\"a great and moving film\",\"label\":\"pos\"}\n{\"text\":\"tedious and awful\",\"label\":\"neg\"}\n").unwrap();
    let th = run_json(&[
        "eval", "--model", &tuned, "--cache", &s.store, "--task", "ft", "--labels", &new, "--json",
    ]);
    assert_eq!(
        (th["examples"].as_u64(), th["agreement"].as_f64()),
        (Some(2), Some(1.0)),
        "{th}"
    );
    // To object storage: built locally, uploaded, labeled from its URL. The same run gives the same
    // weights, so the same teacher and a pass of cache hits.
    if let Some(s3) = s3_url() {
        let url = format!("{s3}/tuned-{}", std::process::id());
        let up = json_of(&fit_tuned(&s, &base_fp, "ft-s3", &url, &contrastive));
        assert_eq!(up["teacher"], task["teacher"]);
        assert_eq!(up["output"], task["output"]);
    }
    // The classifier objective (the default): a tuned teacher of another run (other weights, another
    // teacher), the objective on its record; flags of the other objective are refused.
    let tuned_c = s.path("tuned-classifier");
    let fit_c = |extra: &[&str]| fit_tuned(&s, &base_fp, "ft-classifier", &tuned_c, extra);
    let c = json_of(&fit_c(&["--finetune-epochs", "2"]));
    assert_ne!(c["teacher"], task["teacher"]);
    assert_ne!(c["teacher"], base["teacher_fingerprint"]);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(&tuned_c).join("distill.json")).unwrap())
            .unwrap();
    assert_eq!(
        info["training"]["options"]["objective"], "classifier",
        "{info}"
    );
    assert_eq!(info["training"]["options"]["epochs"], 2, "{info}");
    assert!(info["training"]["method"]
        .as_str()
        .unwrap()
        .contains("cross-entropy"));
    let out = fit_c(&[
        "--finetune-objective",
        "contrastive",
        "--finetune-head-lr",
        "0.1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--finetune-head-lr") && err.contains("classifier"),
        "{err}"
    );
    let out = fit_c(&["--finetune-pairs", "3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--finetune-pairs") && err.contains("no pairs"),
        "{err}"
    );
    // Where the tuned teacher goes must be said.
    let out = distill(&[
        "task",
        "fit",
        "--cache",
        &s.store,
        "--name",
        "x",
        "--labels",
        &s.path("train.jsonl"),
        "--finetune",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--tuned-out"),
        "{err}"
    );
}
