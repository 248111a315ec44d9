//! The output spec: what a cache entry stores per example or per token (kind, dtype, top-k settings,
//! prompt). Its serialised form is fingerprinted into every shard's address, so it is a compatibility
//! contract: the first release's kinds serialise exactly as they did then.

use crate::fingerprint::{Fingerprint, Hasher};
use crate::Result;
use serde::{Deserialize, Serialize};

/// Storage type of the output values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            _ => Err(format!("unknown dtype {s:?}: use f32 or f16")),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        })
    }
}

/// The output kinds a user can ask for (`--output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// One vector per example: a sentence encoder's pooled states, or a decoder's mean last states.
    Embeddings,
    /// Class logits per example (a classifier teacher, or a task head).
    Logits,
    /// Per token, the next-token distribution's top-k, tail mass and log-partition (decoder teachers).
    TokenTopk,
}

impl std::str::FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embeddings" | "embedding" => Ok(Self::Embeddings),
            "logits" => Ok(Self::Logits),
            "token-topk" | "token_topk" => Ok(Self::TokenTopk),
            _ => Err(format!(
                "unknown output {s:?}: use embeddings, logits or token-topk"
            )),
        }
    }
}

impl OutputKind {
    /// The name on the command line and the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Embeddings => "embeddings",
            Self::Logits => "logits",
            Self::TokenTopk => "token-topk",
        }
    }
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings of a `token_topk` entry: what is kept of each position's next-token distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopkSpec {
    /// Storage type of `topk_logprobs` (`tail_logprob` and `log_partition` are always f32).
    pub dtype: Dtype,
    /// Entries kept per position, sorted by log-probability.
    pub top_k: u32,
    /// Draws per position from the full distribution (0: none), stored as distinct ids and counts.
    pub samples: u32,
    /// Longest run of tokens the teacher sees at once; longer rows are windowed.
    pub window: u32,
    /// How far each further window of a long row moves (every position of a window after the first
    /// sees at least `window - stride` tokens of context).
    pub stride: u32,
}

impl TopkSpec {
    /// Checks the settings against a teacher's vocabulary; the message names the flag.
    pub fn validate(&self, vocab_size: usize) -> Result<(), SpecError> {
        if self.top_k == 0 || self.top_k as usize > vocab_size {
            return Err(SpecError::TopK {
                top_k: self.top_k,
                vocab: vocab_size,
            });
        }
        if self.window < 2 {
            return Err(SpecError::WindowTooSmall(self.window));
        }
        if self.stride == 0 || self.stride > self.window {
            return Err(SpecError::Stride {
                stride: self.stride,
                window: self.window,
            });
        }
        if self.samples > u16::MAX as u32 {
            return Err(SpecError::Samples(self.samples));
        }
        Ok(())
    }
}

/// An output request or spec that cannot be used. Each names the request field it is about
/// ([`SpecError::field`]: `top_k`, `window`, `prompt`, …) and says what to do in one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "--top-k {top_k} is out of range: it must be between 1 and the vocabulary size {vocab}"
    )]
    TopK { top_k: u32, vocab: usize },
    #[error("--window {0} is too small: at least 2 tokens")]
    WindowTooSmall(u32),
    #[error("--window {window} is longer than teacher {teacher}'s context of {context} tokens")]
    WindowTooLong {
        window: u32,
        teacher: String,
        context: usize,
    },
    #[error("--stride {stride} is out of range: between 1 and the window {window}")]
    Stride { stride: u32, window: u32 },
    #[error("--samples {0} is too large (at most 65535)")]
    Samples(u32),
    /// A `token-topk` setting given with another output (the field name).
    #[error("--{} applies to --output token-topk only", .0.replace('_', "-"))]
    TopkOnly(&'static str),
    #[error("--prompt must contain {{text}} exactly once (it has it {0} times)")]
    Placeholder(usize),
    #[error("--choice: give at least two, as LABEL=CONTINUATION")]
    TooFewChoices,
    #[error("--choice {label}={continuation}: the label and the continuation must not be empty")]
    EmptyChoice { label: String, continuation: String },
    #[error("--choice: label {0:?} is given twice")]
    DuplicateChoice(String),
    #[error("--prompt labels a task: use --output logits (or leave --output out)")]
    PromptNeedsLogits,
    #[error("teacher {0} is not a causal language model: --prompt needs a decoder teacher")]
    PromptNeedsDecoder(String),
    /// The teacher's head cannot produce the output kind; `reason` says what it is and what to use.
    #[error("teacher {teacher} {reason}")]
    WrongOutput {
        teacher: String,
        reason: &'static str,
    },
    /// A setting out of range for this teacher.
    #[error("teacher {teacher}: {inner}")]
    ForTeacher {
        teacher: String,
        inner: Box<SpecError>,
    },
}

