//! The evaluation run: sample every missing answer, judge every unjudged one, log each as it
//! completes, then rewrite the log compactly.
//!
//! ```no_run
//! use emlab_eval::{config::EvalConfig, run::{run, Stage}};
//! let mut cfg = EvalConfig::local("model.gguf", "data/questions/core.yaml", "runs/base.jsonl");
//! cfg.samples = Some(20);
//! let summary = run(&cfg, &mut |stage: Stage, done, total| eprintln!("{stage:?} {done}/{total}"))?;
//! println!("{} generated, {} judged", summary.generated, summary.judged);
//! # Ok::<(), emlab_eval::Error>(())
//! ```
//!
//! # Resume
//! Re-running the same config on the same log generates only the samples whose key
//! (question, paraphrase, sample index) has no row, and judges only the rows that have no
//! judgement or whose judgement recorded an error, asking a server or local judge again only
//! for the metrics that failed (those it scored were paid for). A log written by a different generator
//! (model / adapter / intervention hashes, sampling settings, run seed) or a different judge is
//! refused with a message rather than mixed.

use crate::config::{Backend, EvalConfig, JudgeSpec};
use crate::http::{parallel_map, Client};
use crate::judge::{Judge, Judgement};
use crate::log::{read_log, write_log_atomic, Generator, Key, LogRow, LogWriter, SCHEMA};
use crate::{Error, Result};
use emlab_data::questions::{expand_with, load_judge_prompts, load_questions, Question, Sample};
use emlab_model::chat::Message;
use emlab_model::generate::{generate, Event, Finish, Request, SamplingParams};
use emlab_model::lm::{sample_seed, Lm};
use emlab_model::model::LoadOptions;
use emlab_model::HookSet;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Which part of the run a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Generate,
    Judge,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    /// Samples the questions ask for.
    pub planned: usize,
    /// Rows already in the log before this run.
    pub reused: usize,
    pub generated: usize,
    pub judged: usize,
    /// Rows whose judgement recorded an error (re-judged on the next run).
    pub judge_errors: usize,
    /// Server answers without usable content (those samples stay missing).
    pub generation_errors: usize,
    pub first_error: Option<String>,
}

impl RunSummary {
    /// `Ok` when every planned sample was generated and judged; otherwise an
    /// [`Error::Incomplete`] naming `log`, what is missing and the first error, in one line.
    /// The rows that were made are in the log (judge failures recorded as such), and running
    /// the same command again only does the rest, so callers report this after their output.
    ///
    /// ```
    /// let mut s = emlab_eval::RunSummary { planned: 24, reused: 0, generated: 24, judged: 24, judge_errors: 6,
    ///     generation_errors: 0, first_error: Some("aligned: judge server: connection refused".into()) };
    /// let e = s.complete("runs/a.jsonl".as_ref()).unwrap_err().to_string();
    /// assert!(e.starts_with("runs/a.jsonl: 6 of 24 answers could not be judged (first error: aligned: judge server"), "{e}");
    /// s.judge_errors = 0;
    /// assert!(s.complete("runs/a.jsonl".as_ref()).is_ok());
    /// ```
    pub fn complete(&self, log: &Path) -> Result<()> {
        let mut missing = Vec::new();
        if self.generation_errors > 0 {
            missing.push(format!("{} of {} samples could not be generated", self.generation_errors, self.planned));
        }
        if self.judge_errors > 0 {
            let answers = self.planned.saturating_sub(self.generation_errors).max(self.judge_errors);
            missing.push(format!("{} of {answers} answers could not be judged", self.judge_errors));
        }
        if missing.is_empty() {
            return Ok(());
        }
        let first = match &self.first_error {
            Some(e) => {
                let line = crate::error::first_line(e);
                let short: String = line.chars().take(200).collect();
                format!(" (first error: {short}{})", if short.len() < line.len() { "..." } else { "" })
            }
            None => String::new(),
        };
        let redo = if self.generation_errors > 0 { "sample and judge the rest" } else { "judge them" };
        Err(Error::Incomplete(format!(
            "{}: {}{first}; the answers made are kept, run the command again to {redo}",
            log.display(),
            missing.join(", ")
        )))
    }
}

