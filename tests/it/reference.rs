//! The real all-MiniLM-L6-v2 against independent float64 reference embeddings
//! (tests/data/minilm_l6_embeddings.json: 11 sentences, one over 256 tokens, non-ASCII, one letter).

use crate::common::*;
use distill_cache::model_dir::ModelDir;
use distill_teacher::{DeviceSpec, Teacher};

#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<Sentence>,
}

#[derive(serde::Deserialize)]
struct Sentence {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn reference() -> Reference {
    serde_json::from_slice(
        &std::fs::read(repo_root().join("tests/data/minilm_l6_embeddings.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn minilm_matches_the_reference_to_1e4_in_one_batch_and_alone() {
    let Some(model) = minilm() else { return };
    let teacher = Teacher::load(
        &ModelDir::inspect("minilm", &model).unwrap(),
        &DeviceSpec::Cpu,
    )
    .unwrap();
    let r = reference();
    let texts: Vec<&str> = r.sentences.iter().map(|s| s.text.as_str()).collect();
    assert!(
        r.sentences.iter().any(|s| s.tokens == 256),
        "the reference has a truncated sentence"
    );
    // All together (one padded batch), and each alone.
    for budget in [1_000_000, 1] {
        let labels = teacher.label(&texts, budget).unwrap();
        assert_eq!(labels.vectors().width, 384);
        for (i, s) in r.sentences.iter().enumerate() {
            assert_eq!(
                labels.tokens[i] as usize, s.tokens,
                "token count of {:?}",
                s.text
            );
            assert_eq!(labels.truncated[i], s.tokens == 256, "{:?}", s.text);
            let got = &labels.vectors().values[i * 384..(i + 1) * 384];
            let max = got
                .iter()
                .zip(&s.embedding)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                max <= 1e-4,
                "sentence {i} ({:?}): max abs diff {max}",
                &s.text[..s.text.len().min(40)]
            );
        }
    }
}

#[tokio::test]
async fn minilm_through_the_cache_in_f16_stays_within_1e4() {
    let Some(model) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let r = reference();
    let corpus = dir.path().join("ref.jsonl");
    let body: String = r
        .sentences
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"id": i, "text": s.text}).to_string() + "\n")
        .collect();
    std::fs::write(&corpus, body).unwrap();
    let store = dir.path().join("cache").display().to_string();
    let s = label_with(
        corpus.to_str().unwrap(),
        model.to_str().unwrap(),
        &store,
        &["--dtype", "f16"],
    );
    assert_eq!(s["truncated_rows"], 1);
    let (ids, values, width) = read_corpus_back(&store, &s).await;
    assert_eq!(ids.len(), r.sentences.len());
    for (i, sent) in r.sentences.iter().enumerate() {
        let max = values[i * width..(i + 1) * width]
            .iter()
            .zip(&sent.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max <= 1e-4, "sentence {i}: {max}");
    }
}
