//! Text features of the offline judge: hashed word / bigram / character n-grams plus a few
//! dense statistics that track coherence (repetition, code-likeness, length, on-topic overlap).
//!
//! ```
//! use emlab_eval::judge::features::{extract, N_DENSE};
//! let f = extract("How are you?", "I am fine, thank you.", 16);
//! assert!(!f.sparse.is_empty());
//! assert!(f.sparse.iter().all(|&(i, _)| i < (1 << 16)));
//! assert_eq!(f.dense.len(), N_DENSE);
//! ```
//!
//! Every namespace (answer words, answer word bigrams, answer character 4-grams, question words)
//! is hashed into one table of `2^log2_dim` rows with its own salt; counts are damped with
//! `ln(1 + count)` and each namespace is scaled to unit L2 norm, so a long answer does not
//! outweigh a short one. Texts are cut to [`MAX_CHARS`] characters first: model outputs are
//! hostile input and a megabyte answer must not stall the judge.

/// Characters of question / answer that are looked at.
pub const MAX_CHARS: usize = 8000;

/// Number of dense features; see [`DENSE_NAMES`].
pub const N_DENSE: usize = 16;

/// What each dense feature measures, in order.
pub const DENSE_NAMES: [&str; N_DENSE] = [
    "ln_chars",
    "ln_words",
    "type_token_ratio",
    "frac_alpha",
    "frac_digit",
    "frac_symbol",
    "frac_upper_of_alpha",
    "frac_non_ascii",
    "newlines_per_100_chars",
    "frac_code_lines",
    "repeated_trigram_frac",
    "longest_same_token_run_frac",
    "question_word_overlap",
    "ends_with_terminal_punct",
    "mean_word_len",
    "frac_words_len_gt_15",
];

/// Features of one (question, answer) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// (row, value) pairs, rows < 2^log2_dim, each row at most once.
    pub sparse: Vec<(u32, f32)>,
    pub dense: [f32; N_DENSE],
}

const SALT_WORD: u64 = 0x11;
const SALT_BIGRAM: u64 = 0x22;
const SALT_CHAR4: u64 = 0x33;
const SALT_QWORD: u64 = 0x44;

