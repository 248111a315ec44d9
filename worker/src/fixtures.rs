//! Tiny random BERT models in the HF layout, for fast tests that need no download.
//!
//! Weights come from a seeded generator, so the same seed gives byte-identical files (and the same
//! teacher fingerprint). The tokenizer is a real WordPiece `tokenizer.json` over a small vocabulary
//! (specials, a few words, single letters and `##` letters), saved with a fixed padding of 16 like many
//! packaged tokenizers, so tests prove that distill overrides it.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// What kind of tiny model to write.
#[derive(Clone, Debug)]
pub enum TinyKind {
    /// A sentence-transformers encoder with this pooling (`mean`, `cls`, `max`) and normalisation.
    SentenceEncoder {
        pooling: &'static str,
        normalize: bool,
    },
    /// A `BertForSequenceClassification` with these labels.
    Classifier { labels: Vec<String> },
}

/// Hidden size of the tiny models.
pub const HIDDEN: usize = 32;
/// `max_seq_length` of the tiny sentence encoders.
pub const MAX_SEQ: usize = 24;

fn vocab() -> Vec<String> {
    let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for w in [
        "the", "a", "good", "bad", "movie", "film", "great", "awful", "fun", "boring", "is", "was",
        "not", "very", ".", ",", "!",
    ] {
        v.push(w.to_string());
    }
    for c in 'a'..='z' {
        v.push(c.to_string());
    }
    for c in 'a'..='z' {
        v.push(format!("##{c}"));
    }
    v
}

/// Seeded standard-normal-ish values (sum of uniforms), scaled.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0
    }
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.normal() * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches")
    }
}

/// Writes a tiny random BERT model directory.
pub fn write_tiny_bert(dir: &Path, kind: &TinyKind, seed: u64) -> FixtureResult<()> {
    std::fs::create_dir_all(dir)?;
    let vocab = vocab();
    let (h, layers, inter, max_pos) = (HIDDEN, 2, 64, 64);
    let mut config = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": inter,
        "hidden_act": "gelu",
        "max_position_embeddings": max_pos,
        "type_vocab_size": 2,
        "vocab_size": vocab.len(),
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0
    });
    let mut rng = Rng(seed.wrapping_add(0x9e3779b97f4a7c15));
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let prefix = match kind {
        TinyKind::Classifier { .. } => "bert.",
        TinyKind::SentenceEncoder { .. } => "",
    };
    let mut put = |name: &str, shape: &[usize], scale: f32, rng: &mut Rng| {
        t.insert(format!("{prefix}{name}"), rng.tensor(shape, scale));
    };
    put(
        "embeddings.word_embeddings.weight",
        &[vocab.len(), h],
        0.5,
        &mut rng,
    );
    put(
        "embeddings.position_embeddings.weight",
        &[max_pos, h],
        0.1,
        &mut rng,
    );
    put(
        "embeddings.token_type_embeddings.weight",
        &[2, h],
        0.1,
        &mut rng,
    );
    put("embeddings.LayerNorm.weight", &[h], 0.05, &mut rng);
    put("embeddings.LayerNorm.bias", &[h], 0.05, &mut rng);
    for i in 0..layers {
        let p = format!("encoder.layer.{i}.");
        for name in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            put(&format!("{p}{name}.weight"), &[h, h], 0.2, &mut rng);
            put(&format!("{p}{name}.bias"), &[h], 0.02, &mut rng);
        }
        put(
            &format!("{p}intermediate.dense.weight"),
            &[inter, h],
            0.2,
            &mut rng,
        );
        put(
            &format!("{p}intermediate.dense.bias"),
            &[inter],
            0.02,
            &mut rng,
        );
        put(
            &format!("{p}output.dense.weight"),
            &[h, inter],
            0.2,
            &mut rng,
        );
        put(&format!("{p}output.dense.bias"), &[h], 0.02, &mut rng);
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(&format!("{p}{ln}.weight"), &[h], 0.05, &mut rng);
            put(&format!("{p}{ln}.bias"), &[h], 0.05, &mut rng);
        }
    }
    // LayerNorm weights near 1.
    for (name, v) in t.iter_mut() {
        if name.ends_with("LayerNorm.weight") {
            *v = (v.clone() + 1.0).expect("scalar add");
        }
    }
    match kind {
        TinyKind::Classifier { labels } => {
            let n = labels.len();
            t.insert("bert.pooler.dense.weight".into(), rng.tensor(&[h, h], 0.2));
            t.insert("bert.pooler.dense.bias".into(), rng.tensor(&[h], 0.02));
            t.insert("classifier.weight".into(), rng.tensor(&[n, h], 0.5));
            t.insert("classifier.bias".into(), rng.tensor(&[n], 0.02));
            config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
            config["id2label"] = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), serde_json::json!(l)))
                .collect::<serde_json::Map<_, _>>()
                .into();
            config["label2id"] = labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), serde_json::json!(i)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        TinyKind::SentenceEncoder { pooling, normalize } => {
            let mut modules = vec![
                serde_json::json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
                serde_json::json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
            ];
            if *normalize {
                modules.push(serde_json::json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
            }
            std::fs::write(
                dir.join("modules.json"),
                serde_json::to_vec_pretty(&modules)?,
            )?;
            std::fs::create_dir_all(dir.join("1_Pooling"))?;
            std::fs::write(
                dir.join("1_Pooling/config.json"),
                serde_json::to_vec_pretty(&serde_json::json!({
                    "word_embedding_dimension": h,
                    "pooling_mode_cls_token": *pooling == "cls",
                    "pooling_mode_mean_tokens": *pooling == "mean",
                    "pooling_mode_max_tokens": *pooling == "max",
                    "pooling_mode_mean_sqrt_len_tokens": false
                }))?,
            )?;
            std::fs::write(
                dir.join("sentence_bert_config.json"),
                format!("{{\"max_seq_length\": {MAX_SEQ}, \"do_lower_case\": false}}"),
            )?;
        }
    }
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    write_tokenizer(&dir.join("tokenizer.json"), &vocab)?;
    Ok(())
}

fn write_tokenizer(path: &Path, vocab: &[String]) -> FixtureResult<()> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let vocab_txt = path.with_file_name("vocab.txt");
    std::fs::write(&vocab_txt, vocab.join("\n") + "\n")?;
    let wp = WordPiece::from_file(vocab_txt.to_str().ok_or("non-UTF-8 path")?)
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .build()?;
    let mut tok = tokenizers::Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), 3),
        ("[CLS]".into(), 2),
    )));
    tok.with_padding(Some(tokenizers::PaddingParams {
        strategy: tokenizers::PaddingStrategy::Fixed(16),
        ..Default::default()
    }));
    tok.save(path, true)?;
    Ok(())
}

/// Fixture-writing errors are only ever shown to a test's author.
pub type FixtureResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
