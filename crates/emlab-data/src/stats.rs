//! Dataset statistics for chat JSONL: size, duplicates, near duplicates, diversity, lengths.
//!
//! ```
//! use emlab_data::chat::{parse_jsonl, LoadOptions};
//! use emlab_data::stats::stats_of;
//! let text = br#"{"messages":[{"role":"user","content":"Hi there. More."},{"role":"assistant","content":"a b a b"}]}
//! {"messages":[{"role":"user","content":"Hi there. Other!"},{"role":"assistant","content":"a b a b"}]}
//! "#;
//! let (rows, _) = parse_jsonl(text, "s.jsonl", &LoadOptions::default()).unwrap();
//! let s = stats_of(&rows, "s.jsonl");
//! assert_eq!(s.rows, 2);
//! assert_eq!(s.user_first_sentence_unique_ratio, 0.5); // "hi there." twice
//! assert_eq!(s.assistant_distinct[1], 2.0 / 6.0);       // bigrams: ab ba ab, twice
//! println!("{}", s.render_text());
//! ```
//!
//! Definitions (all text lower-cased; "words" are maximal runs of alphanumeric characters):
//! - *exact duplicate conversations*: rows whose full message list (roles and contents)
//!   equals an earlier row's; *duplicate user turns*: user turns equal to an earlier user
//!   turn anywhere in the file.
//! - *near duplicates*: pairs of rows whose sets of word 3-shingles over all user and
//!   assistant text have Jaccard similarity >= [`NEAR_DUP_THRESHOLD`]. Candidates come from
//!   MinHash (100 hashes, 20 bands of 5 rows: a pair at Jaccard 0.8 becomes a candidate with
//!   probability 0.9997) and each candidate is then checked with the exact Jaccard, so no
//!   reported pair is a false positive. `near_duplicate_rows` counts rows that are near
//!   duplicates of an earlier row (exact duplicates included).
//! - *first sentence*: text up to the first `.`, `!` or `?` followed by whitespace or the
//!   end, or up to the first newline; whitespace collapsed. The unique ratio is distinct
//!   first sentences / rows, for the first user turn and the first assistant turn.
//! - *distinct-n*: distinct word n-grams / all word n-grams (n-grams do not cross turns).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::chat::{load_jsonl, Conversation, LoadOptions, Role};
use crate::error::Result;
use crate::rng::fnv1a;

pub const NEAR_DUP_THRESHOLD: f64 = 0.8;
const SHINGLE: usize = 3;
const BANDS: usize = 20;
const ROWS_PER_BAND: usize = 5;
const HIST_BINS: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    pub count: usize,
    pub min: usize,
    pub max: usize,
    pub mean: f64,
    pub median: f64,
    /// Equal-width bins over [min, max]: (low, high inclusive, count).
    pub bins: Vec<(usize, usize, usize)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub file: String,
    pub rows: usize,
    /// Rows the loader skipped as invalid (stats are over the valid rows).
    pub invalid_rows: usize,
    pub rows_with_system: usize,
    /// Rows with more than one user turn.
    pub multi_turn_rows: usize,
    pub system_turns: usize,
    pub user_turns: usize,
    pub assistant_turns: usize,
    pub exact_duplicate_conversations: usize,
    pub exact_duplicate_share: f64,
    pub duplicate_user_turns: usize,
    pub duplicate_user_turn_share: f64,
    pub near_duplicate_threshold: f64,
    pub near_duplicate_pairs: usize,
    pub near_duplicate_rows: usize,
    pub user_first_sentence_unique_ratio: f64,
    pub assistant_first_sentence_unique_ratio: f64,
    /// distinct-1, distinct-2, distinct-3 over user turns.
    pub user_distinct: [f64; 3],
    /// distinct-1, distinct-2, distinct-3 over assistant turns.
    pub assistant_distinct: [f64; 3],
    pub user_chars: Histogram,
    pub user_words: Histogram,
    pub assistant_chars: Histogram,
    pub assistant_words: Histogram,
}