impl SpecError {
    /// The request field (and wire field) the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::TopK { .. } => "top_k",
            Self::WindowTooSmall(_) | Self::WindowTooLong { .. } => "window",
            Self::Stride { .. } => "stride",
            Self::Samples(_) => "samples",
            Self::TopkOnly(field) => field,
            Self::Placeholder(_)
            | Self::TooFewChoices
            | Self::EmptyChoice { .. }
            | Self::DuplicateChoice(_)
            | Self::PromptNeedsDecoder(_) => "prompt",
            Self::PromptNeedsLogits | Self::WrongOutput { .. } => "output",
            Self::ForTeacher { inner, .. } => inner.field(),
        }
    }

    /// This error for a named teacher.
    pub fn for_teacher(self, teacher: &str) -> Self {
        Self::ForTeacher {
            teacher: teacher.to_owned(),
            inner: Box::new(self),
        }
    }
}

/// A prompt that turns a decoder LM into a classifier (`distill label --prompt … --choice …`): the class
/// logits of a row are the log-probabilities of each choice's continuation after the prompt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSpec {
    /// The template, with `{text}` where the row goes.
    pub template: String,
    /// Labels and continuations, in logits column order.
    pub choices: Vec<Choice>,
    /// Wrapped in the model's chat format (a user turn, then the assistant's turn opened).
    pub chat: bool,
    /// The chat's system message (`None`: the model's default, if its chat template has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Text after the prompt (after the assistant's turn opens, with `chat`) that the continuations
    /// follow, e.g. `"The review is"`.
    pub answer_prefix: String,
    /// Divide each continuation's log-probability by its number of tokens (default: summed).
    pub length_normalize: bool,
}

/// One class of a prompt: its label and the text that answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub label: String,
    pub continuation: String,
}

/// A prompt as `distill label`'s flags give it: `--prompt` (a template, or `@FILE`), each `--choice
/// LABEL=CONTINUATION`, `--chat`, `--system`, `--answer-prefix`, `--length-normalize`.
#[derive(Clone, Copy, Debug)]
pub struct PromptFlags<'a> {
    pub prompt: Option<&'a str>,
    pub choices: &'a [String],
    pub chat: bool,
    pub system: Option<&'a str>,
    pub answer_prefix: &'a str,
    pub length_normalize: bool,
}

impl PromptFlags<'_> {
    /// The prompt they describe (the template read from `@FILE`), `None` without `--prompt`; an
    /// error naming the flag when they do not fit together.
    pub fn spec(&self) -> std::result::Result<Option<PromptSpec>, String> {
        let Some(t) = self.prompt else {
            let prompted = !self.choices.is_empty()
                || self.chat
                || self.system.is_some()
                || !self.answer_prefix.is_empty()
                || self.length_normalize;
            return match prompted {
                true => Err("--choice, --chat, --system, --answer-prefix and --length-normalize need --prompt".into()),
                false => Ok(None),
            };
        };
        if self.system.is_some() && !self.chat {
            return Err("--system is the chat's system message: it needs --chat".into());
        }
        let template = match t.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("--prompt @{path}: cannot read the file: {e}"))?,
            None => t.to_owned(),
        };
        let choices = self
            .choices
            .iter()
            .map(|c| match c.split_once('=') {
                Some((l, t)) => Ok(Choice {
                    label: l.to_owned(),
                    continuation: t.to_owned(),
                }),
                None => Err(format!("--choice {c:?}: write LABEL=CONTINUATION")),
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(Some(PromptSpec {
            template,
            choices,
            chat: self.chat,
            system: self.system.map(str::to_owned),
            answer_prefix: self.answer_prefix.to_owned(),
            length_normalize: self.length_normalize,
        }))
    }
}

impl PromptSpec {
    /// Checks what can be checked without a tokenizer; the message names the flag.
    pub fn validate(&self) -> Result<(), SpecError> {
        let placeholders = self.template.matches("{text}").count();
        if placeholders != 1 {
            return Err(SpecError::Placeholder(placeholders));
        }
        if self.choices.len() < 2 {
            return Err(SpecError::TooFewChoices);
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.choices {
            if c.label.trim().is_empty() || c.continuation.is_empty() {
                return Err(SpecError::EmptyChoice {
                    label: c.label.clone(),
                    continuation: c.continuation.clone(),
                });
            }
            if !seen.insert(&c.label) {
                return Err(SpecError::DuplicateChoice(c.label.clone()));
            }
        }
        Ok(())
    }

    pub fn labels(&self) -> Vec<String> {
        self.choices.iter().map(|c| c.label.clone()).collect()
    }
}

/// What is stored per example (or per token). Its fingerprint is part of every shard's address.
///
/// Serialised as a JSON object tagged by `kind`; the kinds of the first release serialise exactly as
/// they did then (`{"kind":"embeddings","dtype":"f32"}`), so their fingerprints never change. A kind
/// this release does not know (written by a newer one) is kept as [`OutputSpec::Unknown`]: listed,
/// never read or written.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputSpec {
    Embeddings {
        dtype: Dtype,
    },
    /// Class logits: a classifier teacher's, a task head's, or a prompted decoder's (`prompt`).
    Logits {
        dtype: Dtype,
        prompt: Option<Box<PromptSpec>>,
    },
    TokenTopk(TopkSpec),
    Unknown {
        kind: String,
        json: serde_json::Value,
    },
}