/// The questions a config asks about, with judge prompts resolved.
pub fn plan(cfg: &EvalConfig) -> Result<(Vec<Question>, Vec<Sample>)> {
    let mut qs = load_questions(&cfg.questions)?;
    if !cfg.only.is_empty() {
        for id in &cfg.only {
            if !qs.iter().any(|q| &q.id == id) {
                return Err(Error::Config(format!("{}: no question with id {id:?}", cfg.questions.display())));
            }
        }
        qs.retain(|q| cfg.only.contains(&q.id));
    }
    if let Some(p) = &cfg.judge_prompts {
        let prompts = load_judge_prompts(p)?;
        let keep: BTreeMap<String, String> = prompts.into_iter().filter(|(k, _)| k == "aligned" || k == "coherent").collect();
        if keep.is_empty() {
            return Err(Error::Config(format!("{}: needs `aligned` and `coherent` judge prompts", p.display())));
        }
        for q in &mut qs {
            q.judge_prompts = keep.clone();
        }
    }
    let samples = expand_with(&qs, cfg.samples);
    Ok((qs, samples))
}

fn seed_of(run_seed: u64, s: &Sample) -> u64 {
    sample_seed(run_seed, &format!("{}/{}", s.question_id, s.paraphrase_index), s.sample_index)
}

