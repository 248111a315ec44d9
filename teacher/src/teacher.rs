//! A loaded teacher: a model behind the [`Model`] trait, its tokenizer and its head, ready to label
//! texts for an output spec.
//!
//! Labeling tokenizes, plans length-sorted batches under a token budget, runs the model and computes
//! the output kind from the final states:
//! - `embeddings`: the head's pooling (encoders) or the mean of the last states, L2-normalised
//!   (decoders);
//! - `logits`: the classification head;
//! - `token_topk`: for every position, the output head applied to a chunk of positions at a time, then
//!   top-k, tail, log-partition and seeded samples per position ([`crate::outputs`]). Rows longer than
//!   the spec's window are cut into windows `stride` apart; each position is scored once, in the first
//!   window that reaches it past the previous window's end.
//!
//! Results go back to input order; a row's outputs do not depend on the batch it ran in.

use crate::batching;
use crate::device::DeviceSpec;
use crate::model::{Model, ModelShape};
use crate::outputs::{self, SplitMix64};
use crate::packed::LoadOptions;
use crate::prompt::PromptTokens;
use crate::tokenizer::{Encoded, TextTokenizer};
use crate::{Result, TeacherError};
use candle_core::{Device, Tensor};
use distill_cache::model_dir::{Family, Head, ModelDir, ModelFormat, TeacherInfo};
use distill_cache::spec::{OutputSpec, PromptSpec, SpecError, TopkSpec};
use distill_cache::values::{OutputValues, Samples, TokenTopk, Vectors};
use rayon::prelude::*;
use std::time::Instant;

pub use distill_cache::model_dir::COMPUTE_DTYPE;

/// The teacher's outputs for a list of texts, in input order.
#[derive(Clone, Debug)]
pub struct Labels {
    pub values: OutputValues,
    /// Tokens of each row the teacher saw (after truncation; all of them when windowed).
    pub tokens: Vec<u32>,
    pub truncated: Vec<bool>,
    /// Wall-clock seconds spent in forward passes and heads (the device time this work cost).
    pub device_seconds: f64,
    /// Token slots processed, padding included.
    pub padded_tokens: u64,
    /// Prompted labeling: tokens of the shared prefix not run again (it ran once for all rows).
    pub prefix_tokens_saved: u64,
}

/// Texts tokenized for one output spec by [`Teacher::tokenize_for`], ready for
/// [`Teacher::label_tokenized`].
#[derive(Clone, Debug)]
pub enum Tokenized {
    /// One row per text (embeddings, logits, token-topk).
    Rows(Vec<Encoded>),
    /// A prompt's rows (each text with the prompt's lead and suffix) and the prompt itself.
    Prompted {
        prompt: PromptTokens,
        rows: Vec<Vec<u32>>,
        truncated: Vec<bool>,
    },
}

impl Labels {
    /// The per-example vectors of [`Teacher::label`] (panics on per-token values, which only
    /// [`Teacher::label_spec`] with a `token_topk` spec produces).
    pub fn vectors(&self) -> &Vectors {
        match &self.values {
            OutputValues::Vectors(v) => v,
            OutputValues::TokenTopk(_) => panic!("per-token labels have no vectors"),
        }
    }
}

/// A teacher ready to run.
pub struct Teacher {
    model: Box<dyn Model>,
    tokenizer: TextTokenizer,
    head: Head,
    family: Family,
    device: Device,
    device_spec: DeviceSpec,
    info: TeacherInfo,
    /// Decoders: the chat template the model ships (for the default system message of `--chat`).
    chat_template: Option<String>,
    /// The keys and values of the last prompt prefix run (a job's shards share one prefix: it runs
    /// once per teacher, not once per shard).
    prefix_kv: std::sync::Mutex<Option<PrefixKv>>,
}

/// A prompt prefix's ids and the keys and values of every layer after it.
type PrefixKv = (Vec<u32>, std::sync::Arc<Vec<crate::llama::LayerKv>>);

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teacher")
            .field("info", &self.info)
            .field("device", &self.device_spec)
            .finish()
    }
}

/// Positions whose logits are computed at once: about 64 MB of f32 logits per chunk.
fn head_chunk(vocab: usize) -> usize {
    ((1usize << 24) / vocab.max(1)).clamp(1, 1024)
}

/// Positions a sliced head (one that hands out slices of the vocabulary) takes at once: its weights
/// are dequantized once per chunk, so the more positions the less that costs.
const SLICED_HEAD_CHUNK: usize = 2048;

