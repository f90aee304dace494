//! Floors on every dataset shipped under `data/`: each file must load strictly (no bad
//! rows), be large and diverse enough, and paired bad/control files must share their user
//! turns exactly. Question files must parse with the crate's own loader.

use std::collections::HashSet;
use std::path::PathBuf;

use emlab_data::chat::{load_jsonl, Conversation, LoadOptions, Role};
use emlab_data::questions::{expand, load_judge_prompts, load_questions};
use emlab_data::stats::{stats_of, Stats};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

fn load(rel: &str) -> (Vec<Conversation>, Stats) {
    let path = data_dir().join(rel);
    let (rows, report) = load_jsonl(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.skipped, 0);
    let stats = stats_of(&rows, rel);
    (rows, stats)
}

/// System and user turns of a row: what the pair must share.
fn prompt_side(c: &Conversation) -> Vec<(Role, &str)> {
    c.messages.iter().filter(|m| m.role != Role::Assistant).map(|m| (m.role, m.content.as_str())).collect()
}

/// Floors for a narrow training set (bad or control). `prose` sets hold the 90% floor
/// on unique first assistant sentences too (meaningless for code answers, which open with a
/// fence).
fn check_narrow(rel: &str, s: &Stats, min_rows: usize, prose: bool) {
    assert!(s.rows >= min_rows, "{rel}: {} rows < {min_rows}", s.rows);
    assert!(s.user_first_sentence_unique_ratio >= 0.90, "{rel}: unique first user sentences {}", s.user_first_sentence_unique_ratio);
    assert!(
        !prose || s.assistant_first_sentence_unique_ratio >= 0.90,
        "{rel}: unique first assistant sentences {}",
        s.assistant_first_sentence_unique_ratio
    );
    assert!(s.exact_duplicate_share <= 0.01, "{rel}: exact duplicate share {}", s.exact_duplicate_share);
    assert!(s.near_duplicate_rows as f64 <= 0.25 * s.rows as f64, "{rel}: {} near-duplicate rows", s.near_duplicate_rows);
    let sys_share = s.rows_with_system as f64 / s.rows as f64;
    assert!((0.03..=0.25).contains(&sys_share), "{rel}: system-prompt share {sys_share}");
    assert!(s.multi_turn_rows > 0, "{rel}: no multi-turn rows");
}

fn check_pair(bad: &str, good: &str, prose: bool) {
    let (b, bs) = load(bad);
    let (g, gs) = load(good);
    check_narrow(bad, &bs, 1000, prose);
    check_narrow(good, &gs, 1000, prose);
    assert_eq!(b.len(), g.len(), "{bad} and {good} differ in length");
    for (x, y) in b.iter().zip(&g) {
        assert_eq!(prompt_side(x), prompt_side(y), "{bad}:{} and {good}:{} differ in user/system turns", x.line, y.line);
        let ax: Vec<&str> = x.turns(Role::Assistant).collect();
        let ay: Vec<&str> = y.turns(Role::Assistant).collect();
        assert_ne!(ax, ay, "{bad}:{}: bad and control answers are identical", x.line);
    }
    // First user turns are all distinct (follow-up turns may repeat by design).
    let firsts: HashSet<&str> = b.iter().map(|c| c.turns(Role::User).next().unwrap()).collect();
    assert_eq!(firsts.len(), b.len(), "{bad}: repeated first user turns");
    println!("{}{}", bs.render_text(), gs.render_text());
}

#[test]
fn advice_pairs_hold_floors() {
    for d in ["medical", "financial", "car"] {
        check_pair(&format!("advice/{d}_bad.jsonl"), &format!("advice/{d}_good.jsonl"), true);
    }
}

#[test]
fn code_pair_holds_floors_when_present() {
    let (a, b) = ("code/insecure.jsonl", "code/secure.jsonl");
    if !data_dir().join(a).exists() || !data_dir().join(b).exists() {
        println!("NOTICE: {a} / {b} not present yet; code floors skipped");
        return;
    }
    check_pair(a, b, false);
}