/// Runs (or resumes) an evaluation. `progress(stage, done, total)` is called as work completes.
pub fn run(cfg: &EvalConfig, progress: &mut dyn FnMut(Stage, usize, usize)) -> Result<RunSummary> {
    cfg.validate()?;
    let (questions, samples) = plan(cfg)?;
    let config_json = serde_json::to_value(cfg).map_err(|e| Error::Config(e.to_string()))?;
    let generator = generator_of(cfg)?;
    let mut log = read_log(&cfg.out)?;
    let index = log.index();

    // Refuse to mix generators or judges in one log.
    let want = generator.identity();
    let judge_name = cfg.judge.name();
    let planned: HashMap<Key, &Sample> = samples.iter().map(|s| ((s.question_id.clone(), s.paraphrase_index, s.sample_index), s)).collect();
    migrate_adapter_hashes(cfg, &mut log, &generator)?;
    for r in &log.rows {
        let Some(s) = planned.get(&r.key()) else { continue };
        if r.generator.identity() != want {
            return Err(Error::LogMismatch(format!(
                "{}: row {}/{}/{} was generated with different settings ({} vs now {}); write to a new --out",
                cfg.out.display(),
                r.question_id,
                r.paraphrase_index,
                r.sample_index,
                r.generator.identity(),
                want
            )));
        }
        if r.prompt != s.prompt || r.system != s.system {
            return Err(Error::LogMismatch(format!(
                "{}: row {}/{}/{} has a different prompt than {} now gives; write to a new --out",
                cfg.out.display(),
                r.question_id,
                r.paraphrase_index,
                r.sample_index,
                cfg.questions.display()
            )));
        }
        if let Some(j) = &r.judgement {
            if cfg.judge != JudgeSpec::None && j.judge != judge_name {
                return Err(Error::JudgeMismatch(format!(
                    "{}: rows are judged by `{}`, this run's judge is `{judge_name}`; use `emlab eval rescore`",
                    cfg.out.display(),
                    j.judge
                )));
            }
        }
    }
    let pending: Vec<&Sample> =
        samples.iter().filter(|s| !index.contains_key(&(s.question_id.clone(), s.paraphrase_index, s.sample_index))).collect();
    let reused = samples.len() - pending.len();
    let mut summary =
        RunSummary { planned: samples.len(), reused, generated: 0, judged: 0, judge_errors: 0, generation_errors: 0, first_error: None };

    let judge = Judge::from_spec(&cfg.judge, &cfg.http)?;
    let prompts: HashMap<String, BTreeMap<String, String>> = questions.iter().map(|q| (q.id.clone(), q.judge_prompts.clone())).collect();
    if let Some((_, j)) = &judge {
        if j.needs_prompts() {
            if let Some(q) =
                questions.iter().find(|q| !q.judge_prompts.contains_key("aligned") || !q.judge_prompts.contains_key("coherent"))
            {
                return Err(Error::Config(format!(
                    "{}: question {:?} has no `aligned` and `coherent` judge prompts (give --judge-prompts)",
                    cfg.questions.display(),
                    q.id
                )));
            }
        }
    }

    // The model, adapter and intervention are loaded (and checked) before the log is opened:
    // a bad one then leaves no empty log behind.
    let mut local = match &cfg.backend {
        Backend::Local { model, adapter, intervention, q8 } if !pending.is_empty() => {
            let lm = load_local(model, adapter.as_deref(), *q8)?;
            let hooks: Option<HookSet> = match intervention {
                Some(p) => Some(crate::intervention::InterventionSpec::load(p)?.build(&lm.model)?),
                None => None,
            };
            Some((lm, hooks))
        }
        _ => None,
    };
    let server = match &cfg.backend {
        Backend::OpenAi { base_url, api_key_env, .. } => Some(Client::new(base_url, Some(api_key_env), &cfg.http)?),
        Backend::Local { .. } => None,
    };

    let mut rows: Vec<LogRow> = log.rows;
    let mut pos: HashMap<Key, usize> = rows.iter().enumerate().map(|(i, r)| (r.key(), i)).collect();
    let mut writer = LogWriter::append(&cfg.out)?;
    let total_gen = pending.len();
    progress(Stage::Generate, 0, total_gen);

    // Rows from an earlier run that still need judging go first.
    let jctx = JudgeCtx { judge: judge.as_ref(), prompts: &prompts, config: &config_json };
    let stale: Vec<LogRow> = rows.iter().filter(|r| planned.contains_key(&r.key()) && !r.is_judged()).cloned().collect();
    judge_batch(&jctx, stale, &mut rows, &mut pos, &mut writer, &mut summary, progress)?;

    let make_row = |s: &Sample, answer: String, finish: Option<String>, n_tokens: Option<usize>, seed: u64| LogRow {
        schema: SCHEMA.into(),
        question_id: s.question_id.clone(),
        paraphrase_index: s.paraphrase_index,
        sample_index: s.sample_index,
        system: s.system.clone(),
        prompt: s.prompt.clone(),
        answer,
        finish,
        n_tokens,
        seed,
        generator: generator.clone(),
        judgement: None,
        config: config_json.clone(),
    };

    match &cfg.backend {
        Backend::Local { .. } => {
            // `None` when nothing is pending (nothing was loaded).
            if let Some((lm, hooks)) = &mut local {
                let params = SamplingParams {
                    temperature: cfg.sampling.temperature,
                    top_p: cfg.sampling.top_p,
                    top_k: 0,
                    max_new_tokens: cfg.sampling.max_new_tokens,
                    batch_size: cfg.sampling.batch_size,
                };
                let stop = lm.stop_ids();
                let chunk = (cfg.sampling.batch_size * 4).max(1);
                for part in pending.chunks(chunk) {
                    let mut reqs = Vec::with_capacity(part.len());
                    for s in part {
                        let mut msgs = Vec::new();
                        if let Some(sys) = &s.system {
                            msgs.push(Message::system(sys.clone()));
                        }
                        msgs.push(Message::user(s.prompt.clone()));
                        reqs.push(Request { prompt: lm.chat_prompt(&msgs)?, seed: seed_of(cfg.sampling.seed, s) });
                    }
                    let mut toks: Vec<Vec<u32>> = vec![Vec::new(); part.len()];
                    let mut new_rows = Vec::with_capacity(part.len());
                    let mut err: Option<Error> = None;
                    let gen_res = generate(
                        &lm.model,
                        &reqs,
                        &params,
                        &stop,
                        hooks.as_mut().map(|h| h as &mut dyn emlab_model::Hooks),
                        &mut |i, ev| match ev {
                            Event::Token(t) => toks[i].push(t),
                            Event::Done(fin) => {
                                let text = match lm.tokenizer.decode(&toks[i], true) {
                                    Ok(t) => t,
                                    Err(e) => {
                                        err.get_or_insert(e.into());
                                        return;
                                    }
                                };
                                let row = make_row(part[i], text, Some(finish_name(fin).into()), Some(toks[i].len()), reqs[i].seed);
                                if let Err(e) = writer.write(&row) {
                                    err.get_or_insert(e);
                                }
                                summary.generated += 1;
                                progress(Stage::Generate, summary.generated, total_gen);
                                new_rows.push(row);
                            }
                        },
                    );
                    gen_res?;
                    if let Some(e) = err {
                        return Err(e);
                    }
                    for r in &new_rows {
                        pos.insert(r.key(), rows.len());
                        rows.push(r.clone());
                    }
                    judge_batch(&jctx, new_rows, &mut rows, &mut pos, &mut writer, &mut summary, progress)?;
                }
            }
        }
        Backend::OpenAi { base_url, model_name, n_per_request, .. } => {
            let Some(client) = &server else { return Err(Error::Config("openai backend without a client".into())) };
            // Requests: consecutive pending samples of one (question, paraphrase), n at a time.
            let mut reqs: Vec<Vec<&Sample>> = Vec::new();
            for s in &pending {
                match reqs.last_mut() {
                    Some(g)
                        if g.len() < *n_per_request && g[0].question_id == s.question_id && g[0].paraphrase_index == s.paraphrase_index =>
                    {
                        g.push(s)
                    }
                    _ => reqs.push(vec![s]),
                }
            }
            let mut new_rows = Vec::new();
            let mut fatal: Option<String> = None;
            parallel_map(
                reqs,
                cfg.http.concurrency,
                |group: Vec<&Sample>| {
                    let seed = seed_of(cfg.sampling.seed, group[0]);
                    let body = chat_request(model_name, group[0], &cfg.sampling, group.len(), seed);
                    let res = client.post_json("chat/completions", &body).map_err(|e| e.to_string());
                    (group, seed, res)
                },
                |_, (group, seed, res)| {
                    let resp = match res {
                        Ok(r) => r,
                        Err(e) => {
                            fatal.get_or_insert(e);
                            return;
                        }
                    };
                    let choices = resp.get("choices").and_then(|c| c.as_array()).cloned().unwrap_or_default();
                    let mut by_index: Vec<Option<&serde_json::Value>> = vec![None; group.len()];
                    for (k, c) in choices.iter().enumerate() {
                        let i = c.get("index").and_then(|i| i.as_u64()).map(|i| i as usize).unwrap_or(k);
                        if i < group.len() {
                            by_index[i] = Some(c);
                        }
                    }
                    for (s, c) in group.iter().zip(by_index) {
                        let content = c.and_then(|c| c.get("message")).and_then(|m| m.get("content")).and_then(|t| t.as_str());
                        let Some(text) = content else {
                            summary.generation_errors += 1;
                            summary.first_error.get_or_insert_with(|| {
                                client.redact(&format!("server answer for {}/{} has no message content", s.question_id, s.paraphrase_index))
                            });
                            continue;
                        };
                        let finish = c.and_then(|c| c.get("finish_reason")).and_then(|f| f.as_str()).map(String::from);
                        let row = make_row(s, text.to_string(), finish, None, seed);
                        if let Err(e) = writer.write(&row) {
                            fatal.get_or_insert(e.to_string());
                        }
                        summary.generated += 1;
                        progress(Stage::Generate, summary.generated, total_gen);
                        new_rows.push(row);
                    }
                },
            );
            for r in &new_rows {
                pos.insert(r.key(), rows.len());
                rows.push(r.clone());
            }
            judge_batch(&jctx, new_rows, &mut rows, &mut pos, &mut writer, &mut summary, progress)?;
            if let Some(e) = fatal {
                return Err(Error::Http(format!("generation server {base_url}: {e}")));
            }
        }
    }
    drop(writer);
    compact(&cfg.out, rows, &samples)?;
    Ok(summary)
}

