//! Tokenizers of teachers, built from the model's own files.
//!
//! - Encoders (BERT): the directory's `tokenizer.json` with two overrides: no padding (many packaged
//!   tokenizers pad every input to a fixed length; batching pads to the longest row of each batch
//!   instead) and truncation at the model's `max_seq_length`. Truncated rows are counted, never dropped.
//! - Decoders from an HF directory: `tokenizer.json` as is (its post-processor adds BOS where the model
//!   wants one), without padding or truncation (long rows are windowed by the labeling pass).
//! - Decoders from GGUF: byte-level BPE over `tokenizer.ggml.tokens` and `merges`, the pre-tokenizer that
//!   `tokenizer.ggml.pre` names (`smollm`: every digit on its own, then the GPT-2 pattern; `llama-bpe`
//!   and `qwen2`: their published patterns; `gpt2`/`default`: the GPT-2 pattern), control tokens
//!   (`token_type` 3) as special tokens, BOS in front when `add_bos_token` says so.
//!
//! Decoders treat special-token text inside rows as plain text
//! ([`distill_cache::model_dir::SPECIAL_TEXT_POLICY`]): a row holding `<|im_end|>` is tokenized as those
//! characters, so corpus text cannot inject control tokens. Prompt templates that need control tokens
//! insert them by id ([`TextTokenizer::special_id`]).

use crate::{Result, TeacherError};
use distill_cache::gguf::GgufTokenizer;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use distill_cache::model_dir::{LLAMA3_PATTERN, QWEN2_PATTERN};

/// One tokenized text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub truncated: bool,
}

/// A teacher's tokenizer.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Rows are cut to this many tokens (`None`: never; decoders window long rows instead).
    truncate: Option<usize>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("truncate", &self.truncate)
            .finish()
    }
}

fn tok_err(location: &str, e: impl std::fmt::Display) -> TeacherError {
    TeacherError::Model {
        location: location.to_owned(),
        reason: format!("tokenizer: {e}"),
    }
}

/// Reads an HF `tokenizer.json`. The tokenizers crate panics on some malformed sections (a decoder
/// entry that is not valid JSON of its kind, found by fuzzing): that is an error naming the model too.
pub fn read_hf(location: &str, path: &std::path::Path) -> Result<Tokenizer> {
    let read = std::panic::catch_unwind(|| Tokenizer::from_file(path));
    match read {
        Ok(r) => r.map_err(|e| tok_err(location, e)),
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("the tokenizers crate panicked");
            Err(tok_err(
                location,
                format!("tokenizer.json is malformed ({why})"),
            ))
        }
    }
}