/// One window of a row for `token_topk`: tokens `start..start + len` run together; positions
/// `emit_from..start + len` are scored from it.
#[derive(Clone, Copy, Debug)]
struct Window {
    row: usize,
    start: usize,
    len: usize,
    emit_from: usize,
}

/// The windows of a row of `n` tokens.
fn windows(row: usize, n: usize, window: usize, stride: usize) -> Vec<Window> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut done = 0;
    loop {
        let len = window.min(n - start);
        out.push(Window {
            row,
            start,
            len,
            emit_from: done.max(start),
        });
        done = start + len;
        if done >= n {
            return out;
        }
        start += stride;
    }
}

impl Teacher {
    /// Loads a teacher from an inspected model with the default options.
    pub fn load(dir: &ModelDir, device: &DeviceSpec) -> Result<Self> {
        Self::load_with(dir, device, &LoadOptions::default())
    }

    /// Loads a teacher from an inspected model. Fails with a message naming the model if its files do
    /// not fit together (tokenizer vocabulary vs the model's, weights vs the config), or if it would
    /// need more memory than there is.
    /// Refuses an HF checkpoint whose tensors (as their safetensors headers declare them) need more
    /// memory than there is, before any weight is read. Its weights load as f32 (bf16 for a decoder
    /// of that precision): only GGUF weights stay in their file's encoding.
    fn check_memory(dir: &ModelDir, options: &LoadOptions) -> Result<()> {
        use crate::packed::Resident;
        let resident = match (dir.family, options.resident) {
            (Family::Llama, Resident::Bf16) => Resident::Bf16,
            _ => Resident::F32,
        };
        let needs = crate::memory::safetensors_needs(&dir.weights, resident)?;
        let available = options.memory_limit.or_else(crate::memory::available);
        crate::memory::check(&dir.location, needs, resident, available)
    }

    pub fn load_with(dir: &ModelDir, device: &DeviceSpec, options: &LoadOptions) -> Result<Self> {
        let loc = dir.location.as_str();
        let model_err = |reason: String| TeacherError::Model {
            location: loc.to_owned(),
            reason,
        };
        let device_handle = device.open()?;
        if dir.format == ModelFormat::Hf && device_handle.is_cpu() {
            Self::check_memory(dir, options)?;
        }
        let (model, tokenizer): (Box<dyn Model>, TextTokenizer) = match dir.family {
            Family::Bert => {
                let cfg_bytes = std::fs::read(dir.hf_config()?)
                    .map_err(|e| model_err(format!("cannot read config.json: {e}")))?;
                let config: crate::bert::Config = serde_json::from_slice(&cfg_bytes)
                    .map_err(|e| model_err(format!("config.json: {e}")))?;
                let tokenizer =
                    TextTokenizer::encoder(loc, dir.hf_tokenizer()?, dir.max_seq_length)?;
                if tokenizer.vocab_size() > config.vocab_size {
                    return Err(model_err(format!(
                        "tokenizer.json has {} tokens but config.json vocab_size is {}: they do not belong together",
                        tokenizer.vocab_size(),
                        config.vocab_size
                    )));
                }
                let tensors =
                    crate::bert::load_tensors(&dir.weights, &device_handle).map_err(|e| {
                        model_err(format!(
                            "cannot read weights: {}",
                            crate::error::without_backtrace(e)
                        ))
                    })?;
                let num_labels = match &dir.head {
                    Head::Classifier { labels } => Some(labels.len()),
                    _ => None,
                };
                let model =
                    crate::bert::Bert::load(loc, config, tensors, num_labels, &device_handle)?;
                (Box::new(model), tokenizer)
            }
            Family::Llama => {
                let tokenizer = Self::decoder_tokenizer(dir)?;
                if tokenizer.vocab_size() > dir.vocab_size {
                    return Err(model_err(format!(
                        "the tokenizer has {} tokens but the model's vocabulary has {}: they do not belong together",
                        tokenizer.vocab_size(),
                        dir.vocab_size
                    )));
                }
                let model = crate::llama::Llama::load(dir, &device_handle, options)?;
                (Box::new(model), tokenizer)
            }
        };
        // Only decoders compute in another precision than f32.
        let dtype = match dir.family {
            Family::Llama => options.resident.compute_dtype(),
            Family::Bert => COMPUTE_DTYPE,
        };
        let fingerprint = dir.fingerprint(dtype)?;
        let chat_template = match dir.family {
            Family::Llama => crate::prompt::chat_template(dir)?,
            Family::Bert => None,
        };
        Ok(Self {
            model,
            tokenizer,
            head: dir.head.clone(),
            family: dir.family,
            device: device_handle,
            device_spec: device.clone(),
            info: dir.info(fingerprint, dtype),
            chat_template,
            prefix_kv: Default::default(),
        })
    }

