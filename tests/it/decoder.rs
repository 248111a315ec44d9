//! Decoder teachers (llama family): the real SmolLM2-135M GGUF against an independent float64 numpy
//! forward and tokenizer (`scripts/llama_reference.py`) and against candle-transformers'
//! `quantized_llama`; `token-topk` and decoder embeddings through `distill label`, the coordinator and
//! S3; cache hits; pyarrow reading the per-token columns; bad input refused in one line.

use crate::common::*;
use distill_cache::values::{OutputValues, TokenTopk};
use object_store::ObjectStoreExt;
use std::path::{Path, PathBuf};

/// The real SmolLM2-135M-Instruct GGUF, if fetched.
pub fn smollm2() -> Option<PathBuf> {
    let p = repo_root().join("assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    prerequisite(
        "the real decoder teacher (run scripts/fetch-assets.sh)",
        p.is_file().then_some(p),
    )
}

/// A tiny random llama GGUF (F32 weights unless given).
pub fn tiny_llama(dir: &Path, spec: distill_teacher::fixtures::TinyLlama) -> PathBuf {
    let p = dir.join(format!("tiny-{:?}-{}.gguf", spec.quant, spec.seed));
    distill_teacher::fixtures::write_tiny_llama_gguf(&p, &spec).unwrap();
    p
}

const TEXTS: &[&str] = &[
    "The capital of France is",
    "I loved this movie, it was great!",
    "Numbers: 12345 and 3.14 are not the same.",
    "naïve café 東京",
    "A plot summary: <|im_start|> in text stays text, and so does <|endoftext|>.",
    "the   spaces\tand\nnewlines   matter",
];

fn write_texts(dir: &Path, texts: &[&str]) -> PathBuf {
    let p = dir.join("texts.jsonl");
    let body: String = texts
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": format!("t{i}"), "text": t}).to_string() + "\n")
        .collect();
    std::fs::write(&p, body).unwrap();
    p
}