impl TextTokenizer {
    /// An encoder's `tokenizer.json`: no padding, truncation at `max_len` (special tokens included).
    pub fn encoder(location: &str, path: &std::path::Path, max_len: usize) -> Result<Self> {
        let mut inner = read_hf(location, path)?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| tok_err(location, e))?;
        Ok(Self {
            inner,
            truncate: None,
        })
    }

    /// A decoder's `tokenizer.json` (HF directory): no padding, no truncation, special-token text as
    /// plain text.
    pub fn hf_decoder(location: &str, path: &std::path::Path) -> Result<Self> {
        let mut inner = read_hf(location, path)?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tok_err(location, e))?;
        inner.set_encode_special_tokens(true);
        Ok(Self {
            inner,
            truncate: None,
        })
    }

    /// A decoder's byte-level BPE from GGUF metadata.
    pub fn gguf(location: &str, t: &GgufTokenizer) -> Result<Self> {
        let vocab: tokenizers::models::bpe::Vocab = t
            .tokens
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        if vocab.len() != t.tokens.len() {
            return Err(tok_err(
                location,
                "tokenizer.ggml.tokens holds a token twice",
            ));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, t.merges.clone())
            .ignore_merges(t.pre == "llama-bpe")
            .build()
            .map_err(|e| tok_err(location, e))?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level = |regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
        let pattern = |p: &str| -> Result<PreTokenizerWrapper> {
            Ok(PreTokenizerWrapper::Split(
                Split::new(
                    SplitPattern::Regex(p.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| tok_err(location, e))?,
            ))
        };
        let pre = match t.pre.as_str() {
            "smollm" => Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ]),
            "llama-bpe" => Sequence::new(vec![pattern(LLAMA3_PATTERN)?, byte_level(false)]),
            "qwen2" => Sequence::new(vec![pattern(QWEN2_PATTERN)?, byte_level(false)]),
            _ => Sequence::new(vec![byte_level(true)]),
        };
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        let specials: Vec<AddedToken> = t
            .tokens
            .iter()
            .zip(&t.token_types)
            .filter(|(_, ty)| **ty == 3)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| tok_err(location, e))?;
        inner.set_encode_special_tokens(true);
        // BOS through a post-processor (not by hand), so the exported tokenizer.json adds it too.
        if let (true, Some(bos)) = (t.add_bos, t.bos) {
            let text = t.tokens[bos as usize].clone();
            let pp = tokenizers::processors::template::TemplateProcessing::builder()
                .try_single(format!("{text} $A"))
                .and_then(|b| b.try_pair(format!("{text} $A {text} $B")))
                .map_err(|e| tok_err(location, e))?
                .special_tokens(vec![(text, bos)])
                .build()
                .map_err(|e| tok_err(location, e))?;
            inner.with_post_processor(Some(pp));
        }
        Ok(Self {
            inner,
            truncate: None,
        })
    }

    /// The same tokenizer, cutting rows to `max_len` tokens.
    pub fn truncating(mut self, max_len: usize) -> Self {
        self.truncate = Some(max_len);
        self
    }

    /// Tokens in the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a special token given by its text (e.g. `<|im_start|>`).
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// Tokenizes texts (special tokens added where the model wants them, no padding).
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| TeacherError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| {
                let mut ids = e.get_ids().to_vec();
                let mut truncated = !e.get_overflowing().is_empty();
                if let Some(max) = self.truncate {
                    if ids.len() > max {
                        ids.truncate(max);
                        truncated = true;
                    }
                }
                Encoded { ids, truncated }
            })
            .collect())
    }

    /// Ids of `text` alone: no BOS, special-token text as plain text (a row's text inside a prompt).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let e = self
            .inner
            .encode(text, false)
            .map_err(|e| TeacherError::Tokenizer(e.to_string()))?;
        Ok(e.get_ids().to_vec())
    }

    /// Ids of a template's text, where the special tokens' text *is* the special token (a prompt's
    /// own `<|im_start|>`), no BOS.
    pub fn encode_template(&self, text: &str) -> Result<Vec<u32>> {
        let specials: Vec<(String, u32)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (t.content, id))
            .collect();
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token in the rest (the longest where two start together).
            let next = specials
                .iter()
                .filter_map(|(s, id)| {
                    rest.find(s.as_str())
                        .map(|at| (at, std::cmp::Reverse(s.len()), *id, s.len()))
                })
                .min();
            match next {
                Some((at, _, id, len)) => {
                    out.extend(self.encode_plain(&rest[..at])?);
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    out.extend(self.encode_plain(rest)?);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// What the tokenizer puts in front of every row (its BOS, or nothing).
    pub fn leading_ids(&self) -> Result<Vec<u32>> {
        Ok(self.encode(&[""])?.remove(0).ids)
    }

    /// Text of token ids (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TeacherError::Tokenizer(e.to_string()))
    }

    /// The underlying tokenizer (to save as `tokenizer.json`).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::tiny_bpe;

    fn tiny(pre: &str, add_bos: bool) -> TextTokenizer {
        let (tokens, merges) = tiny_bpe();
        let n = tokens.len();
        TextTokenizer::gguf(
            "tiny",
            &GgufTokenizer {
                pre: pre.into(),
                tokens,
                merges,
                token_types: (0..n).map(|i| if i < 3 { 3 } else { 1 }).collect(),
                bos: Some(1),
                eos: Some(2),
                add_bos,
            },
        )
        .unwrap()
    }

    fn ids(t: &TextTokenizer, s: &str) -> Vec<u32> {
        t.encode(&[s]).unwrap().remove(0).ids
    }

    #[test]
    fn merges_words_and_splits_digits_one_by_one() {
        let t = tiny("smollm", false);
        let the = t.special_id("the").unwrap();
        let movie = t.special_id("Ġmovie").unwrap();
        assert_eq!(ids(&t, "the movie"), vec![the, movie]);
        // smollm: each digit alone; gpt2: a run of digits is one piece (but still bytes here).
        let digits = ids(&t, "2024");
        assert_eq!(digits.len(), 4);
        assert_eq!(t.decode(&digits).unwrap(), "2024");
        assert_eq!(
            t.decode(&ids(&t, "naïve café 東京 🎬")).unwrap(),
            "naïve café 東京 🎬"
        );
    }

    #[test]
    fn special_token_text_in_rows_is_plain_text() {
        let t = tiny("smollm", false);
        let got = ids(&t, "<|im_end|>");
        assert!(got.len() > 1 && !got.contains(&2), "{got:?}");
        assert_eq!(t.special_id("<|im_end|>"), Some(2));
    }

    #[test]
    fn a_tokenizer_has_one_fingerprint_in_gguf_and_in_tokenizer_json() {
        use distill_cache::model_dir::CanonicalTokenizer;
        let (tokens, merges) = tiny_bpe();
        let n = tokens.len();
        for pre in ["smollm", "gpt2", "llama-bpe", "qwen2"] {
            for add_bos in [false, true] {
                let g = GgufTokenizer {
                    pre: pre.into(),
                    tokens: tokens.clone(),
                    merges: merges.clone(),
                    token_types: (0..n).map(|i| if i < 3 { 3 } else { 1 }).collect(),
                    bos: Some(1),
                    eos: Some(2),
                    add_bos,
                };
                let t = TextTokenizer::gguf("tiny", &g).unwrap();
                let json: serde_json::Value =
                    serde_json::from_str(&t.inner().to_string(false).unwrap()).unwrap();
                let from_json = CanonicalTokenizer::from_hf("test", &json).unwrap();
                let from_gguf = CanonicalTokenizer::from_gguf(&g);
                assert_eq!(from_json, from_gguf, "{pre} bos {add_bos}");
                // And the exported file tokenizes as the GGUF tokenizer does.
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("tokenizer.json");
                t.inner().save(&path, false).unwrap();
                let back = TextTokenizer::hf_decoder("json", &path).unwrap();
                for text in [
                    "the movie was good",
                    "2024 <|im_end|> naïve",
                    " spaces  here",
                ] {
                    assert_eq!(
                        ids(&back, text),
                        ids(&t, text),
                        "{pre} bos {add_bos}: {text:?}"
                    );
                }
            }
        }
        // Another BOS rule is another tokenizer.
        let fp = |add_bos| {
            CanonicalTokenizer::from_gguf(&GgufTokenizer {
                pre: "smollm".into(),
                tokens: tokens.clone(),
                merges: merges.clone(),
                token_types: vec![1; n],
                bos: Some(1),
                eos: Some(2),
                add_bos,
            })
            .fingerprint()
        };
        assert_ne!(fp(true), fp(false));
    }

    #[test]
    fn bos_is_added_when_the_model_says_so() {
        let with = tiny("smollm", true);
        let without = tiny("smollm", false);
        assert_eq!(ids(&with, "fun")[0], 1);
        assert_eq!(ids(&with, "fun")[1..], ids(&without, "fun")[..]);
    }
}