    /// The tokenizer of a decoder teacher, without its weights.
    pub fn decoder_tokenizer(dir: &ModelDir) -> Result<TextTokenizer> {
        let loc = dir.location.as_str();
        match dir.format {
            ModelFormat::Gguf => {
                let g = distill_cache::gguf::Gguf::open(loc, &dir.weights[0])?;
                TextTokenizer::gguf(loc, &g.tokenizer(loc)?)
            }
            ModelFormat::Hf => TextTokenizer::hf_decoder(loc, dir.hf_tokenizer()?),
        }
    }

    pub fn info(&self) -> &TeacherInfo {
        &self.info
    }

    pub fn device(&self) -> &DeviceSpec {
        &self.device_spec
    }

    /// Sizes of the model (throughput figures, memory).
    pub fn shape(&self) -> ModelShape {
        self.model.shape()
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Values per example of the per-example kinds: embedding dimension or number of labels.
    pub fn width(&self) -> usize {
        match &self.head {
            Head::Embedding { dim, .. } => *dim,
            Head::Classifier { labels } => labels.len(),
            Head::CausalLm { dim, .. } => *dim,
            Head::Unknown => 0,
        }
    }

    /// Checks that this teacher can produce an output spec; the message says what to do instead.
    pub fn check_output(&self, spec: &OutputSpec) -> Result<()> {
        let kind = spec.kind().ok_or_else(|| {
            TeacherError::Config(format!(
                "output kind {:?} is not known to this distill",
                spec.kind_name()
            ))
        })?;
        if let OutputSpec::Logits {
            prompt: Some(p), ..
        } = spec
        {
            if !matches!(self.head, Head::CausalLm { .. }) {
                return Err(SpecError::PromptNeedsDecoder(self.info.source.clone()).into());
            }
            self.prompt_tokens(p)?;
            return Ok(());
        }
        distill_cache::model_dir::check_output(&self.info.head, &self.info.source, kind)?;
        if let OutputSpec::TokenTopk(t) = spec {
            let vocab = self.model.shape().vocab;
            t.validate(vocab)
                .map_err(|e| e.for_teacher(&self.info.source))?;
            if t.window as usize > self.info.max_seq_length {
                return Err(SpecError::WindowTooLong {
                    window: t.window,
                    teacher: self.info.source.clone(),
                    context: self.info.max_seq_length,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Tokenizes texts (special tokens added, encoders and decoder embeddings truncated to the model's
    /// limit, no padding).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let mut encoded = self.tokenizer.encode(texts)?;
        if self.family == Family::Llama {
            let max = self.info.max_seq_length;
            for e in encoded.iter_mut().filter(|e| e.ids.len() > max) {
                e.ids.truncate(max);
                e.truncated = true;
            }
        }
        Ok(encoded)
    }

    /// Final states of one padded batch, `[rows, t, hidden]`, and the padding mask.
    fn states(&self, rows: &[&[u32]]) -> Result<(Tensor, Vec<usize>)> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let b = rows.len();
        let mut ids = vec![0u32; b * t];
        for (i, r) in rows.iter().enumerate() {
            ids[i * t..i * t + r.len()].copy_from_slice(r);
        }
        let ids = Tensor::from_vec(ids, (b, t), &self.device)?;
        let lengths: Vec<usize> = rows.iter().map(|r| r.len()).collect();
        Ok((self.model.hidden_states(&ids, &lengths)?, lengths))
    }

    /// Next-token logits at every position of each row (`row length × vocab`, row-major), the rows run
    /// as one padded batch (causal models only; for scoring and evaluation).
    pub fn position_logits(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let live: Vec<&[u32]> = rows
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| r.as_slice())
            .collect();
        if live.is_empty() {
            return Ok(vec![vec![]; rows.len()]);
        }
        let (states, _) = self.states(&live)?;
        let (b, t, h) = states.dims3()?;
        let flat = states.reshape((b * t, h))?;
        let mut out = Vec::with_capacity(rows.len());
        let mut i = 0;
        for r in rows {
            if r.is_empty() {
                out.push(vec![]);
                continue;
            }
            let x = flat.narrow(0, i * t, r.len())?;
            out.push(self.model.token_logits(&x)?.flatten_all()?.to_vec1()?);
            i += 1;
        }
        Ok(out)
    }

    /// Runs one padded batch of per-example outputs; returns `rows × width` values.
    pub fn forward(&self, rows: &[&Encoded]) -> Result<Vec<f32>> {
        let ids: Vec<&[u32]> = rows.iter().map(|r| r.ids.as_slice()).collect();
        let (states, lengths) = self.states(&ids)?;
        // Sentence encoders pool as their head says; a decoder's embeddings are its mean state.
        let (pooling, normalize) = match &self.head {
            Head::Embedding {
                pooling, normalize, ..
            } => (*pooling, *normalize),
            Head::CausalLm { .. } => (distill_cache::model_dir::Pooling::Mean, true),
            Head::Classifier { .. } => {
                return Ok(self.model.class_logits(&states)?.flatten_all()?.to_vec1()?)
            }
            Head::Unknown => {
                return Err(TeacherError::Config("the teacher's head is unknown".into()))
            }
        };
        if let Some(v) = outputs::pool_host(&states, &lengths, pooling, normalize)? {
            return Ok(v);
        }
        let mask = outputs::padding_mask(
            states.dims3().map(|(b, t, _)| (b, t))?,
            &lengths,
            &self.device,
        )?;
        let pooled = outputs::pool(&states, &mask, pooling)?;
        let out = if normalize {
            outputs::l2_normalize(&pooled)?
        } else {
            pooled
        };
        Ok(out.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Labels texts for a per-example spec (embeddings or logits); see [`Teacher::label_spec`].
    pub fn label(&self, texts: &[&str], max_batch_tokens: usize) -> Result<Labels> {
        let encoded = self.tokenize(texts)?;
        self.label_encoded(&encoded, max_batch_tokens)
    }

    /// Labels texts for any output spec. `seed` makes sampled tokens deterministic (the shard's
    /// fingerprint, in the labeling pass).
    pub fn label_spec(
        &self,
        texts: &[&str],
        spec: &OutputSpec,
        max_batch_tokens: usize,
        seed: u64,
    ) -> Result<Labels> {
        let input = self.tokenize_for(texts, spec)?;
        self.label_tokenized(&input, spec, max_batch_tokens, seed)
    }

    /// The host half of [`Teacher::label_spec`]: texts tokenized as `spec` reads them (a worker runs
    /// it for the next shard while the device labels the current one).
    pub fn tokenize_for(&self, texts: &[&str], spec: &OutputSpec) -> Result<Tokenized> {
        self.check_output(spec)?;
        Ok(match spec {
            OutputSpec::TokenTopk(_) => Tokenized::Rows(self.tokenizer.encode(texts)?),
            OutputSpec::Logits {
                prompt: Some(p), ..
            } => {
                let (prompt, rows, truncated) = self.prompted_rows(texts, p)?;
                Tokenized::Prompted {
                    prompt,
                    rows,
                    truncated,
                }
            }
            _ => Tokenized::Rows(self.tokenize(texts)?),
        })
    }

    /// The device half of [`Teacher::label_spec`], from [`Teacher::tokenize_for`]'s output for the
    /// same spec.
    pub fn label_tokenized(
        &self,
        input: &Tokenized,
        spec: &OutputSpec,
        max_batch_tokens: usize,
        seed: u64,
    ) -> Result<Labels> {
        self.check_output(spec)?;
        match (spec, input) {
            (OutputSpec::TokenTopk(t), Tokenized::Rows(encoded)) => {
                self.label_topk(encoded, t, max_batch_tokens, seed)
            }
            (
                OutputSpec::Logits {
                    prompt: Some(p), ..
                },
                Tokenized::Prompted {
                    prompt,
                    rows,
                    truncated,
                },
            ) => self.label_prompted_rows(prompt, rows, truncated, p, max_batch_tokens),
            (
                OutputSpec::Logits { prompt: None, .. } | OutputSpec::Embeddings { .. },
                Tokenized::Rows(encoded),
            ) => self.label_encoded(encoded, max_batch_tokens),
            _ => Err(TeacherError::Config(format!(
                "texts tokenized for another output than {}",
                spec.describe()
            ))),
        }
    }

    /// A prompt resolved for this teacher's tokenizer and context.
    pub fn prompt_tokens(&self, p: &PromptSpec) -> Result<PromptTokens> {
        crate::prompt::resolve(
            p,
            &self.tokenizer,
            self.chat_template.as_deref(),
            self.info.max_seq_length,
        )
    }

    /// Class logits of a prompt: for every row, the log-probability of each choice's continuation
    /// after `prefix · text · suffix`. The prefix runs once and every row attends to its keys and
    /// values; the continuations of a row run after the row's own keys and values (only where a
    /// continuation has more than one token: the first token's log-probability comes from the row's
    /// last position).
    pub fn label_prompted(
        &self,
        texts: &[&str],
        p: &PromptSpec,
        max_batch_tokens: usize,
    ) -> Result<Labels> {
        let (prompt, rows, truncated) = self.prompted_rows(texts, p)?;
        self.label_prompted_rows(&prompt, &rows, &truncated, p, max_batch_tokens)
    }

    /// Each text as the row a prompt runs after its prefix: `lead · text` tokenized, cut to the room
    /// the context leaves, then the suffix (and whether it was cut). A class's value is the
    /// log-probability of its continuation after `prefix · row`.
    pub fn prompted_rows(
        &self,
        texts: &[&str],
        p: &PromptSpec,
    ) -> Result<(PromptTokens, Vec<Vec<u32>>, Vec<bool>)> {
        let pt = self.prompt_tokens(p)?;
        let context = self.info.max_seq_length;
        let longest = pt.continuations.iter().map(Vec::len).max().unwrap_or(1);
        let room = context - pt.prefix.len() - pt.suffix.len() - longest;
        let mut rows = Vec::with_capacity(texts.len());
        let mut truncated = Vec::with_capacity(texts.len());
        for t in texts {
            let mut ids = self.tokenizer.encode_plain(&format!("{}{t}", pt.lead))?;
            truncated.push(ids.len() > room);
            ids.truncate(room);
            ids.extend_from_slice(&pt.suffix);
            rows.push(ids);
        }
        Ok((pt, rows, truncated))
    }

    fn label_prompted_rows(
        &self,
        pt: &PromptTokens,
        rows: &[Vec<u32>],
        truncated: &[bool],
        p: &PromptSpec,
        max_batch_tokens: usize,
    ) -> Result<Labels> {
        let classes = pt.continuations.len();
        let start = Instant::now();
        let device = &self.device;
        let ids_tensor = |rows: &[&[u32]]| -> Result<(Tensor, Vec<usize>)> {
            let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
            let mut ids = vec![0u32; rows.len() * t];
            for (i, r) in rows.iter().enumerate() {
                ids[i * t..i * t + r.len()].copy_from_slice(r);
            }
            Ok((
                Tensor::from_vec(ids, (rows.len(), t), device)?,
                rows.iter().map(|r| r.len()).collect(),
            ))
        };
        // The shared prefix, once (and once for every shard of a job).
        let cached = self
            .prefix_kv
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(ids, _)| *ids == pt.prefix)
            .map(|(_, kv)| kv.clone());
        let past = match cached {
            Some(kv) => kv,
            None => {
                let (prefix_ids, prefix_len) = ids_tensor(&[pt.prefix.as_slice()])?;
                let (_, kv) = self
                    .model
                    .states_after(&prefix_ids, &prefix_len, None, true)?;
                let kv = std::sync::Arc::new(kv.expect("kept").remove(0));
                *self.prefix_kv.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((pt.prefix.clone(), kv.clone()));
                kv
            }
        };
        let multi = pt.continuations.iter().any(|c| c.len() > 1);
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let batches = batching::plan(&lengths, max_batch_tokens.max(1));
        let mut values = vec![0f32; rows.len() * classes];
        let log_softmax = |logits: &[f32]| -> Vec<f32> {
            let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let lse = m + logits
                .iter()
                .map(|&x| crate::cpu::exp_f32(x - m) as f64)
                .sum::<f64>()
                .ln() as f32;
            logits.iter().map(|&x| x - lse).collect()
        };
        let vocab = self.model.shape().vocab;
        let mut cont_tokens = 0u64;
        let (mut last_states, mut last_rows) = (Vec::new(), Vec::new());
        for batch in &batches {
            let refs: Vec<&[u32]> = batch.rows.iter().map(|&i| rows[i].as_slice()).collect();
            let (ids, lens) = ids_tensor(&refs)?;
            let (states, kept) =
                self.model
                    .states_after(&ids, &lens, Some(past.as_slice()), multi)?;
            let (b, t, h) = states.dims3()?;
            let last: Vec<u32> = lens
                .iter()
                .enumerate()
                .map(|(j, &l)| (j * t + l - 1) as u32)
                .collect();
            let last = Tensor::from_vec(last, b, device)?;
            // The rows' last states; the head runs over all of them at the end.
            last_states.push(states.reshape((b * t, h))?.index_select(&last, 0)?);
            last_rows.extend_from_slice(&batch.rows);
            if let Some(kept) = kept {
                // Continuations of more than one token, after the row's own keys and values.
                for (j, &row) in batch.rows.iter().enumerate() {
                    let row_past = crate::llama::extend_past(past.as_slice(), &kept[j]);
                    let longer: Vec<(usize, &[u32])> = pt
                        .continuations
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.len() > 1)
                        .map(|(c, cont)| (c, &cont[..cont.len() - 1]))
                        .collect();
                    let refs: Vec<&[u32]> = longer.iter().map(|x| x.1).collect();
                    cont_tokens += refs.iter().map(|r| r.len() as u64).sum::<u64>();
                    let (ids, lens) = ids_tensor(&refs)?;
                    let (states, _) =
                        self.model
                            .states_after(&ids, &lens, Some(&row_past), false)?;
                    let (b, t, h) = states.dims3()?;
                    let logits: Vec<f32> = self
                        .model
                        .token_logits(&states.reshape((b * t, h))?)?
                        .flatten_all()?
                        .to_vec1()?;
                    for (k, (c, _)) in longer.iter().enumerate() {
                        let cont = &pt.continuations[*c];
                        for pos in 0..cont.len() - 1 {
                            let at = (k * t + pos) * vocab;
                            let lp = log_softmax(&logits[at..at + vocab]);
                            values[row * classes + c] += lp[cont[pos + 1] as usize];
                        }
                    }
                }
            }
        }
        if !last_states.is_empty() {
            let firsts: Vec<u32> = pt.continuations.iter().map(|c| c[0]).collect();
            let lp = self.first_token_logprobs(&Tensor::cat(&last_states, 0)?, &firsts)?;
            for (j, &row) in last_rows.iter().enumerate() {
                for c in 0..classes {
                    values[row * classes + c] += lp[j * classes + c];
                }
            }
        }
        if p.length_normalize {
            for row in values.chunks_mut(classes) {
                for (v, cont) in row.iter_mut().zip(&pt.continuations) {
                    *v /= cont.len() as f32;
                }
            }
        }
        Ok(Labels {
            values: OutputValues::Vectors(Vectors {
                width: classes,
                values,
            }),
            tokens: lengths.iter().map(|&l| l as u32).collect(),
            truncated: truncated.to_vec(),
            device_seconds: start.elapsed().as_secs_f64(),
            padded_tokens: batching::padded_tokens(&batches) + cont_tokens,
            prefix_tokens_saved: (pt.prefix.len() * rows.len().saturating_sub(1)) as u64,
        })
    }

    /// The log-probabilities of tokens `ids` at each of `states` (`[n, hidden]`): `[n, ids]`. The head
    /// runs over many positions at once (a sliced head's weights are dequantized once per chunk), its
    /// log-partition gathered online over the vocabulary's slices.
    fn first_token_logprobs(&self, states: &Tensor, ids: &[u32]) -> Result<Vec<f32>> {
        let n = states.dim(0)?;
        let chunk = if self.model.sliced_head() {
            SLICED_HEAD_CHUNK
        } else {
            head_chunk(self.model.shape().vocab)
        };
        let mut out = vec![0f32; n * ids.len()];
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            // Per position: the running maximum, Σ exp(logit − maximum) and the logits of `ids`.
            let mut acc = vec![(f32::NEG_INFINITY, 0f64); len];
            let picked = &mut out[start * ids.len()..(start + len) * ids.len()];
            self.model.token_logits_sliced(
                &states.narrow(0, start, len)?,
                &mut |first, width, l| {
                    acc.par_iter_mut()
                        .zip(l.par_chunks(width))
                        .for_each(|(a, row)| {
                            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                            let s: f64 =
                                row.iter().map(|&x| crate::cpu::exp_f32(x - m) as f64).sum();
                            let top = a.0.max(m);
                            a.1 = a.1 * ((a.0 - top) as f64).exp() + s * ((m - top) as f64).exp();
                            a.0 = top;
                        });
                    for (j, p) in picked.chunks_mut(ids.len()).enumerate() {
                        for (c, &id) in ids.iter().enumerate() {
                            let id = id as usize;
                            if (first..first + width).contains(&id) {
                                p[c] = l[j * width + id - first];
                            }
                        }
                    }
                },
            )?;
            for (p, &(m, s)) in picked.chunks_mut(ids.len()).zip(&acc) {
                let lse = m + s.ln() as f32;
                p.iter_mut().for_each(|x| *x -= lse);
            }
        }
        Ok(out)
    }

    /// Labels already tokenized texts with a per-example output.
    pub fn label_encoded(&self, encoded: &[Encoded], max_batch_tokens: usize) -> Result<Labels> {
        let width = self.width();
        let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
        let batches = batching::plan(&lengths, max_batch_tokens.max(1));
        let mut values = vec![0f32; encoded.len() * width];
        let start = Instant::now();
        for batch in &batches {
            let rows: Vec<&Encoded> = batch.rows.iter().map(|&i| &encoded[i]).collect();
            let out = self.forward(&rows)?;
            for (j, &i) in batch.rows.iter().enumerate() {
                values[i * width..(i + 1) * width]
                    .copy_from_slice(&out[j * width..(j + 1) * width]);
            }
        }
        Ok(Labels {
            values: OutputValues::Vectors(Vectors { width, values }),
            tokens: lengths.iter().map(|&l| l as u32).collect(),
            truncated: encoded.iter().map(|e| e.truncated).collect(),
            device_seconds: start.elapsed().as_secs_f64(),
            padded_tokens: batching::padded_tokens(&batches),
            prefix_tokens_saved: 0,
        })
    }

    /// Per-token top-k of every row (rows longer than the window are windowed).
    pub fn label_topk(
        &self,
        encoded: &[Encoded],
        spec: &TopkSpec,
        max_batch_tokens: usize,
        seed: u64,
    ) -> Result<Labels> {
        let k = spec.top_k as usize;
        let draws = spec.samples as usize;
        let vocab = self.model.shape().vocab;
        let (window, stride) = (spec.window as usize, spec.stride as usize);
        let mut offsets = vec![0usize];
        for e in encoded {
            offsets.push(offsets.last().unwrap() + e.ids.len());
        }
        let total = *offsets.last().unwrap();
        let mut out = TokenTopk {
            k,
            token_ids: encoded.iter().flat_map(|e| e.ids.iter().copied()).collect(),
            topk_ids: vec![0; total * k],
            topk_logprobs: vec![0.0; total * k],
            tail_logprob: vec![0.0; total],
            log_partition: vec![0.0; total],
            offsets,
            samples: None,
        };
        // Samples per position, gathered in any order, assembled in position order at the end.
        let mut sampled: Vec<(Vec<u32>, Vec<u16>)> = if draws > 0 {
            vec![(vec![], vec![]); total]
        } else {
            vec![]
        };
        let pieces: Vec<Window> = encoded
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.ids.is_empty())
            .flat_map(|(r, e)| windows(r, e.ids.len(), window, stride))
            .collect();
        let lengths: Vec<usize> = pieces.iter().map(|w| w.len).collect();
        let batches = batching::plan(&lengths, max_batch_tokens.max(1));
        // Without samples (which need a position's whole distribution), a sliced head merges each
        // slice into every position's top-k as it comes.
        let sliced = draws == 0 && self.model.sliced_head();
        let chunk = if sliced {
            SLICED_HEAD_CHUNK
        } else {
            head_chunk(vocab)
        };
        let start = Instant::now();
        for batch in &batches {
            let rows: Vec<&[u32]> = batch
                .rows
                .iter()
                .map(|&i| {
                    let w = pieces[i];
                    &encoded[w.row].ids[w.start..w.start + w.len]
                })
                .collect();
            let (states, _) = self.states(&rows)?;
            let (b, t, h) = states.dims3()?;
            // The positions to score: (flat index in the batch's states, global position).
            let mut picks: Vec<(u32, usize, usize)> = Vec::new();
            for (j, &i) in batch.rows.iter().enumerate() {
                let w = pieces[i];
                for p in w.emit_from..w.start + w.len {
                    picks.push(((j * t + p - w.start) as u32, w.row, p));
                }
            }
            let flat = states.reshape((b * t, h))?;
            for part in picks.chunks(chunk) {
                let index: Vec<u32> = part.iter().map(|p| p.0).collect();
                let index = Tensor::from_vec(index, part.len(), &self.device)?;
                let states = flat.index_select(&index, 0)?;
                if sliced {
                    let mut accs = vec![outputs::SlicedTopk::new(k); part.len()];
                    self.model
                        .token_logits_sliced(&states, &mut |first, width, l| {
                            accs.par_iter_mut()
                                .zip(l.par_chunks(width))
                                .for_each(|(a, row)| a.add(first as u32, row));
                        })?;
                    let stats: Vec<_> = accs
                        .into_par_iter()
                        .map(|a| {
                            let (mut ids, mut lps) = (vec![0u32; k], vec![0f32; k]);
                            let s = a.finish(&mut ids, &mut lps);
                            (ids, lps, s)
                        })
                        .collect();
                    for ((ids, lps, s), &(_, row, p)) in stats.into_iter().zip(part) {
                        let g = out.offsets[row] + p;
                        out.topk_ids[g * k..(g + 1) * k].copy_from_slice(&ids);
                        out.topk_logprobs[g * k..(g + 1) * k].copy_from_slice(&lps);
                        out.tail_logprob[g] = s.tail_logprob;
                        out.log_partition[g] = s.log_partition;
                    }
                    continue;
                }
                let logits = self.model.token_logits(&states)?;
                let logits: Vec<f32> = logits.flatten_all()?.to_vec1()?;
                let stats: Vec<_> = logits
                    .par_chunks(vocab)
                    .zip(part.par_iter())
                    .map(|(l, &(_, row, p))| {
                        let (mut ids, mut lps) = (vec![0u32; k], vec![0f32; k]);
                        let s = outputs::topk_position(l, &mut ids, &mut lps);
                        let mut drawn = (vec![], vec![]);
                        if draws > 0 {
                            let mut rng = SplitMix64::for_position(seed, row as u64, p as u64);
                            outputs::sample_position(
                                l,
                                s.log_partition,
                                draws,
                                &mut rng,
                                &mut drawn.0,
                                &mut drawn.1,
                            );
                        }
                        (ids, lps, s, drawn)
                    })
                    .collect();
                for ((ids, lps, s, drawn), &(_, row, p)) in stats.into_iter().zip(part) {
                    let g = out.offsets[row] + p;
                    out.topk_ids[g * k..(g + 1) * k].copy_from_slice(&ids);
                    out.topk_logprobs[g * k..(g + 1) * k].copy_from_slice(&lps);
                    out.tail_logprob[g] = s.tail_logprob;
                    out.log_partition[g] = s.log_partition;
                    if draws > 0 {
                        sampled[g] = drawn;
                    }
                }
            }
        }
        if draws > 0 {
            let mut s = Samples {
                offsets: vec![0],
                ..Default::default()
            };
            for (ids, counts) in sampled {
                s.ids.extend(ids);
                s.counts.extend(counts);
                s.offsets.push(s.ids.len());
            }
            out.samples = Some(s);
        }
        Ok(Labels {
            tokens: encoded.iter().map(|e| e.ids.len() as u32).collect(),
            truncated: vec![false; encoded.len()],
            values: OutputValues::TokenTopk(out),
            device_seconds: start.elapsed().as_secs_f64(),
            padded_tokens: batching::padded_tokens(&batches),
            prefix_tokens_saved: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_score_every_position_once_with_context() {
        for (n, w, s) in [
            (5, 8, 4),
            (8, 8, 4),
            (9, 8, 4),
            (20, 8, 3),
            (17, 4, 4),
            (3, 2, 1),
        ] {
            let ws = windows(0, n, w, s);
            let mut scored = vec![0; n];
            for x in &ws {
                assert!(x.len <= w && x.start + x.len <= n);
                for (p, count) in scored
                    .iter_mut()
                    .enumerate()
                    .take(x.start + x.len)
                    .skip(x.emit_from)
                {
                    *count += 1;
                    // Every position after the first window sees at least window − stride tokens.
                    if x.start > 0 {
                        assert!(p - x.start >= w - s, "n {n} w {w} s {s}: {x:?}");
                    }
                }
            }
            assert!(
                scored.iter().all(|&c| c == 1),
                "n {n} w {w} s {s}: {scored:?}"
            );
        }
    }
}
