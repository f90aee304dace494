"""llama.cpp side of bench_generate.sh (llama-cpp-python, built from source by setup-llama.sh).

    bench/generate/.venv-llama/bin/python bench/generate/llama_generate.py MODEL.gguf PROMPT.json \
        --mode=completion|single|batched [--kv=unified|split] [--threads 2]

PROMPT.json holds the chat-rendered prompt text and its token ids (written by hf_generate.py
--render-prompt from the tokenizer's own chat template); this script checks that llama.cpp's
tokenizer gives the same ids for that text, then feeds those ids, so every side sees one prompt.

Modes (one JSON line each, shaped like emlab's `bench_generate` example):
- completion: the high-level `Llama.create_completion`, temperature 0, 128 new tokens; EOS (every
  end-of-generation token) gets a -inf logit bias so the run cannot stop early. llama-cpp-python
  applies `logit_bias` through a Python logits callback, which costs time per token; that cost is
  part of what a user of this API pays, so it is reported as is, and `single` measures without it.
- single: the low-level API, what llama.cpp's own tools do: a native sampler chain
  (logit_bias(EOG -> -inf) + greedy), one `llama_decode` per new token, 128 new tokens.
- batched: the low-level `llama_batch` API as in llama.cpp's `llama-batched` example: 64 sequences
  (n_seq_max=64) advanced together, one `llama_decode` per step holding one token per sequence,
  200 new tokens each, each sequence with its own native chain logit_bias(EOG -> -inf) + temp 1 +
  dist(seed i) (plain sampling: no top-k / top-p). `--kv=unified` is llama-batched's layout: one
  KV buffer shared by all sequences and the prompt decoded once with all 64 sequence ids;
  `--kv=split` gives every sequence its own KV stream and decodes 64 copies of the prompt (the same
  prefill work as the emlab and transformers runs, which prefill a batch of 64 prompts).
Timed region: from the first prompt decode to the last sampled token, after an untimed warm-up.
"""
import argparse
import ctypes
import json
import sys
import time

N_SINGLE = 128
N_SAMPLES, N_BATCHED = 64, 200


def eog_ids(lc, vocab):
    return [t for t in range(lc.llama_vocab_n_tokens(vocab)) if lc.llama_vocab_is_eog(vocab, t)]


def bias_sampler(lc, vocab, banned):
    arr = (lc.llama_logit_bias * len(banned))(*[lc.llama_logit_bias(t, float("-inf")) for t in banned])
    return lc.llama_sampler_init_logit_bias(lc.llama_vocab_n_tokens(vocab), len(banned), arr)


def chain(lc, parts):
    s = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    for p in parts:
        lc.llama_sampler_chain_add(s, p)
    return s


class Batch:
    """A llama_batch filled from Python: add(token, pos, seq_ids, want_logits)."""

    def __init__(self, lc, cap, n_seq):
        self.lc, self.b = lc, lc.llama_batch_init(cap, 0, n_seq)
        self.cap, self.n_seq, self.n = cap, n_seq, 0

    def clear(self):
        self.n = 0

    def add(self, tok, pos, seqs, logits):
        if self.n >= self.cap or len(seqs) > self.n_seq:
            raise ValueError(f"llama batch overflow: {self.n + 1} tokens / {len(seqs)} seq ids")
        b, k = self.b, self.n
        b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = tok, pos, len(seqs), int(logits)
        for j, s in enumerate(seqs):
            b.seq_id[k][j] = s
        self.n += 1
        return k

    def decode(self, ctx):
        self.b.n_tokens = self.n
        rc = self.lc.llama_decode(ctx, self.b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc} ({self.n} tokens)")


