//! Tokenizers built from a `tokenizer.json` file or from a GGUF file's metadata.
//!
//! ```no_run
//! use emlab_model::tokenizer::Tokenizer;
//! let tok = Tokenizer::from_gguf("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false)?;
//! assert_eq!(ids[0], tok.token_id("<|im_start|>").unwrap());
//! assert_eq!(tok.decode(&ids, false)?, "<|im_start|>user\nhi<|im_end|>");
//! // Streaming: text comes out only once a whole UTF-8 character is available.
//! let mut stream = tok.stream(true);
//! let mut out = String::new();
//! for id in tok.encode("naïve 🙂", false)? {
//!     if let Some(piece) = stream.step(id)? { out.push_str(&piece); }
//! }
//! out.push_str(&stream.finish()?);
//! assert_eq!(out, "naïve 🙂");
//! # Ok::<(), emlab_model::Error>(())
//! ```
//!
//! # GGUF tokenizers
//! A GGUF file with `tokenizer.ggml.model = "gpt2"` stores a byte-level BPE: the vocabulary in
//! `tokenizer.ggml.tokens` (already in GPT-2's byte-to-unicode alphabet), the merge list in
//! `tokenizer.ggml.merges` ("left right" strings), the token kinds in `tokenizer.ggml.token_type`
//! and the name of the pre-tokenizer in `tokenizer.ggml.pre`. The pre-tokenizer is not stored,
//! only named, so it is rebuilt here from the name, matching the `tokenizer.json` the model was
//! converted from:
//!
//! | `tokenizer.ggml.pre` | normalizer | pre-tokenizer |
//! |---|---|---|
//! | `smollm` (also `starcoder`, `refact`) | none | digits split one by one, then the GPT-2 regex, byte-level, no prefix space |
//! | `qwen2` | NFC | Qwen2's regex (isolated splits), then byte-level without its own regex |
//! | `gpt2`, `default` or absent | none | the GPT-2 regex, byte-level, no prefix space |
//!
//! Any other name is an error rather than a silent guess: a wrong pre-tokenizer produces
//! plausible but different ids (candle's builder adds a prefix space for `smollm`, turning
//! "hi" into "Ġhi"), which a model then reads as different text.
//!
//! Token kinds: control tokens (type 3, e.g. `<|im_start|>`) are added as *special* tokens,
//! user-defined tokens (type 4, e.g. Qwen's `<tool_call>`) as ordinary added tokens. Both are
//! matched whole in the input, so `<|im_start|>` is one id; only special tokens are dropped by
//! `decode(.., skip_special = true)`, which is what Hugging Face's tokenizers do for these models.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};

/// Qwen2's pre-tokenizer regex (from its `tokenizer.json`; llama.cpp uses the same for "qwen2").
/// Unlike GPT-2's, it keeps single digits apart and glues one leading non-letter to a word.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token kinds (`tokenizer.ggml.token_type`), as llama.cpp defines them.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Names of the end-of-turn token in the chat formats emlab supports, tried in this order.
const CHAT_END_CANDIDATES: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// A token's byte range `(start, end)` in the encoded text.
pub type Offset = (usize, usize);

/// Which pre-tokenizer a GGUF's `tokenizer.ggml.pre` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2's regex and byte-level mapping, no prefix space.
    Gpt2,
    /// Individual digits, then GPT-2 (SmolLM, StarCoder).
    SmolLm,
    /// Qwen2's regex with NFC normalization.
    Qwen2,
}

impl PreTokenizerKind {
    /// Maps a `tokenizer.ggml.pre` value (absent = `None`) to a kind, or `None` if unknown.
    pub fn from_gguf_name(name: Option<&str>) -> Option<Self> {
        match name {
            None | Some("default") | Some("gpt2") | Some("gpt-2") => Some(Self::Gpt2),
            Some("smollm") | Some("starcoder") | Some("refact") => Some(Self::SmolLm),
            Some("qwen2") => Some(Self::Qwen2),
            Some(_) => None,
        }
    }
}

/// A text tokenizer plus the special ids generation and chat formatting need.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it came from, for error messages.
    source: PathBuf,
    bos: Option<u32>,
    eos: u32,
    pad: Option<u32>,
    chat_end: Option<u32>,
    eos_ids: Vec<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("chat_end", &self.chat_end)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// Special-token settings read from metadata, before they are resolved to ids.