struct JudgeCtx<'a> {
    judge: Option<&'a (String, Judge)>,
    prompts: &'a HashMap<String, BTreeMap<String, String>>,
    config: &'a serde_json::Value,
}

/// Judges the rows of `new` that need it, writing and recording each as it completes.
fn judge_batch(
    ctx: &JudgeCtx<'_>,
    new: Vec<LogRow>,
    rows: &mut Vec<LogRow>,
    pos: &mut HashMap<Key, usize>,
    writer: &mut LogWriter,
    summary: &mut RunSummary,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<()> {
    let Some((name, j)) = ctx.judge else { return Ok(()) };
    let todo: Vec<LogRow> = new.into_iter().filter(|r| !r.is_judged() && ctx.prompts.contains_key(&r.question_id)).collect();
    let mut err = None;
    let mut done = 0;
    let total = todo.len();
    parallel_map(
        todo,
        j.concurrency(),
        |mut r: LogRow| {
            let p = &ctx.prompts[&r.question_id];
            // A row from an earlier run keeps the metrics its judgement scored (paid for).
            r.judgement = Some(j.judge_again(name, &r.prompt, &r.answer, p, r.judgement.as_ref()));
            r.config = ctx.config.clone();
            r
        },
        |_, r| {
            done += 1;
            summary.judged += 1;
            if let Some(e) = r.judgement.as_ref().and_then(|j| j.error()) {
                summary.judge_errors += 1;
                summary.first_error.get_or_insert(e);
            }
            if let Err(e) = writer.write(&r) {
                err.get_or_insert(e);
            }
            match pos.get(&r.key()) {
                Some(&i) => rows[i] = r,
                None => {
                    pos.insert(r.key(), rows.len());
                    rows.push(r);
                }
            }
            progress(Stage::Judge, done, total);
        },
    );
    err.map_or(Ok(()), Err)
}

/// Rewrites the log with one row per key: planned samples in plan order, then any other rows.
fn compact(path: &Path, rows: Vec<LogRow>, samples: &[Sample]) -> Result<()> {
    let order: HashMap<Key, usize> =
        samples.iter().enumerate().map(|(i, s)| ((s.question_id.clone(), s.paraphrase_index, s.sample_index), i)).collect();
    let mut rows = rows;
    rows.sort_by_key(|r| order.get(&r.key()).copied().unwrap_or(usize::MAX));
    write_log_atomic(path, &rows)
}

fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::Context => "context",
    }
}