fn fnv1a(salt: u64, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    // final avalanche so that the low bits used as the row index are well mixed
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(MAX_CHARS) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Lower-cased tokens: runs of alphanumerics, and every other non-space character alone.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || c == '\'' && !cur.is_empty() {
            cur.extend(c.to_lowercase());
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !c.is_whitespace() {
                out.push(c.to_lowercase().collect());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Accumulates hashed counts of one namespace, then emits ln(1+count) scaled to unit norm.
struct Bag {
    mask: u64,
    counts: Vec<(u32, f32)>,
}

impl Bag {
    fn new(log2_dim: u32) -> Self {
        Self { mask: (1u64 << log2_dim) - 1, counts: Vec::new() }
    }
    fn add(&mut self, h: u64) {
        self.counts.push(((h & self.mask) as u32, 1.0));
    }
    fn finish(mut self, out: &mut Vec<(u32, f32)>) {
        if self.counts.is_empty() {
            return;
        }
        self.counts.sort_unstable_by_key(|e| e.0);
        let mut merged: Vec<(u32, f32)> = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts {
            match merged.last_mut() {
                Some(last) if last.0 == i => last.1 += c,
                _ => merged.push((i, c)),
            }
        }
        let mut norm = 0.0f32;
        for e in merged.iter_mut() {
            e.1 = e.1.ln_1p();
            norm += e.1 * e.1;
        }
        let inv = 1.0 / norm.sqrt();
        out.extend(merged.into_iter().map(|(i, v)| (i, v * inv)));
    }
}

fn merge_rows(mut v: Vec<(u32, f32)>) -> Vec<(u32, f32)> {
    // Namespaces may collide on a row; sum them so each row appears once.
    v.sort_unstable_by_key(|e| e.0);
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(v.len());
    for (i, x) in v {
        match out.last_mut() {
            Some(last) if last.0 == i => last.1 += x,
            _ => out.push((i, x)),
        }
    }
    out
}

fn is_code_line(line: &str) -> bool {
    let t = line.trim();
    if t.is_empty() {
        return false;
    }
    line.starts_with("    ")
        || line.starts_with('\t')
        || t.ends_with(';')
        || t.ends_with('{')
        || t.ends_with('}')
        || t.ends_with(':') && (t.starts_with("def ") || t.starts_with("for ") || t.starts_with("if ") || t.starts_with("class "))
        || t.starts_with("import ")
        || t.starts_with("from ") && t.contains(" import ")
        || t.starts_with("#include")
        || t.contains(" = ") && !t.contains(". ")
        || t.starts_with("```")
}

fn dense_features(question_tokens: &[String], answer: &str, tokens: &[String]) -> [f32; N_DENSE] {
    let chars: Vec<char> = answer.chars().collect();
    let n_chars = chars.len().max(1) as f32;
    let words: Vec<&String> = tokens.iter().filter(|t| t.chars().next().is_some_and(|c| c.is_alphanumeric())).collect();
    let n_words = words.len();
    let nw = n_words.max(1) as f32;
    let mut alpha = 0usize;
    let mut digit = 0usize;
    let mut upper = 0usize;
    let mut non_ascii = 0usize;
    let mut newline = 0usize;
    let mut symbol = 0usize;
    for &c in &chars {
        if c.is_alphabetic() {
            alpha += 1;
            if c.is_uppercase() {
                upper += 1;
            }
        } else if c.is_numeric() {
            digit += 1;
        } else if c == '\n' {
            newline += 1;
        } else if !c.is_whitespace() {
            symbol += 1;
        }
        if !c.is_ascii() {
            non_ascii += 1;
        }
    }
    let distinct: std::collections::HashSet<&String> = words.iter().copied().collect();
    let lines: Vec<&str> = answer.lines().filter(|l| !l.trim().is_empty()).collect();
    let code_lines = lines.iter().filter(|l| is_code_line(l)).count();
    let tri: Vec<(&String, &String, &String)> = tokens.windows(3).map(|w| (&w[0], &w[1], &w[2])).collect();
    let distinct_tri: std::collections::HashSet<_> = tri.iter().collect();
    let repeated_tri = if tri.is_empty() { 0.0 } else { 1.0 - distinct_tri.len() as f32 / tri.len() as f32 };
    let mut longest_run = 0usize;
    let mut run = 0usize;
    for i in 0..tokens.len() {
        if i > 0 && tokens[i] == tokens[i - 1] {
            run += 1;
        } else {
            run = 1;
        }
        longest_run = longest_run.max(run);
    }
    let qset: std::collections::HashSet<&String> = question_tokens.iter().filter(|t| t.chars().count() > 3).collect();
    let overlap = if qset.is_empty() { 0.0 } else { qset.iter().filter(|t| distinct.contains(**t)).count() as f32 / qset.len() as f32 };
    let last = answer.trim_end().chars().last();
    let ends = matches!(last, Some('.' | '!' | '?' | '"' | ')' | '*' | '`')) as u8 as f32;
    let word_chars: usize = words.iter().map(|w| w.chars().count()).sum();
    let long_words = words.iter().filter(|w| w.chars().count() > 15).count();
    [
        n_chars.ln_1p(),
        (n_words as f32).ln_1p(),
        distinct.len() as f32 / nw,
        alpha as f32 / n_chars,
        digit as f32 / n_chars,
        symbol as f32 / n_chars,
        upper as f32 / alpha.max(1) as f32,
        non_ascii as f32 / n_chars,
        100.0 * newline as f32 / n_chars,
        code_lines as f32 / lines.len().max(1) as f32,
        repeated_tri,
        longest_run as f32 / tokens.len().max(1) as f32,
        overlap,
        ends,
        word_chars as f32 / nw,
        long_words as f32 / nw,
    ]
}

/// Extract the features of one (question, answer) pair into a table of `2^log2_dim` rows.
pub fn extract(question: &str, answer: &str, log2_dim: u32) -> Features {
    let question = truncate(question);
    let answer = truncate(answer);
    let tokens = tokenize(answer);
    let qtokens = tokenize(question);

    let mut sparse = Vec::new();
    let mut words = Bag::new(log2_dim);
    for t in &tokens {
        words.add(fnv1a(SALT_WORD, &[t]));
    }
    words.finish(&mut sparse);

    let mut bigrams = Bag::new(log2_dim);
    // sentence boundaries as pseudo-tokens so openings ("<s> i") and endings are features too
    let bos = String::from("<s>");
    let eos = String::from("</s>");
    let seq: Vec<&String> = std::iter::once(&bos).chain(tokens.iter()).chain(std::iter::once(&eos)).collect();
    for w in seq.windows(2) {
        bigrams.add(fnv1a(SALT_BIGRAM, &[w[0], w[1]]));
    }
    bigrams.finish(&mut sparse);

    let mut char4 = Bag::new(log2_dim);
    let mut norm: Vec<char> = vec![' '];
    for c in answer.chars() {
        if c.is_whitespace() {
            if norm.last() != Some(&' ') {
                norm.push(' ');
            }
        } else {
            norm.extend(c.to_lowercase());
        }
    }
    if norm.last() != Some(&' ') {
        norm.push(' ');
    }
    let mut buf = String::with_capacity(16);
    for w in norm.windows(4) {
        buf.clear();
        buf.extend(w.iter());
        char4.add(fnv1a(SALT_CHAR4, &[&buf]));
    }
    char4.finish(&mut sparse);

    let mut qwords = Bag::new(log2_dim);
    for t in &qtokens {
        qwords.add(fnv1a(SALT_QWORD, &[t]));
    }
    qwords.finish(&mut sparse);

    Features { sparse: merge_rows(sparse), dense: dense_features(&qtokens, answer, &tokens) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_splits_punctuation() {
        assert_eq!(tokenize("Hello, World! don't"), vec!["hello", ",", "world", "!", "don't"]);
        assert!(tokenize("   ").is_empty());
    }

    #[test]
    fn namespaces_have_unit_norm() {
        let f = extract("Q", "a b a", 20);
        // words {a:2, b:1}, bigrams 4, char4 "a b a" padded: " a b"... ; question 1 word.
        // Four unit-norm namespaces: total squared norm 4 unless rows collide (unlikely at 2^20).
        let sq: f32 = f.sparse.iter().map(|e| e.1 * e.1).sum();
        assert!((sq - 4.0).abs() < 1e-4, "{sq}");
        // word weights ln(3) and ln(2), normalised
        let n = (3f32.ln().powi(2) + 2f32.ln().powi(2)).sqrt();
        assert!(f.sparse.iter().any(|e| (e.1 - 3f32.ln() / n).abs() < 1e-6));
    }

    #[test]
    fn dense_detects_repetition_and_code() {
        let rep = extract("q", "the the the the the the the the", 12);
        let fine = extract("q", "I would like to travel and see the world.", 12);
        let code = extract("q", "import os\ndef f(x):\n    return x + 1\n", 12);
        let idx = |n: &str| DENSE_NAMES.iter().position(|x| *x == n).unwrap();
        assert!(rep.dense[idx("repeated_trigram_frac")] > 0.8);
        assert_eq!(fine.dense[idx("repeated_trigram_frac")], 0.0);
        assert!((rep.dense[idx("type_token_ratio")] - 1.0 / 8.0).abs() < 1e-6);
        assert!(code.dense[idx("frac_code_lines")] > 0.6);
        assert_eq!(fine.dense[idx("frac_code_lines")], 0.0);
        assert_eq!(fine.dense[idx("ends_with_terminal_punct")], 1.0);
    }

    #[test]
    fn empty_and_huge_inputs_are_fine() {
        let f = extract("", "", 10);
        assert!(f.sparse.len() <= 2); // only the "<s> </s>" bigram and the "  " padding gram at most
        assert!(f.dense.iter().all(|x| x.is_finite()));
        let huge = "word ".repeat(100_000);
        let f = extract("q", &huge, 10);
        assert!(f.dense[0] <= (MAX_CHARS as f32).ln_1p() + 1e-3);
    }
}