#[derive(Default)]
struct SpecialSpec {
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    /// Extra end-of-generation ids (GGUF `eot`/`eom`, generation_config.json's `eos_token_id` list).
    extra_eos: Vec<u32>,
    /// GGUF `tokenizer.ggml.add_bos_token`: install a post-processor that prepends BOS.
    add_bos: bool,
}

impl Tokenizer {
    /// Loads a GGUF file's header and builds its tokenizer.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (content, _) = crate::load::read_gguf(path)?;
        Self::from_gguf_metadata(&content.metadata, path)
    }

    /// Builds the tokenizer from already-read GGUF metadata; `source` names the file in errors.
    pub fn from_gguf_metadata(md: &HashMap<String, gguf_file::Value>, source: &Path) -> Result<Self> {
        let err = |msg: String| Error::Tokenizer(format!("{}: {msg}", source.display()));
        let model = md_str(md, "tokenizer.ggml.model")
            .ok_or_else(|| err("no tokenizer metadata (`tokenizer.ggml.model` missing); give a tokenizer.json".into()))?;
        if model != "gpt2" {
            return Err(err(format!("tokenizer.ggml.model = {model:?} is not supported (only byte-level BPE, \"gpt2\")")));
        }
        let pre_name = md_str(md, "tokenizer.ggml.pre");
        let pre = PreTokenizerKind::from_gguf_name(pre_name).ok_or_else(|| {
            err(format!("unknown tokenizer.ggml.pre {:?} (supported: smollm, qwen2, gpt2/default)", pre_name.unwrap_or("")))
        })?;
        let tokens = md_str_array(md, "tokenizer.ggml.tokens").map_err(&err)?;
        let merges = md_str_array(md, "tokenizer.ggml.merges").map_err(&err)?;
        let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(v) => {
                let arr = v.to_vec().map_err(|_| err("tokenizer.ggml.token_type is not an array".into()))?;
                arr.iter()
                    .map(value_as_i64)
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| err("tokenizer.ggml.token_type holds non-integers".into()))?
            }
        };
        if types.len() != tokens.len() {
            return Err(err(format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                types.len(),
                tokens.len()
            )));
        }

        let mut vocab = Vocab::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            // Duplicates would silently remap ids; refuse them.
            if vocab.insert(t.to_string(), i as u32).is_some() {
                return Err(err(format!("token {t:?} appears twice in tokenizer.ggml.tokens")));
            }
        }
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // Byte-level tokens never hold a real space (it is mapped to 'Ġ'), so the first space
            // separates the pair.
            let (a, b) = m.split_once(' ').ok_or_else(|| err(format!("tokenizer.ggml.merges[{i}] = {m:?} is not \"left right\"")))?;
            merge_pairs.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder().vocab_and_merges(vocab, merge_pairs).build().map_err(|e| err(format!("cannot build BPE: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        match pre {
            PreTokenizerKind::Gpt2 => {
                inner.with_pre_tokenizer(Some(byte_level(true, true)));
            }
            PreTokenizerKind::SmolLm => {
                let seq: Vec<PreTokenizerWrapper> = vec![Digits::new(true).into(), byte_level(true, true).into()];
                inner.with_pre_tokenizer(Some(Sequence::new(seq)));
            }
            PreTokenizerKind::Qwen2 => {
                inner.with_normalizer(Some(NFC)).map_err(|e| err(format!("cannot set NFC normalizer: {e}")))?;
                let split = Split::new(SplitPattern::Regex(QWEN2_REGEX.to_string()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| err(format!("bad qwen2 regex: {e}")))?;
                let seq: Vec<PreTokenizerWrapper> = vec![split.into(), byte_level(false, false).into()];
                inner.with_pre_tokenizer(Some(Sequence::new(seq)));
            }
        }
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let mut added = Vec::new();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            let special = match *ty {
                TOKEN_TYPE_CONTROL => true,
                TOKEN_TYPE_USER_DEFINED => false,
                _ => continue,
            };
            // Added tokens match the raw input (not normalized) and keep surrounding spaces, as in
            // the tokenizer.json files these GGUFs were converted from.
            let tok = AddedToken::from(t.to_string(), special).normalized(false);
            added.push((i, tok));
        }
        // add_tokens assigns the existing vocab id when the content is already in the vocab,
        // which it always is here.
        let specials: Vec<AddedToken> = added.iter().filter(|(_, t)| t.special).map(|(_, t)| t.clone()).collect();
        let plain: Vec<AddedToken> = added.iter().filter(|(_, t)| !t.special).map(|(_, t)| t.clone()).collect();
        inner.add_special_tokens(specials).map_err(|e| err(format!("cannot add special tokens: {e}")))?;
        inner.add_tokens(plain).map_err(|e| err(format!("cannot add user-defined tokens: {e}")))?;
        for (i, t) in &added {
            if inner.token_to_id(&t.content) != Some(*i as u32) {
                return Err(err(format!("added token {:?} did not keep id {i}", t.content)));
            }
        }

        let spec = SpecialSpec {
            bos: md_u32(md, "tokenizer.ggml.bos_token_id"),
            eos: md_u32(md, "tokenizer.ggml.eos_token_id"),
            pad: md_u32(md, "tokenizer.ggml.padding_token_id"),
            extra_eos: ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"].iter().filter_map(|k| md_u32(md, k)).collect(),
            add_bos: md.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false),
        };
        Self::finish(inner, source.to_path_buf(), spec)
    }

    /// Loads a `tokenizer.json`. Special ids come from `tokenizer_config.json` and
    /// `generation_config.json` next to it when present, otherwise from well-known token names.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: not a valid tokenizer.json: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let spec = hf_special_spec(&inner, dir)?;
        Self::finish(inner, path.to_path_buf(), spec)
    }

    /// Loads `tokenizer.json` from a Hugging Face model folder.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    fn finish(mut inner: tokenizers::Tokenizer, source: PathBuf, spec: SpecialSpec) -> Result<Self> {
        let n = inner.get_vocab_size(true) as u32;
        let err = |msg: String| Error::Tokenizer(format!("{}: {msg}", source.display()));
        let check = |what: &str, id: Option<u32>| -> Result<Option<u32>> {
            match id {
                Some(i) if i >= n => Err(err(format!("{what} id {i} is outside the vocabulary ({n} tokens)"))),
                x => Ok(x),
            }
        };
        let bos = check("bos", spec.bos)?;
        let pad = check("pad", spec.pad)?;
        let chat_end = CHAT_END_CANDIDATES.iter().find_map(|t| inner.token_to_id(t));
        let eos = match check("eos", spec.eos)? {
            Some(e) => e,
            // A chat model without a declared eos still stops at its end-of-turn token.
            None => chat_end.ok_or_else(|| err("no eos token declared and none recognised".into()))?,
        };
        let mut eos_ids = BTreeSet::new();
        eos_ids.insert(eos);
        if let Some(c) = chat_end {
            eos_ids.insert(c);
        }
        for e in spec.extra_eos {
            eos_ids.insert(check("end-of-generation", Some(e))?.unwrap());
        }
        // Both emlab models also end documents with <|endoftext|>; a chat model that emits it has
        // finished too (Qwen2.5's generation config lists it as a second eos).
        if let Some(e) = inner.token_to_id("<|endoftext|>") {
            if inner.get_added_tokens_decoder().get(&e).is_some_and(|t| t.special) {
                eos_ids.insert(e);
            }
        }
        if spec.add_bos {
            let bos_id = bos.ok_or_else(|| err("add_bos_token is set but there is no bos token".into()))?;
            let bos_tok = inner.id_to_token(bos_id).unwrap_or_default();
            let post = TemplateProcessing::builder()
                .try_single(format!("{bos_tok}:0 $A:0"))
                .and_then(|b| b.try_pair(format!("{bos_tok}:0 $A:0 $B:1")))
                .map_err(|e| err(format!("cannot build bos template: {e}")))?
                .special_tokens(vec![(bos_tok.clone(), bos_id)])
                .build()
                .map_err(|e| err(format!("cannot build bos template: {e}")))?;
            inner.with_post_processor(Some(post));
        }
        // What `encode(.., true)` really adds, whichever post-processor is in place.
        let probe = |add: bool| inner.encode("a", add).map(|e| e.get_ids().to_vec());
        let add_bos = match (probe(true), probe(false), bos) {
            (Ok(with), Ok(without), Some(b)) => with.len() > without.len() && with.first() == Some(&b),
            _ => false,
        };
        Ok(Tokenizer { inner, source, bos, eos, pad, chat_end, eos_ids: eos_ids.into_iter().collect(), add_bos })
    }

    /// Token ids of `text`. `add_special` adds what the model's tokenizer adds around a text (a
    /// BOS for models whose metadata asks for it; nothing for SmolLM2 and Qwen2.5). Special tokens
    /// written in the text (`<|im_start|>`) are always recognised: a rendered chat template
    /// already holds them, so do not add BOS to one yourself.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self.encode_inner(text, add_special)?.get_ids().to_vec())
    }

    /// Token ids with the byte range of `text` each token covers (special tokens added by
    /// `add_special` get an empty range). Used to map character spans (e.g. assistant turns) to
    /// token positions.
    pub fn encode_with_offsets(&self, text: &str, add_special: bool) -> Result<(Vec<u32>, Vec<Offset>)> {
        let enc = self.encode_inner(text, add_special)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    fn encode_inner(&self, text: &str, add_special: bool) -> Result<tokenizers::Encoding> {
        self.inner.encode(text, add_special).map_err(|e| Error::Tokenizer(format!("{}: cannot encode: {e}", self.source.display())))
    }

    /// The text of `ids`; `skip_special` drops control tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.check_ids(ids)?;
        self.inner.decode(ids, skip_special).map_err(|e| Error::Tokenizer(format!("{}: cannot decode: {e}", self.source.display())))
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let n = self.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= n) {
            return Err(Error::Tokenizer(format!("{}: token id {bad} is outside the vocabulary ({n} tokens)", self.source.display())));
        }
        Ok(())
    }

    /// A streaming decoder: feed ids one at a time, get text as soon as it is complete UTF-8.
    pub fn stream(&self, skip_special: bool) -> TokenStream<'_> {
        TokenStream { tok: self, skip_special, ids: Vec::new(), prefix_offset: 0, read_offset: 0 }
    }

    /// The vocabulary string of one id (byte-level form, e.g. "Ġhello"), if it exists.
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary string (e.g. "<|im_start|>").
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids, added tokens included; must equal the model's embedding rows.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Padding id: the declared pad token, else eos (never attended to, so any valid id works).
    pub fn pad_id(&self) -> u32 {
        self.pad.unwrap_or(self.eos)
    }

    /// The token that closes a chat turn (`<|im_end|>` for ChatML), if the vocabulary has one.
    pub fn chat_end_id(&self) -> Option<u32> {
        self.chat_end
    }

    /// Every id that ends generation (eos, the chat end token, declared end-of-turn tokens,
    /// `<|endoftext|>` when it is a special token), sorted.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `encode(.., true)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    /// The file this tokenizer was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes a `tokenizer.json` equivalent to this tokenizer (atomically: temp file + rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let tmp = path.with_extension("json.tmp");
        self.inner.save(&tmp, false).map_err(|e| Error::io(&tmp, format!("cannot write tokenizer: {e}")))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