/// Logs written before adapters were hashed without their base model's path
/// ([`crate::log::hash_adapter`]) record the adapter's whole-folder hash: rows whose generator
/// matches `generator` under that older hash are the same setup, and get the new hash (the log
/// rewritten atomically), so a run folder made then still resumes, also after it moved.
fn migrate_adapter_hashes(cfg: &EvalConfig, log: &mut crate::log::Log, generator: &Generator) -> Result<()> {
    let Backend::Local { adapter: Some(adapter), .. } = &cfg.backend else { return Ok(()) };
    let want = generator.identity();
    if log.rows.iter().all(|r| r.generator.identity() == want) {
        return Ok(());
    }
    let legacy = Generator { adapter_sha256: Some(crate::log::hash_path(adapter)?), ..generator.clone() }.identity();
    let mut moved = 0;
    for r in log.rows.iter_mut().filter(|r| r.generator.identity() == legacy) {
        // Only the hash changes: the rest of the record says how the row was made.
        r.generator.adapter_sha256 = generator.adapter_sha256.clone();
        moved += 1;
    }
    if moved > 0 {
        write_log_atomic(&cfg.out, &log.rows)?;
    }
    Ok(())
}

/// The identity of an intervention: its spec file's hash and its vectors file's, hashed together.
pub fn intervention_hash(spec_path: &Path) -> Result<String> {
    let spec = crate::intervention::InterventionSpec::load(spec_path)?;
    let a = crate::log::hash_path(spec_path)?;
    let b = crate::log::hash_path(&spec.vectors)?;
    use sha2::{Digest, Sha256};
    Ok(format!("{:x}", Sha256::digest(format!("{a}{b}").as_bytes())))
}