/// The per-token values of a labeled corpus, in corpus order.
async fn read_topk(store: &str, summary: &serde_json::Value) -> (Vec<String>, TokenTopk) {
    let loc = distill_cache::store::open(store, false).unwrap();
    let m: distill_cache::catalog::CorpusManifest = serde_json::from_slice(
        &loc.store
            .get(&loc.child(summary["manifest"].as_str().unwrap()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let mut ids = vec![];
    let mut all: Option<TokenTopk> = None;
    for s in &m.shards {
        let key = distill_cache::layout::ShardKey {
            teacher: m.teacher.clone(),
            output: m.output.clone(),
            shard: s.fingerprint.clone(),
        };
        let (_, data) = distill_cache::commit::read_shard(&loc, &key).await.unwrap();
        ids.extend(data.ids);
        let OutputValues::TokenTopk(v) = data.values else {
            panic!("a token-topk entry holds per-token values")
        };
        match &mut all {
            Some(a) => a.extend(&v),
            None => all = Some(v),
        }
    }
    (ids, all.expect("at least one shard"))
}

/// The real Qwen2.5-Coder-0.5B-Instruct GGUF (Q5_0/Q8_0/Q4_K/Q6_K tensors, a separate output matrix,
/// the `qwen2` pre-tokenizer), if fetched.
pub fn qwen_0_5b() -> Option<PathBuf> {
    let p = repo_root().join("assets/models/qwen2.5-coder/qwen2.5-coder-0.5b-instruct.gguf");
    prerequisite(
        "the real Qwen 0.5B teacher (run scripts/fetch-assets.sh)",
        p.is_file().then_some(p),
    )
}

#[tokio::test]
async fn real_smollm2_matches_the_numpy_reference() {
    let (Some(model), Some(python)) = (smollm2(), python_with("numpy, gguf, regex")) else {
        return;
    };
    // Weights kept in the file's encoding (the default) and dequantized once at load.
    for resident in ["compact", "f32"] {
        matches_the_numpy_reference(&model, &python, 576, resident).await;
    }
}

#[tokio::test]
async fn real_qwen_0_5b_matches_the_numpy_reference() {
    let (Some(model), Some(python)) = (qwen_0_5b(), python_with("numpy, gguf, regex")) else {
        return;
    };
    matches_the_numpy_reference(&model, &python, 896, "compact").await;
}

#[tokio::test]
async fn real_qwen_0_5b_prompted_matches_the_numpy_reference() {
    use distill_cache::spec::{Choice, PromptSpec};
    let (Some(model), Some(python)) = (qwen_0_5b(), python_with("numpy, gguf, regex")) else {
        return;
    };
    let texts = [
        "A delight from start to finish, with a cast that clearly had fun.",
        "Two hours I will never get back.",
    ];
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_texts(dir.path(), &texts);
    let store = dir.path().join("cache").display().to_string();
    let (template, prefix) = (
        "Is this movie review positive or negative? Review: {text}",
        "The review is",
    );
    let choices = [
        ("pos", " positive"),
        ("neg", " negative"),
        ("mixed", " mixed, or hard to say"),
    ];
    let mut args = vec!["--prompt", template, "--chat", "--answer-prefix", prefix];
    let flags: Vec<String> = choices.iter().map(|(l, c)| format!("{l}={c}")).collect();
    for f in &flags {
        args.extend(["--choice", f.as_str()]);
    }
    let (c, m) = (corpus.to_str().unwrap(), model.to_str().unwrap());
    let s = label_with(c, m, &store, &args);
    let (_, values, width) = read_corpus_back(&store, &s).await;
    assert_eq!(width, 3);

    // The same sequences, built by the library: prefix · row · continuation.
    let md = distill_cache::model_dir::ModelDir::inspect(m, &model).unwrap();
    let teacher = distill_teacher::Teacher::load(&md, &distill_teacher::DeviceSpec::Cpu).unwrap();
    let spec = PromptSpec {
        template: template.into(),
        choices: choices
            .iter()
            .map(|(l, c)| Choice {
                label: l.to_string(),
                continuation: c.to_string(),
            })
            .collect(),
        chat: true,
        system: None,
        answer_prefix: prefix.into(),
        length_normalize: false,
    };
    let (pt, rows, _) = teacher.prompted_rows(&texts, &spec).unwrap();
    assert!(
        pt.continuations[2].len() > 1,
        "a continuation of several tokens"
    );
    let mut seqs: Vec<Vec<u32>> = vec![];
    for row in &rows {
        for cont in &pt.continuations {
            seqs.push([pt.prefix.as_slice(), row, cont].concat());
        }
    }
    let r = llama_reference(
        &python,
        &["--gguf", m, "--top-k", "1", "--dump-logprobs"],
        "--ids",
        &serde_json::json!(seqs),
    );
    for (i, row) in r["rows"].as_array().unwrap().iter().enumerate() {
        let lps: Vec<f64> =
            serde_json::from_value(row["logprobs_at"]["target_logprob"].clone()).unwrap();
        let n = pt.continuations[i % 3].len();
        let want: f64 = lps[lps.len() - n..].iter().sum();
        let got = values[i] as f64;
        assert!(
            (got - want).abs() < 1e-3 * n as f64,
            "row {}, class {}: {got} vs the reference's {want}",
            i / 3,
            i % 3
        );
    }
}

/// `token-topk` (top 20) and embeddings of [`TEXTS`] through `distill label` against
/// `scripts/llama_reference.py`: token ids identical, log-probs, tails and partitions within 1e-3,
/// the same top-1 everywhere, top-k + tail mass 1, embeddings within 1e-3.
async fn matches_the_numpy_reference(model: &Path, python: &str, width: usize, resident: &str) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_texts(dir.path(), TEXTS);
    let store = dir.path().join("cache").display().to_string();
    let (c, m) = (corpus.to_str().unwrap(), model.to_str().unwrap());
    let res = ["--resident-weights", resident];
    let s = label_with(
        c,
        m,
        &store,
        &[&["--output", "token-topk", "--top-k", "20"], &res[..]].concat(),
    );
    let (ids, ours) = read_topk(&store, &s).await;
    assert_eq!(ids.len(), TEXTS.len());
    let emb = label_with(
        c,
        m,
        &store,
        &[&["--output", "embeddings"], &res[..]].concat(),
    );
    let (_, emb_values, got_width) = read_corpus_back(&store, &emb).await;
    assert_eq!(got_width, width);

    let r = llama_reference(
        python,
        &["--gguf", m, "--top-k", "20"],
        "--texts",
        &serde_json::json!(TEXTS),
    );
    let (mut worst_lp, mut worst_aux, mut positions, mut top1) = (0f64, 0f64, 0usize, 0usize);
    for (i, row) in r["rows"].as_array().unwrap().iter().enumerate() {
        let tokens: Vec<u32> = serde_json::from_value(row["token_ids"].clone()).unwrap();
        let range = ours.row_positions(i);
        assert_eq!(
            ours.token_ids[range.clone()],
            tokens[..],
            "token ids of {:?}",
            TEXTS[i]
        );
        let ref_ids: Vec<Vec<u32>> = serde_json::from_value(row["topk_ids"].clone()).unwrap();
        let ref_lp: Vec<Vec<f64>> = serde_json::from_value(row["topk_logprobs"].clone()).unwrap();
        let ref_tail: Vec<Option<f64>> =
            serde_json::from_value(row["tail_logprob"].clone()).unwrap();
        let ref_lse: Vec<f64> = serde_json::from_value(row["log_partition"].clone()).unwrap();
        for (j, p) in range.enumerate() {
            positions += 1;
            let (ids, lps) = (
                &ours.topk_ids[p * 20..(p + 1) * 20],
                &ours.topk_logprobs[p * 20..(p + 1) * 20],
            );
            top1 += (ids[0] == ref_ids[j][0]) as usize;
            // Compare log-probabilities id by id where both top-20 lists hold the id.
            for (id, lp) in ids.iter().zip(lps) {
                if let Some(k) = ref_ids[j].iter().position(|x| x == id) {
                    worst_lp = worst_lp.max((*lp as f64 - ref_lp[j][k]).abs());
                }
            }
            worst_aux = worst_aux
                .max((ours.log_partition[p] as f64 - ref_lse[j]).abs())
                .max(
                    (ours.tail_logprob[p] as f64 - ref_tail[j].unwrap_or(f64::NEG_INFINITY)).abs(),
                );
            let mass: f64 = lps.iter().map(|&l| (l as f64).exp()).sum::<f64>()
                + (ours.tail_logprob[p] as f64).exp();
            assert!(
                (mass - 1.0).abs() < 1e-3,
                "position {p}: top-k + tail = {mass}"
            );
        }
        let ref_emb: Vec<f64> = serde_json::from_value(row["embedding"].clone()).unwrap();
        let got = &emb_values[i * width..(i + 1) * width];
        let diff = got
            .iter()
            .zip(&ref_emb)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            diff < 1e-3,
            "embedding of {:?}: max abs diff {diff}",
            TEXTS[i]
        );
    }
    assert!(worst_lp < 1e-3, "log-probs differ by {worst_lp}");
    assert!(
        worst_aux < 1e-3,
        "tail / log-partition differ by {worst_aux}"
    );
    assert_eq!(top1, positions, "top-1 of every position");
}

/// log-softmax in f64.
fn log_softmax(l: &[f32]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = l.iter().map(|&x| (x as f64 - m).exp()).sum();
    l.iter().map(|&x| x as f64 - m - s.ln()).collect()
}

#[tokio::test]
async fn candle_quantized_llama_agrees_at_the_last_position() {
    let Some(model) = smollm2() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_texts(dir.path(), TEXTS);
    let store = dir.path().join("cache").display().to_string();
    let s = label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--output", "token-topk", "--top-k", "20"],
    );
    let (_, ours) = read_topk(&store, &s).await;
    // candle-transformers' quantized llama: quantized matmuls (Q4_1 × Q8_1 activations), last position.
    let mut file = std::fs::File::open(&model).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut theirs = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut file,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut kl_sum = 0.0;
    for (i, text) in TEXTS.iter().enumerate() {
        let range = ours.row_positions(i);
        let ids = &ours.token_ids[range.clone()];
        let last = range.end - 1;
        theirs.clear_kv_cache();
        let x = candle_core::Tensor::new(ids, &candle_core::Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits: Vec<f32> = theirs
            .forward(&x, 0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let lp = log_softmax(&logits);
        let top: Vec<u32> = ours.topk_ids[last * 20..(last + 1) * 20].to_vec();
        let best = (0..lp.len())
            .max_by(|&a, &b| lp[a].total_cmp(&lp[b]))
            .unwrap();
        assert_eq!(
            top[0] as usize, best,
            "top-1 at the last position of {text:?}"
        );
        // KL(ours ‖ theirs) over our top-20 and the tail as one bucket.
        let mut kl = 0.0;
        let mut their_topk_mass = 0.0;
        for (j, &id) in top.iter().enumerate() {
            let p = ours.topk_logprobs[last * 20 + j] as f64;
            let q = lp[id as usize];
            kl += p.exp() * (p - q);
            their_topk_mass += q.exp();
        }
        let p_tail = ours.tail_logprob[last] as f64;
        kl += p_tail.exp() * (p_tail - (1.0 - their_topk_mass).max(1e-12).ln());
        kl_sum += kl;
    }
    let mean_kl = kl_sum / ours.rows() as f64;
    assert!(
        mean_kl < 0.01,
        "mean KL to candle's quantized llama {mean_kl}"
    );
}

const PYARROW_TOPK: &str = r#"
import json, sys, math
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
k = int(sys.argv[2])
worst = 0.0
for ids, lps, tail, lse, toks in zip(t.column("topk_ids").to_pylist(), t.column("topk_logprobs").to_pylist(),
                                     t.column("tail_logprob").to_pylist(), t.column("log_partition").to_pylist(),
                                     t.column("token_ids").to_pylist()):
    assert len(ids) == len(lps) == len(tail) == len(lse) == len(toks)
    for i, l, tl in zip(ids, lps, tail):
        assert len(i) == k and len(l) == k and all(a >= b for a, b in zip(l, l[1:]))
        worst = max(worst, abs(sum(math.exp(x) for x in l) + math.exp(tl) - 1))
print(json.dumps({"fields": [f.name for f in t.schema], "worst": worst, "rows": t.num_rows}))
"#;

#[tokio::test]
async fn token_topk_through_label_cache_hits_and_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), Default::default());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 30);
    let mut stores = vec![dir.path().join("cache").display().to_string()];
    if let Ok(s3) = std::env::var("DISTILL_TEST_S3_URL") {
        stores.push(format!("{s3}/decoder-{}", std::process::id()));
    }
    let (c, m) = (corpus.to_str().unwrap(), model.to_str().unwrap());
    let extra = [
        "--output",
        "token-topk",
        "--top-k",
        "5",
        "--samples",
        "8",
        "--shard-size",
        "8",
        "--dtype",
        "f16",
    ];
    for store in &stores {
        let first = label_with(c, m, store, &extra);
        assert_eq!(first["shards"], 4);
        assert_eq!(first["shards_labeled"], 4);
        assert!(first["teacher_seconds"].as_f64().unwrap() > 0.0);
        let (ids, v) = read_topk(store, &first).await;
        assert_eq!(ids.len(), 30);
        assert_eq!(v.positions() as u64, first["tokens"].as_u64().unwrap());
        let samples = v.samples.as_ref().expect("samples were asked for");
        assert_eq!(samples.offsets.len(), v.positions() + 1);
        // The same content again: every shard a hit, no teacher time.
        let again = label_with(c, m, store, &extra);
        assert_eq!(again["cache_hits"], 4);
        assert_eq!(again["teacher_seconds"], 0.0);
        assert!(again["teacher_seconds_saved"].as_f64().unwrap() > 0.0);
        // Another k is another entry.
        let other = label_with(
            c,
            m,
            store,
            &[
                "--output",
                "token-topk",
                "--top-k",
                "6",
                "--shard-size",
                "8",
            ],
        );
        assert_eq!(other["shards_labeled"], 4);
        assert_ne!(other["output_fingerprint"], first["output_fingerprint"]);
        let ls = distill(&["cache", "ls", "--store", store]);
        let text = String::from_utf8_lossy(&ls.stdout);
        assert!(
            text.contains("token_topk/f16/k5/s8") && text.contains("token_topk/f32/k6"),
            "{text}"
        );
    }
    // An independent reader: pyarrow sees the documented columns and distributions that add up.
    let Some(python) = python_with("pyarrow") else {
        return;
    };
    let file = shard_files(&stores[0]).await.into_iter().next().unwrap();
    let path = Path::new(&stores[0]).join(file);
    let out = std::process::Command::new(python)
        .args(["-c", PYARROW_TOPK, path.to_str().unwrap(), "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fields: Vec<String> = serde_json::from_value(r["fields"].clone()).unwrap();
    for f in [
        "id",
        "text",
        "tokens",
        "token_ids",
        "topk_ids",
        "topk_logprobs",
        "tail_logprob",
        "log_partition",
        "sample_ids",
        "sample_counts",
    ] {
        assert!(fields.contains(&f.to_string()), "{f} in {fields:?}");
    }
    // f16 log-probabilities: the sum is off by their rounding only.
    assert!(r["worst"].as_f64().unwrap() < 5e-3, "{r}");
}

#[tokio::test]
async fn a_decoder_job_runs_through_a_coordinator_and_workers() {
    use crate::cluster::*;
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), Default::default());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 40);
    let store = dir.path().join("cache").display().to_string();
    let port = free_port();
    let _coord = coordinator(dir.path(), "coord", port, &store, &[]);
    let url = format!("http://127.0.0.1:{port}");
    let w1 = worker(dir.path(), "w1", &url, &[]);
    let w2 = worker(dir.path(), "w2", &url, &[]);
    let out = distill(&[
        "label",
        "--coordinator",
        &url,
        "--corpus",
        corpus.to_str().unwrap(),
        "--teacher",
        model.to_str().unwrap(),
        "--output",
        "token-topk",
        "--top-k",
        "4",
        "--window",
        "16",
        "--shard-size",
        "5",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["shards"], 8);
    assert_eq!(committed(&[&w1, &w2]), 8, "each shard committed once");
    let (ids, v) = read_topk(&store, &s).await;
    assert_eq!(ids, crate::cluster::ids(&corpus));
    assert_eq!(v.k, 4);
    // Rows longer than the window were windowed, still one position per token.
    assert_eq!(v.positions() as u64, s["tokens"].as_u64().unwrap());
    // The job remembers the resolved spec.
    let mut c = client(&url, None).await;
    let jobs = c
        .list_jobs(distill_proto::v1::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let spec = jobs[0].spec.clone().unwrap();
    assert_eq!(
        (spec.output.as_str(), spec.top_k, spec.window, spec.stride),
        ("token-topk", 4, 16, 8)
    );
}

#[test]
fn bad_decoder_input_is_refused_in_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), Default::default());
    let corpus = dir.path().join("corpus.jsonl");
    write_corpus(&corpus, 4);
    let store = dir.path().join("cache");
    let (c, m, s) = (
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        store.to_str().unwrap(),
    );
    let vocab = distill_teacher::fixtures::tiny_bpe().0.len().to_string();
    let too_many = (vocab.parse::<usize>().unwrap() + 1).to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--output", "token-topk", "--top-k", "0"], "--top-k 0"),
        (
            vec!["--output", "token-topk", "--top-k", &too_many],
            "vocabulary size",
        ),
        (
            vec!["--output", "token-topk", "--window", "4096"],
            "context",
        ),
        (vec!["--output", "logits"], "causal language model"),
        (vec!["--top-k", "5"], "token-topk only"),
    ];
    for (extra, expect) in cases {
        let err = expect_error(&label_args(c, m, s, &extra));
        assert!(err.contains(expect), "{extra:?}: {err}");
    }
    // A truncated copy of the file.
    let bytes = std::fs::read(&model).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let err = expect_error(&label_args(
        c,
        truncated.to_str().unwrap(),
        s,
        &["--output", "token-topk"],
    ));
    assert!(
        err.contains("truncated.gguf") && err.contains("truncated"),
        "{err}"
    );
    // Another architecture.
    let other = dir.path().join("other-arch.gguf");
    let arch_at = bytes.windows(5).position(|w| w == b"llama").unwrap();
    let mut patched = bytes.clone();
    patched[arch_at..arch_at + 5].copy_from_slice(b"gptj_");
    std::fs::write(&other, &patched).unwrap();
    let err = expect_error(&label_args(
        c,
        other.to_str().unwrap(),
        s,
        &["--output", "token-topk"],
    ));
    assert!(
        err.contains("other-arch.gguf") && err.contains("architecture"),
        "{err}"
    );
    // A tensor type distill cannot read: the first tensor's type field set to 20 (an i-quant).
    let unknown = dir.path().join("iq.gguf");
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * dims;
    let mut patched = bytes.clone();
    patched[ty..ty + 4].copy_from_slice(&20u32.to_le_bytes());
    std::fs::write(&unknown, &patched).unwrap();
    let err = expect_error(&label_args(
        c,
        unknown.to_str().unwrap(),
        s,
        &["--output", "token-topk"],
    ));
    assert!(err.contains("iq.gguf") && err.contains("type 20"), "{err}");
    // A tokenizer with more tokens than the model has embeddings.
    let misfit = tiny_llama(
        dir.path(),
        distill_teacher::fixtures::TinyLlama {
            seed: 99,
            embedding_rows: Some(100),
            ..Default::default()
        },
    );
    let err = expect_error(&label_args(
        c,
        misfit.to_str().unwrap(),
        s,
        &["--output", "token-topk"],
    ));
    assert!(
        err.contains("tiny-F32-99.gguf") && err.contains("do not belong together"),
        "{err}"
    );
    assert!(
        !store.exists() || shard_files_blocking(s).is_empty(),
        "nothing written"
    );
}