/// The serialised form of the known kinds (tag first, then the fields in declaration order).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum KnownSpec {
    Embeddings {
        dtype: Dtype,
    },
    Logits {
        dtype: Dtype,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<Box<PromptSpec>>,
    },
    TokenTopk(TopkSpec),
}

impl Serialize for OutputSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Embeddings { dtype } => KnownSpec::Embeddings { dtype: *dtype }.serialize(s),
            Self::Logits { dtype, prompt } => KnownSpec::Logits {
                dtype: *dtype,
                prompt: prompt.clone(),
            }
            .serialize(s),
            Self::TokenTopk(t) => KnownSpec::TokenTopk(*t).serialize(s),
            Self::Unknown { json, .. } => json.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for OutputSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = serde_json::Value::deserialize(d)?;
        let kind = json
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| serde::de::Error::custom("output spec without a \"kind\""))?
            .to_owned();
        if !matches!(kind.as_str(), "embeddings" | "logits" | "token_topk") {
            return Ok(Self::Unknown { kind, json });
        }
        Ok(
            match serde_json::from_value::<KnownSpec>(json).map_err(serde::de::Error::custom)? {
                KnownSpec::Embeddings { dtype } => Self::Embeddings { dtype },
                KnownSpec::Logits { dtype, prompt } => Self::Logits { dtype, prompt },
                KnownSpec::TokenTopk(t) => Self::TokenTopk(t),
            },
        )
    }
}

impl OutputSpec {
    pub fn fingerprint(&self) -> Fingerprint {
        Hasher::new("distill.output.v1")
            .str(&serde_json::to_string(self).expect("serialisable"))
            .clone()
            .finish()
    }

    /// The kind, or `None` for a kind this release does not know.
    pub fn kind(&self) -> Option<OutputKind> {
        match self {
            Self::Embeddings { .. } => Some(OutputKind::Embeddings),
            Self::Logits { .. } => Some(OutputKind::Logits),
            Self::TokenTopk(_) => Some(OutputKind::TokenTopk),
            Self::Unknown { .. } => None,
        }
    }

    /// The kind's name as stored (`embeddings`, `logits`, `token_topk`, or an unknown kind's own).
    pub fn kind_name(&self) -> &str {
        match self {
            Self::Embeddings { .. } => "embeddings",
            Self::Logits { .. } => "logits",
            Self::TokenTopk(_) => "token_topk",
            Self::Unknown { kind, .. } => kind,
        }
    }

    /// The storage dtype of the main values (`None` for an unknown kind).
    pub fn dtype(&self) -> Option<Dtype> {
        match self {
            Self::Embeddings { dtype } | Self::Logits { dtype, .. } => Some(*dtype),
            Self::TokenTopk(t) => Some(t.dtype),
            Self::Unknown { .. } => None,
        }
    }

    /// A short description for tables: `embeddings/f32`, `token_topk/f16/k20`, `future_kind?`.
    pub fn describe(&self) -> String {
        match self {
            Self::Logits {
                dtype,
                prompt: Some(p),
            } => format!("logits/{dtype}/prompted/{}", p.labels().join("|")),
            Self::Embeddings { dtype } | Self::Logits { dtype, .. } => {
                format!("{}/{dtype}", self.kind_name())
            }
            Self::TokenTopk(t) if t.samples > 0 => {
                format!("token_topk/{}/k{}/s{}", t.dtype, t.top_k, t.samples)
            }
            Self::TokenTopk(t) => format!("token_topk/{}/k{}", t.dtype, t.top_k),
            Self::Unknown { kind, .. } => format!("{kind} (unknown kind)"),
        }
    }

    /// Whether the output holds one vector per example (embeddings, logits).
    pub fn is_per_example(&self) -> bool {
        matches!(self, Self::Embeddings { .. } | Self::Logits { .. })
    }
}

/// Default of `--top-k`.
pub const DEFAULT_TOP_K: u32 = 20;