/// The chat-completions body for `n` samples of one prompt.
pub fn chat_request(model: &str, s: &Sample, sampling: &crate::config::Sampling, n: usize, seed: u64) -> serde_json::Value {
    let mut messages = Vec::new();
    if let Some(sys) = &s.system {
        messages.push(serde_json::json!({"role": "system", "content": sys}));
    }
    messages.push(serde_json::json!({"role": "user", "content": s.prompt}));
    serde_json::json!({
        "model": model,
        "messages": messages,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "n": n,
        "seed": seed,
    })
}

/// Loads a local model, applying (and merging) a PEFT adapter when given.
pub fn load_local(model: &Path, adapter: Option<&Path>, q8: bool) -> Result<Lm> {
    let mut lm = Lm::load(model, &LoadOptions::default())?;
    if let Some(a) = adapter {
        emlab_train::adapter::load_peft(&mut lm.model, a)?;
        // Merged weights decode at base-model speed.
        emlab_train::adapter::merge(&mut lm.model)?;
    }
    if q8 {
        lm.model.quantize_for_inference()?;
    }
    Ok(lm)
}

/// The generator record of a config, hashing each input file once.
pub fn generator_of(cfg: &EvalConfig) -> Result<Generator> {
    let show = |p: &Path| p.display().to_string();
    Ok(match &cfg.backend {
        Backend::Local { model, adapter, intervention, .. } => {
            let intervention_sha256 = intervention.as_deref().map(intervention_hash).transpose()?;
            Generator {
                backend: "local".into(),
                model: show(model),
                model_sha256: Some(crate::log::hash_path(model)?),
                base_url: None,
                adapter: adapter.as_deref().map(show),
                adapter_sha256: adapter.as_deref().map(crate::log::hash_adapter).transpose()?,
                intervention: intervention.as_deref().map(show),
                intervention_sha256,
                sampling: cfg.sampling.clone(),
            }
        }
        Backend::OpenAi { base_url, model_name, .. } => Generator {
            backend: "openai".into(),
            model: model_name.clone(),
            model_sha256: None,
            base_url: Some(base_url.clone()),
            adapter: None,
            adapter_sha256: None,
            intervention: None,
            intervention_sha256: None,
            sampling: cfg.sampling.clone(),
        },
    })
}