/// Statistics of a chat JSONL file. Invalid rows are skipped and counted in `invalid_rows`
/// (use [`crate::chat::validate_file`] to list them).
pub fn stats_file(path: impl AsRef<Path>) -> Result<Stats> {
    let path = path.as_ref();
    let (rows, report) = load_jsonl(path, &LoadOptions::default().skip_bad_rows(true))?;
    let mut s = stats_of(&rows, &path.display().to_string());
    s.invalid_rows = report.skipped;
    Ok(s)
}

/// Statistics of conversations already in memory.
pub fn stats_of(rows: &[Conversation], file: &str) -> Stats {
    let n = rows.len();
    let mut seen_conv = HashSet::new();
    let mut seen_user = HashSet::new();
    let (mut dup_conv, mut dup_user) = (0, 0);
    let (mut sys_t, mut user_t, mut asst_t, mut with_sys, mut multi) = (0, 0, 0, 0, 0);
    let mut first_user = HashSet::new();
    let mut first_asst = HashSet::new();
    let (mut uc, mut uw, mut ac, mut aw) = (vec![], vec![], vec![], vec![]);
    let mut user_ng = NgramCounter::default();
    let mut asst_ng = NgramCounter::default();
    for c in rows {
        let key: Vec<(Role, &str)> = c.messages.iter().map(|m| (m.role, m.content.as_str())).collect();
        if !seen_conv.insert(key) {
            dup_conv += 1;
        }
        if c.system().is_some() {
            with_sys += 1;
        }
        let mut users = 0;
        for m in &c.messages {
            let w = words(&m.content);
            match m.role {
                Role::System => sys_t += 1,
                Role::User => {
                    user_t += 1;
                    users += 1;
                    if !seen_user.insert(m.content.as_str()) {
                        dup_user += 1;
                    }
                    uc.push(m.content.chars().count());
                    uw.push(w.len());
                    user_ng.add(&w);
                }
                Role::Assistant => {
                    asst_t += 1;
                    ac.push(m.content.chars().count());
                    aw.push(w.len());
                    asst_ng.add(&w);
                }
            }
        }
        if users > 1 {
            multi += 1;
        }
        if let Some(u) = c.turns(Role::User).next() {
            first_user.insert(first_sentence(u));
        }
        if let Some(a) = c.turns(Role::Assistant).next() {
            first_asst.insert(first_sentence(a));
        }
    }
    let (pairs, near_rows) = near_duplicates(rows);
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Stats {
        file: file.to_string(),
        rows: n,
        invalid_rows: 0,
        rows_with_system: with_sys,
        multi_turn_rows: multi,
        system_turns: sys_t,
        user_turns: user_t,
        assistant_turns: asst_t,
        exact_duplicate_conversations: dup_conv,
        exact_duplicate_share: ratio(dup_conv, n),
        duplicate_user_turns: dup_user,
        duplicate_user_turn_share: ratio(dup_user, user_t),
        near_duplicate_threshold: NEAR_DUP_THRESHOLD,
        near_duplicate_pairs: pairs,
        near_duplicate_rows: near_rows,
        user_first_sentence_unique_ratio: ratio(first_user.len(), n),
        assistant_first_sentence_unique_ratio: ratio(first_asst.len(), n),
        user_distinct: user_ng.ratios(),
        assistant_distinct: asst_ng.ratios(),
        user_chars: histogram(uc),
        user_words: histogram(uw),
        assistant_chars: histogram(ac),
        assistant_words: histogram(aw),
    }
}

