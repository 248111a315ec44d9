//! Tiny random models for fast tests that need no download.
//!
//! - BERT in the HF layout ([`write_tiny_bert`]). The tokenizer is a real WordPiece `tokenizer.json`
//!   over a small vocabulary (specials, a few words, single letters and `##` letters), saved with a
//!   fixed padding of 16 like many packaged tokenizers, so tests prove that distill overrides it. The
//!   compatibility store `tests/data/compat-0.1.0` was written from these: their bytes must not change.
//! - Llama as a GGUF file ([`write_tiny_llama_gguf`]) and as an HF directory ([`write_tiny_llama_hf`])
//!   with the same weights (Q/K permuted as llama.cpp's converter does, so both compute the same
//!   function), and a byte-level BPE tokenizer over the 256 byte symbols plus merges of a few words.
//!
//! Weights come from a seeded generator, so the same seed gives byte-identical files (and the same
//! teacher fingerprint).

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

/// Shape of the tiny llama models.
pub const LLAMA_HIDDEN: usize = 64;
pub const LLAMA_LAYERS: usize = 2;
pub const LLAMA_HEADS: usize = 4;
pub const LLAMA_KV_HEADS: usize = 2;
pub const LLAMA_FFN: usize = 128;
/// Context of the tiny llama models (short, so tests exercise windowing).
pub const LLAMA_CONTEXT: usize = 128;

/// What the tiny llama GGUF is made of.
#[derive(Clone, Debug)]
pub struct TinyLlama {
    pub seed: u64,
    /// Type of the layers' matrices (`token_embd` is Q8_0 unless this is F32, norms are F32).
    pub quant: candle_core::quantized::GgmlDType,
    /// A separate `output.weight` instead of tied embeddings.
    pub untied_head: bool,
    /// Q/K/V biases (as Qwen2 has).
    pub qkv_bias: bool,
    pub add_bos: bool,
    /// Rows of the embedding matrix when not the tokenizer's vocabulary (to make a model whose
    /// tokenizer does not fit it).
    pub embedding_rows: Option<usize>,
}

impl Default for TinyLlama {
    fn default() -> Self {
        Self {
            seed: 5,
            quant: candle_core::quantized::GgmlDType::F32,
            untied_head: false,
            qkv_bias: false,
            add_bos: false,
            embedding_rows: None,
        }
    }
}

/// GPT-2's byte-to-symbol map: printable bytes stand for themselves, the rest move to 256 + n.
pub fn byte_symbols() -> Vec<char> {
    let mut out = vec![' '; 256];
    let mut n = 0;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).expect("valid")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid")
        };
    }
    out
}

/// The tiny BPE vocabulary: 3 control tokens, the 256 byte symbols, then the merges' results; and the
/// merges (left to right over a few words, then each word after a space).
pub fn tiny_bpe() -> (Vec<String>, Vec<(String, String)>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let symbols = byte_symbols();
    tokens.extend(symbols.iter().map(|c| c.to_string()));
    let mut merges: Vec<(String, String)> = Vec::new();
    for w in [
        "the", "movie", "was", "good", "bad", "very", "fun", "boring", "film", "great", "awful",
        "not", "review", "positive", "negative", "is",
    ] {
        // The word from its letters, left to right; then the word after a space as one more merge
        // (BPE applies merges by rank, so the letters merge first).
        let parts: Vec<String> = w.bytes().map(|b| symbols[b as usize].to_string()).collect();
        let mut acc = parts[0].clone();
        for p in parts[1..].iter().chain(std::iter::once(&String::new())) {
            let (left, right) = if p.is_empty() {
                (symbols[b' ' as usize].to_string(), acc.clone())
            } else {
                (acc.clone(), p.clone())
            };
            let merged = format!("{left}{right}");
            if !merges.contains(&(left.clone(), right.clone())) {
                merges.push((left, right));
                if !tokens.contains(&merged) {
                    tokens.push(merged.clone());
                }
            }
            if !p.is_empty() {
                acc = merged;
            }
        }
    }
    (tokens, merges)
}

struct LlamaWeights {
    /// HF names → `[out, in]` (or `[n]`) f32 values.
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

fn tiny_llama_weights(spec: &TinyLlama, vocab: usize) -> LlamaWeights {
    let (h, f, d) = (LLAMA_HIDDEN, LLAMA_FFN, LLAMA_HIDDEN / LLAMA_HEADS);
    let mut rng = Rng(spec.seed.wrapping_add(0x5151_5151));
    let mut gen = |shape: &[usize], scale: f32, offset: f32| -> Vec<f32> {
        let n: usize = shape.iter().product();
        (0..n).map(|_| rng.normal() * scale + offset).collect()
    };
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let v = gen(&shape, scale, offset);
        t.push((name, shape, v));
    };
    put("model.embed_tokens.weight".into(), vec![vocab, h], 0.5, 0.0);
    for i in 0..LLAMA_LAYERS {
        let p = format!("model.layers.{i}.");
        put(format!("{p}input_layernorm.weight"), vec![h], 0.1, 1.0);
        put(
            format!("{p}self_attn.q_proj.weight"),
            vec![LLAMA_HEADS * d, h],
            0.25,
            0.0,
        );
        put(
            format!("{p}self_attn.k_proj.weight"),
            vec![LLAMA_KV_HEADS * d, h],
            0.25,
            0.0,
        );
        put(
            format!("{p}self_attn.v_proj.weight"),
            vec![LLAMA_KV_HEADS * d, h],
            0.25,
            0.0,
        );
        if spec.qkv_bias {
            put(
                format!("{p}self_attn.q_proj.bias"),
                vec![LLAMA_HEADS * d],
                0.1,
                0.0,
            );
            put(
                format!("{p}self_attn.k_proj.bias"),
                vec![LLAMA_KV_HEADS * d],
                0.1,
                0.0,
            );
            put(
                format!("{p}self_attn.v_proj.bias"),
                vec![LLAMA_KV_HEADS * d],
                0.1,
                0.0,
            );
        }
        put(
            format!("{p}self_attn.o_proj.weight"),
            vec![h, LLAMA_HEADS * d],
            0.2,
            0.0,
        );
        put(
            format!("{p}post_attention_layernorm.weight"),
            vec![h],
            0.1,
            1.0,
        );
        put(format!("{p}mlp.gate_proj.weight"), vec![f, h], 0.2, 0.0);
        put(format!("{p}mlp.up_proj.weight"), vec![f, h], 0.2, 0.0);
        put(format!("{p}mlp.down_proj.weight"), vec![h, f], 0.2, 0.0);
    }
    put("model.norm.weight".into(), vec![h], 0.1, 1.0);
    if spec.untied_head {
        put("lm_head.weight".into(), vec![vocab, h], 0.3, 0.0);
    }
    LlamaWeights { tensors: t }
}