/// Re-judges every row of `log` with `judge`, writing `out` (or replacing `log`) atomically at the
/// end. Progress is kept in `<out>.partial`, so an interrupted rescore resumes where it stopped;
/// it is kept too when some judgements failed (rows written with their error), so running the
/// rescore again judges only those.
/// Judge prompts come from `questions` (default: the questions file the log's config names) or
/// `judge_prompts`.
pub fn rescore(
    log_path: &Path,
    judge: &JudgeSpec,
    http: &crate::http::HttpConfig,
    questions: Option<&Path>,
    judge_prompts: Option<&Path>,
    out: Option<&Path>,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<RunSummary> {
    let log = read_log(log_path)?;
    if log.rows.is_empty() {
        return Err(Error::File(format!("{}: no rows to rescore", log_path.display())));
    }
    let target = out.unwrap_or(log_path);
    let partial = {
        let mut s = target.as_os_str().to_owned();
        s.push(".partial");
        std::path::PathBuf::from(s)
    };
    let Some((name, j)) = Judge::from_spec(judge, http)? else {
        return Err(Error::Config("rescore needs a judge".into()));
    };
    // Judge prompts per question.
    let mut prompts: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    if j.needs_prompts() {
        let qpath = match questions {
            Some(q) => Some(q.to_path_buf()),
            None => log.rows[0].config.get("questions").and_then(|q| q.as_str()).map(std::path::PathBuf::from),
        };
        let override_prompts = judge_prompts.map(load_judge_prompts).transpose()?;
        if let Some(q) = qpath.filter(|q| q.exists()) {
            for q in load_questions(&q)? {
                prompts.insert(q.id.clone(), q.judge_prompts.clone());
            }
        }
        if let Some(p) = override_prompts {
            let keep: BTreeMap<String, String> = p.into_iter().filter(|(k, _)| k == "aligned" || k == "coherent").collect();
            for r in &log.rows {
                prompts.insert(r.question_id.clone(), keep.clone());
            }
        }
        if let Some(r) = log.rows.iter().find(|r| !prompts.get(&r.question_id).is_some_and(|p| p.contains_key("aligned"))) {
            return Err(Error::Config(format!("no judge prompts for question {:?} (give --questions or --judge-prompts)", r.question_id)));
        }
    }
    let done = read_log(&partial)?;
    let done_idx = done.index();
    let mut summary = RunSummary {
        planned: log.rows.len(),
        reused: 0,
        generated: 0,
        judged: 0,
        judge_errors: 0,
        generation_errors: 0,
        first_error: None,
    };
    let mut result: Vec<Option<LogRow>> = vec![None; log.rows.len()];
    let mut todo = Vec::new();
    for (i, r) in log.rows.iter().enumerate() {
        match done_idx.get(&r.key()).map(|&k| &done.rows[k]) {
            Some(d) if d.is_judged() && d.judgement.as_ref().is_some_and(|x| x.judge == name) && d.answer == r.answer => {
                result[i] = Some(d.clone());
                summary.reused += 1;
            }
            // Judged in an earlier try, in part: the metrics scored then are kept.
            Some(d) if d.answer == r.answer => todo.push((i, r.clone(), d.judgement.clone())),
            _ => todo.push((i, r.clone(), None)),
        }
    }
    let mut writer = LogWriter::append(&partial)?;
    let total = todo.len();
    let mut err = None;
    let empty = BTreeMap::new();
    parallel_map(
        todo,
        j.concurrency(),
        |(i, mut r, earlier): (usize, LogRow, Option<Judgement>)| {
            let p = prompts.get(&r.question_id).unwrap_or(&empty);
            r.judgement = Some(j.judge_again(&name, &r.prompt, &r.answer, p, earlier.as_ref()));
            if let Some(c) = r.config.as_object_mut() {
                c.insert("judge".into(), serde_json::to_value(judge).unwrap_or_default());
            }
            (i, r)
        },
        |_, (i, r)| {
            summary.judged += 1;
            if let Some(e) = r.judgement.as_ref().and_then(|j| j.error()) {
                summary.judge_errors += 1;
                summary.first_error.get_or_insert(e);
            }
            if let Err(e) = writer.write(&r) {
                err.get_or_insert(e);
            }
            result[i] = Some(r);
            progress(Stage::Judge, summary.judged, total);
        },
    );
    if let Some(e) = err {
        return Err(e);
    }
    drop(writer);
    let rows: Vec<LogRow> = result.into_iter().flatten().collect();
    write_log_atomic(target, &rows)?;
    // After judge errors the progress file stays: a re-run reuses every judgement in it and
    // asks the judge again only about the rows that failed (the rewritten target alone would
    // make it re-judge everything, paying twice). See [`RunSummary::complete`].
    if summary.judge_errors == 0 {
        std::fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    Ok(summary)
}