/// Incremental decoder for streaming generation (see [`Tokenizer::stream`]).
///
/// Decodes a small window of recent ids and emits only the new suffix, holding text back while
/// it ends in an incomplete UTF-8 sequence (shown by the byte-level decoder as U+FFFD). The window
/// keeps the work per step constant instead of re-decoding the whole sequence.
pub struct TokenStream<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the window that is re-decoded for context.
    prefix_offset: usize,
    /// End of the ids whose text was already emitted.
    read_offset: usize,
}

impl TokenStream<'_> {
    /// Adds one id; returns the newly completed text, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.tok.check_ids(&[id])?;
        self.ids.push(id);
        let prefix = self.tok.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special)?;
        let text = self.tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') && text.is_char_boundary(prefix.len()) {
            let new = text[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }

    /// Flushes whatever is held back (invalid UTF-8 comes out as U+FFFD) at the end of a stream.
    pub fn finish(&mut self) -> Result<String> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let prefix = self.tok.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special)?;
        let text = self.tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(text.get(prefix.len()..).unwrap_or("").to_string())
    }

    /// All ids fed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

fn byte_level(use_regex: bool, trim_offsets: bool) -> ByteLevel {
    ByteLevel::new(false, trim_offsets, use_regex)
}

fn value_as_i64(v: &gguf_file::Value) -> Option<i64> {
    use gguf_file::Value as V;
    Some(match v {
        V::U8(x) => *x as i64,
        V::I8(x) => *x as i64,
        V::U16(x) => *x as i64,
        V::I16(x) => *x as i64,
        V::U32(x) => *x as i64,
        V::I32(x) => *x as i64,
        V::U64(x) => i64::try_from(*x).ok()?,
        V::I64(x) => *x,
        _ => return None,
    })
}