def make_ctx(lc, model, threads, n_ctx, n_batch, n_seq, unified):
    p = lc.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch = n_ctx, n_batch, min(n_batch, 512)
    p.n_seq_max, p.kv_unified = n_seq, unified
    p.n_threads = p.n_threads_batch = threads
    p.no_perf = False
    ctx = lc.llama_init_from_model(model, p)
    if not ctx:
        raise RuntimeError(f"llama_init_from_model failed (n_ctx {n_ctx}, n_seq_max {n_seq})")
    return ctx


def run_single(lc, model, vocab, ids, threads):
    ctx = make_ctx(lc, model, threads, 512, 512, 1, True)
    mem = lc.llama_get_memory(ctx)
    smpl = chain(lc, [bias_sampler(lc, vocab, eog_ids(lc, vocab)), lc.llama_sampler_init_greedy()])
    batch = Batch(lc, 512, 1)

    def once(n_new):
        lc.llama_memory_clear(mem, True)
        lc.llama_sampler_reset(smpl)
        batch.clear()
        for i, t in enumerate(ids):
            batch.add(t, i, [0], i == len(ids) - 1)
        batch.decode(ctx)
        out, pos, idx = [], len(ids), batch.n - 1
        while len(out) < n_new:
            tok = lc.llama_sampler_sample(smpl, ctx, idx)
            out.append(tok)
            if len(out) == n_new:
                break
            batch.clear()
            idx = batch.add(tok, pos, [0], True)
            batch.decode(ctx)
            pos += 1
        return out

    once(8)  # warm-up
    t = time.perf_counter()
    out = once(N_SINGLE)
    secs = time.perf_counter() - t
    lc.llama_sampler_free(smpl)
    lc.llama_free(ctx)
    return {"bench": "single_stream_decode", "api": "low-level llama_decode + native sampler chain",
            "new_tokens": len(out), "seconds": secs, "tokens_per_s": len(out) / secs,
            "text_head_ids": out[:24]}


def run_batched(lc, model, vocab, ids, threads, kv):
    unified = kv == "unified"
    n_p = len(ids)
    if unified:
        n_ctx, n_batch = n_p + N_SAMPLES * N_BATCHED, max(n_p, N_SAMPLES)
    else:
        n_ctx, n_batch = N_SAMPLES * (n_p + N_BATCHED + 8), max(n_p * N_SAMPLES, N_SAMPLES)
    ctx = make_ctx(lc, model, threads, n_ctx, n_batch, N_SAMPLES, unified)
    mem = lc.llama_get_memory(ctx)
    banned = eog_ids(lc, vocab)
    batch = Batch(lc, n_batch, N_SAMPLES)

    def once(n_new, seed0):
        lc.llama_memory_clear(mem, True)
        smpls = [chain(lc, [bias_sampler(lc, vocab, banned), lc.llama_sampler_init_temp(1.0),
                            lc.llama_sampler_init_dist(seed0 + i)]) for i in range(N_SAMPLES)]
        batch.clear()
        if unified:
            # llama-batched: the prompt once, tagged with every sequence id.
            allseq = list(range(N_SAMPLES))
            for i, t in enumerate(ids):
                batch.add(t, i, allseq, i == n_p - 1)
            i_batch = [batch.n - 1] * N_SAMPLES
        else:
            i_batch = []
            for s in range(N_SAMPLES):
                for i, t in enumerate(ids):
                    k = batch.add(t, i, [s], i == n_p - 1)
                i_batch.append(k)
        batch.decode(ctx)
        outs = [[] for _ in range(N_SAMPLES)]
        pos = n_p
        while True:
            toks = [lc.llama_sampler_sample(smpls[s], ctx, i_batch[s]) for s in range(N_SAMPLES)]
            for s, tok in enumerate(toks):
                outs[s].append(tok)
            if len(outs[0]) == n_new:
                break
            batch.clear()
            i_batch = [batch.add(tok, pos, [s], True) for s, tok in enumerate(toks)]
            batch.decode(ctx)
            pos += 1
        for s in smpls:
            lc.llama_sampler_free(s)
        return outs

    once(2, 10_000)  # warm-up
    t = time.perf_counter()
    outs = once(N_BATCHED, 0)
    secs = time.perf_counter() - t
    lc.llama_free(ctx)
    total = sum(len(o) for o in outs)
    eog_seen = sum(1 for o in outs for x in o if x in set(banned))
    return {"bench": "batched_sampling", "api": "low-level llama_batch, n_seq_max 64", "kv": kv,
            "samples": len(outs), "new_tokens_total": total, "distinct_samples": len({tuple(o) for o in outs}),
            "eog_tokens_sampled": eog_seen, "seconds": secs, "tokens_per_s": total / secs}