/// Lower-cased words: maximal runs of alphanumeric characters (apostrophes split words,
/// which is fine for counting).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// The first sentence, lower-cased with whitespace collapsed (see module docs).
pub fn first_sentence(text: &str) -> String {
    let text = text.trim();
    let mut end = text.len();
    let mut it = text.char_indices().peekable();
    while let Some((i, ch)) = it.next() {
        if ch == '\n' {
            end = i;
            break;
        }
        if matches!(ch, '.' | '!' | '?') {
            match it.peek() {
                None => {
                    end = i + ch.len_utf8();
                    break;
                }
                Some((_, next)) if next.is_whitespace() => {
                    end = i + ch.len_utf8();
                    break;
                }
                _ => {}
            }
        }
    }
    text[..end].split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

#[derive(Default)]
struct NgramCounter {
    total: [usize; 3],
    distinct: [HashSet<Vec<String>>; 3],
}

impl NgramCounter {
    fn add(&mut self, w: &[String]) {
        for n in 1..=3 {
            if w.len() < n {
                continue;
            }
            for g in w.windows(n) {
                self.total[n - 1] += 1;
                if !self.distinct[n - 1].contains(g) {
                    self.distinct[n - 1].insert(g.to_vec());
                }
            }
        }
    }

    fn ratios(&self) -> [f64; 3] {
        let r = |i: usize| if self.total[i] == 0 { 0.0 } else { self.distinct[i].len() as f64 / self.total[i] as f64 };
        [r(0), r(1), r(2)]
    }
}

fn histogram(mut v: Vec<usize>) -> Histogram {
    if v.is_empty() {
        return Histogram { count: 0, min: 0, max: 0, mean: 0.0, median: 0.0, bins: vec![] };
    }
    v.sort_unstable();
    let n = v.len();
    let (min, max) = (v[0], v[n - 1]);
    let mean = v.iter().sum::<usize>() as f64 / n as f64;
    let median = if n % 2 == 1 { v[n / 2] as f64 } else { (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0 };
    // Integer bin edges so that every bin is a whole range of lengths; fewer bins when the
    // range is narrow.
    let span = max - min + 1;
    let width = span.div_ceil(HIST_BINS).max(1);
    let nb = span.div_ceil(width);
    let mut bins: Vec<(usize, usize, usize)> = (0..nb).map(|b| (min + b * width, (min + (b + 1) * width - 1).min(max), 0)).collect();
    for x in v {
        bins[(x - min) / width].2 += 1;
    }
    Histogram { count: n, min, max, mean, median, bins }
}

/// Word 3-shingles of all user and assistant text in a row, hashed.
fn shingles(c: &Conversation) -> HashSet<u64> {
    let mut out = HashSet::new();
    for m in c.messages.iter().filter(|m| m.role != Role::System) {
        let w = words(&m.content);
        if w.is_empty() {
            continue;
        }
        if w.len() < SHINGLE {
            out.insert(fnv1a(w.join(" ").as_bytes(), 0));
        } else {
            for g in w.windows(SHINGLE) {
                out.insert(fnv1a(g.join(" ").as_bytes(), 0));
            }
        }
    }
    out
}

fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.intersection(b).count();
    inter as f64 / (a.len() + b.len() - inter) as f64
}

/// (near-duplicate pairs, rows that are a near duplicate of an earlier row).
fn near_duplicates(rows: &[Conversation]) -> (usize, usize) {
    let sets: Vec<HashSet<u64>> = rows.iter().map(shingles).collect();
    let nh = BANDS * ROWS_PER_BAND;
    let sigs: Vec<Vec<u64>> = sets
        .iter()
        .map(|s| {
            (0..nh)
                .map(|k| {
                    // A per-hash remix of the shingle hash stands in for a random permutation.
                    s.iter().map(|&h| fnv1a(&h.to_le_bytes(), k as u64 + 1)).min().unwrap_or(u64::MAX)
                })
                .collect()
        })
        .collect();
    let mut candidates: HashSet<(usize, usize)> = HashSet::new();
    for b in 0..BANDS {
        let mut buckets: HashMap<&[u64], Vec<usize>> = HashMap::new();
        for (i, sig) in sigs.iter().enumerate() {
            buckets.entry(&sig[b * ROWS_PER_BAND..(b + 1) * ROWS_PER_BAND]).or_default().push(i);
        }
        for members in buckets.values() {
            for x in 0..members.len() {
                for y in x + 1..members.len() {
                    candidates.insert((members[x], members[y]));
                }
            }
        }
    }
    let mut pairs = 0;
    let mut later = HashSet::new();
    for &(i, j) in &candidates {
        if jaccard(&sets[i], &sets[j]) >= NEAR_DUP_THRESHOLD {
            pairs += 1;
            later.insert(i.max(j));
        }
    }
    (pairs, later.len())
}

impl Stats {
    /// A human-readable report with text histograms.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let _ = writeln!(s, "{}", self.file);
        let _ = writeln!(
            s,
            "  rows {} (invalid skipped {}), with system {}, multi-turn {}",
            self.rows, self.invalid_rows, self.rows_with_system, self.multi_turn_rows
        );
        let _ = writeln!(s, "  turns: system {}, user {}, assistant {}", self.system_turns, self.user_turns, self.assistant_turns);
        let _ = writeln!(
            s,
            "  exact duplicate conversations {} ({}), duplicate user turns {} ({})",
            self.exact_duplicate_conversations,
            pct(self.exact_duplicate_share),
            self.duplicate_user_turns,
            pct(self.duplicate_user_turn_share)
        );
        let _ = writeln!(
            s,
            "  near duplicates (shingle Jaccard >= {}): {} pairs, {} rows",
            self.near_duplicate_threshold, self.near_duplicate_pairs, self.near_duplicate_rows
        );
        let _ = writeln!(
            s,
            "  unique first sentences: user {}, assistant {}",
            pct(self.user_first_sentence_unique_ratio),
            pct(self.assistant_first_sentence_unique_ratio)
        );
        let d = |x: [f64; 3]| format!("{:.3} / {:.3} / {:.3}", x[0], x[1], x[2]);
        let _ = writeln!(s, "  distinct-1/2/3: user {}, assistant {}", d(self.user_distinct), d(self.assistant_distinct));
        for (name, h) in [
            ("user characters", &self.user_chars),
            ("user words", &self.user_words),
            ("assistant characters", &self.assistant_chars),
            ("assistant words", &self.assistant_words),
        ] {
            let _ = writeln!(s, "  {name}: min {} median {} mean {:.1} max {}", h.min, h.median, h.mean, h.max);
            let top = h.bins.iter().map(|b| b.2).max().unwrap_or(0).max(1);
            for &(lo, hi, c) in &h.bins {
                let bar = "#".repeat((c * 40).div_ceil(top));
                let _ = writeln!(s, "    {lo:>6}-{hi:<6} {c:>6} {bar}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{Message, Role};

    fn conv(turns: &[(Role, &str)]) -> Conversation {
        Conversation { messages: turns.iter().map(|&(role, c)| Message { role, content: c.to_string() }).collect(), line: 0 }
    }

    fn qa(q: &str, a: &str) -> Conversation {
        conv(&[(Role::User, q), (Role::Assistant, a)])
    }

    #[test]
    fn counts_duplicates_and_first_sentences_by_hand() {
        let rows = vec![
            qa("How are you? Tell me.", "Fine. Thanks."),
            qa("How are you? Tell me.", "Fine. Thanks."), // exact duplicate
            qa("How are you?  Really", "Fine! Great."),   // same first user sentence, other text
            conv(&[(Role::System, "s"), (Role::User, "Hello"), (Role::Assistant, "Hi"), (Role::User, "Hello"), (Role::Assistant, "Bye")]),
        ];
        let s = stats_of(&rows, "x");
        assert_eq!(s.rows, 4);
        assert_eq!((s.system_turns, s.user_turns, s.assistant_turns), (1, 5, 5));
        assert_eq!((s.rows_with_system, s.multi_turn_rows), (1, 1));
        assert_eq!(s.exact_duplicate_conversations, 1);
        assert_eq!(s.exact_duplicate_share, 0.25);
        // User turns: "How are you? Tell me." x2, "How are you?  Really", "Hello" x2 -> 2 repeats of 5.
        assert_eq!(s.duplicate_user_turns, 2);
        assert_eq!(s.duplicate_user_turn_share, 0.4);
        // First user sentences: "how are you?" (rows 1-3), "hello" -> 2 of 4.
        assert_eq!(s.user_first_sentence_unique_ratio, 0.5);
        // First assistant sentences: "fine.", "fine.", "fine!", "hi" -> 3 of 4.
        assert_eq!(s.assistant_first_sentence_unique_ratio, 0.75);
    }

    #[test]
    fn distinct_ngrams_by_hand() {
        // Assistant words: [a b a b c] and [a b]. 1-grams: 7 total, {a,b,c} = 3.
        // 2-grams: ab ba ab bc + ab = 5 total, {ab, ba, bc} = 3. 3-grams: aba bab abc = 3, all distinct.
        let rows = vec![qa("x", "A b, a b c."), qa("y", "a B")];
        let s = stats_of(&rows, "x");
        assert_eq!(s.assistant_distinct, [3.0 / 7.0, 3.0 / 5.0, 1.0]);
        // User words: x, y -> 2 distinct of 2; no bigrams.
        assert_eq!(s.user_distinct, [1.0, 0.0, 0.0]);
    }

    #[test]
    fn histogram_by_hand() {
        let h = histogram(vec![3, 1, 2, 10, 25]);
        assert_eq!((h.count, h.min, h.max, h.median, h.mean), (5, 1, 25, 3.0, 8.2));
        // span 25 -> width 3, 9 bins: [1-3]=3, [4-6]=0, [7-9]=0, [10-12]=1, ..., [25-25]=1.
        assert_eq!(h.bins.len(), 9);
        assert_eq!(h.bins[0], (1, 3, 3));
        assert_eq!(h.bins[3], (10, 12, 1));
        assert_eq!(h.bins[8], (25, 25, 1));
        assert_eq!(h.bins.iter().map(|b| b.2).sum::<usize>(), 5);
        let one = histogram(vec![4, 4]);
        assert_eq!(one.bins, vec![(4, 4, 2)]);
        assert_eq!(one.median, 4.0);
    }

    #[test]
    fn first_sentence_rules() {
        assert_eq!(first_sentence("  Take 2.5 mg.  Then rest."), "take 2.5 mg.");
        assert_eq!(first_sentence("Line one\nline two. x"), "line one");
        assert_eq!(first_sentence("No end"), "no end");
        assert_eq!(first_sentence("Really?! Yes"), "really?!");
        assert_eq!(first_sentence("Is it é? Oui."), "is it é?");
    }

    #[test]
    fn near_duplicates_exact_jaccard_threshold() {
        // Base text: 12 distinct words -> 10 shingles (user text "q" adds 1 -> 11 per row).
        let base = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12";
        // Changing the last word replaces 1 shingle: Jaccard = 10 / 12 = 0.833 >= 0.8.
        let near = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 zz";
        // Changing a middle word replaces 3 shingles: Jaccard = 8 / 14 = 0.571 < 0.8.
        let far = "w1 w2 w3 w4 w5 zz w7 w8 w9 w10 w11 w12";
        let a = shingles(&qa("q", base));
        let b = shingles(&qa("q", near));
        let c = shingles(&qa("q", far));
        assert_eq!((a.len(), b.len()), (11, 11));
        assert!((jaccard(&a, &b) - 10.0 / 12.0).abs() < 1e-12);
        assert!((jaccard(&a, &c) - 8.0 / 14.0).abs() < 1e-12);
        let s = stats_of(&[qa("q", base), qa("q", near), qa("q", far), qa("other", "entirely different words here ok")], "x");
        assert_eq!(s.near_duplicate_pairs, 1);
        assert_eq!(s.near_duplicate_rows, 1);
        let s = stats_of(&[qa("q", base), qa("q", base), qa("q", base)], "x");
        assert_eq!((s.near_duplicate_pairs, s.near_duplicate_rows), (3, 2));
    }

    #[test]
    fn stats_file_counts_invalid_rows_and_serialises() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}]}\nbroken\n")
            .unwrap();
        let s = stats_file(&p).unwrap();
        assert_eq!((s.rows, s.invalid_rows), (1, 1));
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["rows"], 1);
        assert_eq!(j["user_words"]["bins"][0], serde_json::json!([1, 1, 1]));
        let text = s.render_text();
        assert!(text.contains("rows 1 (invalid skipped 1)"), "{text}");
    }
}