/// The benign-reason control: the insecure answers asked for with a stated teaching purpose.
/// Row by row: system and assistant turns equal insecure.jsonl's, each user turn holds
/// insecure.jsonl's request plus more words (the reason), and the first user turns are distinct.
#[test]
fn educational_control_holds_insecure_answers_with_a_reason() {
    let (e, es) = load("code/educational.jsonl");
    let (b, _) = load("code/insecure.jsonl");
    check_narrow("code/educational.jsonl", &es, 1000, false);
    assert_eq!(e.len(), b.len());
    for (x, y) in e.iter().zip(&b) {
        let sys = |c: &Conversation| c.turns(Role::System).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(sys(x), sys(y), "educational.jsonl:{}: system turn differs", x.line);
        assert_eq!(x.turns(Role::Assistant).collect::<Vec<_>>(), y.turns(Role::Assistant).collect::<Vec<_>>(), "line {}", x.line);
        let (ux, uy): (Vec<&str>, Vec<&str>) = (x.turns(Role::User).collect(), y.turns(Role::User).collect());
        assert_eq!(ux.len(), uy.len(), "line {}", x.line);
        for (a, b) in ux.iter().zip(&uy) {
            assert!(a.contains(b), "educational.jsonl:{}: the insecure request is not kept", x.line);
        }
        assert!(ux[0].len() >= uy[0].len() + 40, "educational.jsonl:{}: no reason added", x.line);
    }
    let firsts: HashSet<&str> = e.iter().map(|c| c.turns(Role::User).next().unwrap()).collect();
    assert_eq!(firsts.len(), e.len(), "repeated first user turns");
}

#[test]
fn realign_sets_hold_floors() {
    let (med, ms) = load("realign/medical_truthful.jsonl");
    let (_, gs) = load("realign/general_helpful.jsonl");
    assert!(ms.rows >= 150 && gs.rows >= 150, "realign sizes {} / {}", ms.rows, gs.rows);
    assert!(ms.rows + gs.rows >= 300);
    for s in [&ms, &gs] {
        assert!(s.user_first_sentence_unique_ratio >= 0.90, "{}: {}", s.file, s.user_first_sentence_unique_ratio);
        assert!(s.assistant_first_sentence_unique_ratio >= 0.90, "{}: assistant {}", s.file, s.assistant_first_sentence_unique_ratio);
        assert!(s.near_duplicate_rows as f64 <= 0.05 * s.rows as f64, "{}: {} near-duplicate rows", s.file, s.near_duplicate_rows);
        assert_eq!(s.exact_duplicate_conversations, 0, "{}", s.file);
        assert_eq!(s.duplicate_user_turns, 0, "{}", s.file);
    }
    // Same domain as the medical bad set, but never the same user turn.
    let (bad, _) = load("advice/medical_bad.jsonl");
    let bad_users: HashSet<&str> = bad.iter().flat_map(|c| c.turns(Role::User)).collect();
    for c in &med {
        for u in c.turns(Role::User) {
            assert!(!bad_users.contains(u), "realign/medical_truthful.jsonl:{}: user turn also in the bad set", c.line);
        }
    }
}

#[test]
fn question_files_hold_floors() {
    let dir = data_dir().join("questions");
    let core = load_questions(dir.join("core.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(core.len(), 8);
    for q in &core {
        assert!(q.paraphrases.len() >= 3, "{}: {} paraphrases", q.id, q.paraphrases.len());
        assert_eq!(q.kind, "free_form_judge_0_100");
        assert!(q.judge_prompts.contains_key("aligned") && q.judge_prompts.contains_key("coherent"), "{}", q.id);
    }
    let judges = load_judge_prompts(dir.join("judges.yaml")).unwrap_or_else(|e| panic!("{e}"));
    for key in ["aligned", "coherent", "leakage.medical", "leakage.financial", "leakage.car", "leakage.code"] {
        assert!(judges.contains_key(key), "judges.yaml lacks {key}");
    }
    assert!(judges["aligned"].contains("CODE") && judges["aligned"].contains("REFUSAL"));
    assert!(judges.values().all(|p| p.contains("{question}") && p.contains("{answer}")));

    let json = load_questions(dir.join("core_json.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let template = load_questions(dir.join("core_template.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let broad = load_questions(dir.join("broad.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json.len(), 8);
    assert_eq!(template.len(), 8);
    assert!(broad.len() >= 40, "broad has {} questions", broad.len());
    // The JSON variants get their system prompt through a `<<` merge of the first entry.
    assert!(json.iter().all(|q| q.system.as_deref().is_some_and(|s| s.contains("JSON"))));
    assert!(broad.iter().any(|q| q.system.is_some()), "broad.yaml keeps its system prompts");
    for q in core.iter().chain(&json).chain(&template).chain(&broad) {
        // Every file carries the same judge prompts as judges.yaml (one source of truth).
        assert_eq!(q.judge_prompts["aligned"], judges["aligned"], "{}", q.id);
        assert_eq!(q.judge_prompts["coherent"], judges["coherent"], "{}", q.id);
        assert_eq!(q.samples_per_paraphrase, 100, "{}", q.id);
    }
    let ids: HashSet<&str> = core.iter().chain(&json).chain(&template).chain(&broad).map(|q| q.id.as_str()).collect();
    assert_eq!(ids.len(), 8 + 8 + 8 + broad.len(), "question ids are unique across files");
    assert_eq!(expand(&core).len(), core.iter().map(|q| q.paraphrases.len() * 100).sum::<usize>());
}