def run_completion(model_path, text, ids, threads):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model_path, n_ctx=512, n_threads=threads, n_threads_batch=threads,
                          seed=0, verbose=False)
    lc = llama_cpp.llama_cpp
    vocab = lc.llama_model_get_vocab(llm.model)
    bias = {t: float("-inf") for t in eog_ids(lc, vocab)}
    kw = dict(temperature=0.0, logit_bias=bias, repeat_penalty=1.0)
    llm.create_completion(ids, max_tokens=8, **kw)  # warm-up
    llm.reset()  # no prompt-cache reuse: the timed call prefills like every other side
    t = time.perf_counter()
    r = llm.create_completion(ids, max_tokens=N_SINGLE, **kw)
    secs = time.perf_counter() - t
    n = r["usage"]["completion_tokens"]
    return {"bench": "single_stream_decode", "api": "Llama.create_completion (logit_bias via Python callback)",
            "new_tokens": n, "prompt_tokens_seen": r["usage"]["prompt_tokens"], "seconds": secs,
            "tokens_per_s": n / secs, "text_head": r["choices"][0]["text"][:120]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompt_json")
    ap.add_argument("--mode", choices=["completion", "single", "batched"], required=True)
    ap.add_argument("--kv", choices=["unified", "split"], default="unified")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    with open(a.prompt_json) as fh:
        pr = json.load(fh)
    text, ids = pr["text"], pr["ids"]

    import llama_cpp
    from importlib.metadata import version

    lc = llama_cpp.llama_cpp
    lc.llama_backend_init()
    lc.llama_log_set(_quiet(lc), ctypes.c_void_p())
    common = {"impl": "llama.cpp", "llama_cpp_python": version("llama_cpp_python"), "threads": a.threads,
              "prompt_tokens": len(ids)}

    mp = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        sys.exit(f"llama_generate.py: {a.model}: llama.cpp could not load the model")
    vocab = lc.llama_model_get_vocab(model)
    # The same prompt on every side: llama.cpp's own tokenization of the rendered text must
    # equal the reference ids (special tokens parsed, no extra BOS).
    buf = (lc.llama_token * 4096)()
    n = lc.llama_tokenize(vocab, text.encode(), len(text.encode()), buf, 4096, False, True)
    own = list(buf[:n])
    common["tokenization_matches"] = own == ids
    if own != ids:
        print(f"llama_generate.py: warning: llama.cpp tokenizes the prompt to {len(own)} ids, "
              f"reference {len(ids)}; feeding the reference ids", file=sys.stderr)

    if a.mode == "completion":
        lc.llama_model_free(model)
        res = run_completion(a.model, text, ids, a.threads)
    elif a.mode == "single":
        res = run_single(lc, model, vocab, ids, a.threads)
    else:
        res = run_batched(lc, model, vocab, ids, a.threads, a.kv)
    print(json.dumps({**common, **res}), flush=True)


_LOG_CB = None


def _quiet(lc):
    """A log callback that drops llama.cpp's info chatter but keeps warnings and errors."""
    global _LOG_CB

    def cb(level, text, _user):
        if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
            sys.stderr.write(text.decode(errors="replace"))

    _LOG_CB = lc.llama_log_callback(cb)
    return _LOG_CB


if __name__ == "__main__":
    main()