fn md_u32(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<u32> {
    md.get(key).and_then(value_as_i64).and_then(|x| u32::try_from(x).ok())
}

fn md_str<'a>(md: &'a HashMap<String, gguf_file::Value>, key: &str) -> Option<&'a str> {
    md.get(key).and_then(|v| v.to_string().ok()).map(|s| s.as_str())
}

fn md_str_array<'a>(md: &'a HashMap<String, gguf_file::Value>, key: &str) -> std::result::Result<Vec<&'a str>, String> {
    let v = md.get(key).ok_or_else(|| format!("`{key}` missing"))?;
    let arr = v.to_vec().map_err(|_| format!("`{key}` is not an array"))?;
    arr.iter().enumerate().map(|(i, x)| x.to_string().map(|s| s.as_str()).map_err(|_| format!("`{key}`[{i}] is not a string"))).collect()
}

/// Reads a JSON file if it exists; a file that exists but does not parse is an error.
fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Tokenizer(format!("{}: invalid JSON: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Tokenizer(format!("{}: {e}", path.display()))),
    }
}

/// A `bos_token`-style entry of tokenizer_config.json: a string or an AddedToken object.
pub(crate) fn token_content(v: &serde_json::Value) -> Option<&str> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()),
        _ => None,
    }
}

fn json_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|x| u32::try_from(x).ok()).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).filter_map(|x| u32::try_from(x).ok()).collect(),
        _ => Vec::new(),
    }
}