fn shard_files_blocking(store: &str) -> Vec<String> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(shard_files(store))
}

#[test]
fn bf16_agrees_with_f32_on_the_real_smollm2() {
    // The GPU's path (`--precision bf16`: bf16 weights and product inputs, f32 products, norms and
    // softmax) run on the CPU against the f32 path, every position of 40 review snippets, over the
    // whole vocabulary. Issue 28's bar: top-1 ≥ 99%, mean KL ≤ 0.01 nats.
    let Some(model) = smollm2() else {
        return;
    };
    let corpus = repo_root().join("assets/corpora/rotten-tomatoes/corpus.jsonl");
    let Some(corpus) = prerequisite("the review corpus", corpus.is_file().then_some(corpus)) else {
        return;
    };
    let texts: Vec<String> = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .filter(|t| (40..200).contains(&t.len()))
        .take(40)
        .collect();
    let dir = distill_cache::model_dir::ModelDir::inspect("smollm2", &model).unwrap();
    let load = |resident| {
        let o = distill_teacher::LoadOptions {
            resident,
            memory_limit: None,
        };
        distill_teacher::Teacher::load_with(&dir, &distill_teacher::DeviceSpec::Cpu, &o).unwrap()
    };
    let (f, h) = (
        load(distill_teacher::Resident::F32),
        load(distill_teacher::Resident::Bf16),
    );
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let rows: Vec<Vec<u32>> = f
        .tokenize(&refs)
        .unwrap()
        .into_iter()
        .map(|e| e.ids)
        .collect();
    let vocab = f.shape().vocab;
    let (mut positions, mut top1, mut kl) = (0usize, 0usize, 0f64);
    for chunk in rows.chunks(8) {
        let (a, b) = (
            f.position_logits(chunk).unwrap(),
            h.position_logits(chunk).unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            for (p, q) in x.chunks(vocab).zip(y.chunks(vocab)) {
                let (lp, lq) = (log_softmax(p), log_softmax(q));
                let arg = |l: &[f64]| (0..l.len()).max_by(|&i, &j| l[i].total_cmp(&l[j])).unwrap();
                top1 += (arg(&lp) == arg(&lq)) as usize;
                kl += lp
                    .iter()
                    .zip(&lq)
                    .map(|(a, b)| a.exp() * (a - b))
                    .sum::<f64>();
                positions += 1;
            }
        }
    }
    let (agree, mean_kl) = (top1 as f64 / positions as f64, kl / positions as f64);
    eprintln!("SmolLM2 bf16 against f32: top-1 {agree:.4} of {positions} positions, mean KL {mean_kl:.2e} nats");
    assert!(positions > 900, "{positions}");
    assert!(
        agree >= 0.99 && mean_kl <= 0.01,
        "top-1 {agree}, mean KL {mean_kl} nats"
    );
}