/// Writes a tiny random llama GGUF file (llama.cpp names, `smollm` byte-level BPE tokenizer).
pub fn write_tiny_llama_gguf(path: &Path, spec: &TinyLlama) -> FixtureResult<()> {
    use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
    let (tokens, merges) = tiny_bpe();
    let vocab = tokens.len();
    let weights = tiny_llama_weights(spec, spec.embedding_rows.unwrap_or(vocab));
    let d = LLAMA_HIDDEN / LLAMA_HEADS;
    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    for (name, shape, values) in &weights.tensors {
        let mut tensor = Tensor::from_vec(values.clone(), shape.as_slice(), &Device::Cpu)?;
        // llama.cpp's converter permutes Q/K rows for adjacent rotary pairs.
        if name.contains("q_proj.") {
            tensor = crate::llama::permute_rotary_rows(&tensor, LLAMA_HEADS, false)?;
        }
        if name.contains("k_proj.") {
            tensor = crate::llama::permute_rotary_rows(&tensor, LLAMA_KV_HEADS, false)?;
        }
        let dtype = if shape.len() == 1 || spec.quant == GgmlDType::F32 {
            GgmlDType::F32
        } else if name == "model.embed_tokens.weight" {
            GgmlDType::Q8_0
        } else {
            spec.quant
        };
        let gguf = gguf_name_of(name);
        qtensors.push((gguf, QTensor::quantize(&tensor, dtype)?));
    }
    let u32v = |x: usize| Value::U32(x as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("distill tiny llama".into())),
        ("llama.context_length", u32v(LLAMA_CONTEXT)),
        ("llama.embedding_length", u32v(LLAMA_HIDDEN)),
        ("llama.block_count", u32v(LLAMA_LAYERS)),
        ("llama.feed_forward_length", u32v(LLAMA_FFN)),
        ("llama.attention.head_count", u32v(LLAMA_HEADS)),
        ("llama.attention.head_count_kv", u32v(LLAMA_KV_HEADS)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.rope.dimension_count", u32v(d)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(
                (0..vocab)
                    .map(|i| Value::I32(if i < 3 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.merges",
            Value::Array(
                merges
                    .iter()
                    .map(|(a, b)| Value::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id", u32v(1)),
        ("tokenizer.ggml.eos_token_id", u32v(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(spec.add_bos)),
    ];
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::File::create(path)?;
    candle_core::quantized::gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
    Ok(())
}

fn gguf_name_of(hf: &str) -> String {
    if let Some(rest) = hf.strip_prefix("model.layers.") {
        let (i, part) = rest.split_once('.').expect("layer weight");
        let part = match part {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            other => panic!("unmapped {other}"),
        };
        return format!("blk.{i}.{part}");
    }
    match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        other => panic!("unmapped {other}"),
    }
}

/// Writes the same tiny llama as an HF directory (`config.json`, `model.safetensors` in `dtype`,
/// `tokenizer.json`). With F32 weights it computes what the F32 GGUF of the same spec computes.
pub fn write_tiny_llama_hf(
    dir: &Path,
    spec: &TinyLlama,
    dtype: candle_core::DType,
) -> FixtureResult<()> {
    std::fs::create_dir_all(dir)?;
    let (tokens, merges) = tiny_bpe();
    let vocab = tokens.len();
    let weights = tiny_llama_weights(spec, vocab);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    for (name, shape, values) in weights.tensors {
        t.insert(
            name,
            Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?,
        );
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": if spec.qkv_bias { "qwen2" } else { "llama" },
        "hidden_size": LLAMA_HIDDEN,
        "intermediate_size": LLAMA_FFN,
        "num_hidden_layers": LLAMA_LAYERS,
        "num_attention_heads": LLAMA_HEADS,
        "num_key_value_heads": LLAMA_KV_HEADS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "max_position_embeddings": LLAMA_CONTEXT,
        "tie_word_embeddings": !spec.untied_head,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    let tok = distill_cache::gguf::GgufTokenizer {
        pre: "smollm".into(),
        tokens,
        merges,
        token_types: (0..vocab).map(|i| if i < 3 { 3 } else { 1 }).collect(),
        bos: Some(1),
        eos: Some(2),
        add_bos: false,
    };
    let tokenizer = crate::tokenizer::TextTokenizer::gguf("tiny", &tok)?;
    tokenizer.inner().save(dir.join("tokenizer.json"), true)?;
    Ok(())
}