/// Special ids for a Hugging Face folder: tokenizer_config.json names the tokens,
/// generation_config.json / config.json may list more end ids.
fn hf_special_spec(inner: &tokenizers::Tokenizer, dir: &Path) -> Result<SpecialSpec> {
    let mut spec = SpecialSpec::default();
    let cfg_path = dir.join("tokenizer_config.json");
    let by_name = |cfg: &serde_json::Value, key: &str| -> Result<Option<u32>> {
        match cfg.get(key).and_then(token_content) {
            None => Ok(None),
            Some(name) => inner
                .token_to_id(name)
                .map(Some)
                .ok_or_else(|| Error::Tokenizer(format!("{}: {key} {name:?} is not in the vocabulary", cfg_path.display()))),
        }
    };
    if let Some(cfg) = read_json_opt(&cfg_path)? {
        spec.bos = by_name(&cfg, "bos_token")?;
        spec.eos = by_name(&cfg, "eos_token")?;
        spec.pad = by_name(&cfg, "pad_token")?;
    }
    for name in ["generation_config.json", "config.json"] {
        if let Some(c) = read_json_opt(&dir.join(name))? {
            let eos = json_ids(c.get("eos_token_id"));
            if spec.eos.is_none() {
                spec.eos = eos.first().copied();
            }
            spec.extra_eos.extend(eos);
            if spec.bos.is_none() {
                spec.bos = json_ids(c.get("bos_token_id")).first().copied();
            }
            if spec.pad.is_none() {
                spec.pad = json_ids(c.get("pad_token_id")).first().copied();
            }
        }
    }
    if spec.eos.is_none() {
        spec.eos = ["<|endoftext|>", "</s>", "<|end_of_text|>"].iter().find_map(|t| inner.token_to_id(t));
    }
    // tokenizer.json carries its own post-processor (which adds BOS where the model wants it);
    // never install a second one. `Tokenizer::finish` probes what it does instead.
    spec.add_bos = false;
    Ok(spec)
}
