"""Summary table for bench_generate.sh: tokens/s, ratios, the issue's goals, and the bounds.

    bench/.venv/bin/python bench/generate/summarize.py RESULTS.jsonl MODEL_INFO.json MODEL.gguf

Bounds (all from numbers measured in the same run, see machine_bounds.py):
- compute: FLOPs per new token = `flops_per_token` from `emlab model info --json` (2 x parameters,
  body + the tied LM head), plus attention (4 x context x heads x head_dim per layer, at the mean
  context of the run); bound = best measured f32 2048^3 matmul rate / that.
- memory (single stream): every weight is read once per token; bytes per token = f32: 4 x params;
  emlab --q8: int8 + one f32 scale per 32 (36 bytes / 32 values); llama.cpp: the GGUF's tensor
  bytes as stored (Q4_1 body + Q8_0 embeddings, which are also the LM head); bound = best measured
  read bandwidth / that. KV-cache reads are left out (listed separately: they are small here).
"""
import json
import sys


def main():
    res_path, info_path, model_path = sys.argv[1:4]
    rows = [json.loads(l) for l in open(res_path) if l.startswith("{")]
    info = json.load(open(info_path))
    cfg = info["config"]
    params = info["parameters"]
    fpt = info["flops_per_token"]
    by = {r["label"]: r for r in rows}

    bounds = [r for r in rows if r.get("bench") == "bounds"]
    mm = max(b["matmul_gflops"] for b in bounds) * 1e9
    mm8 = max((b.get("int8_matmul_gops") or 0) for b in bounds) * 1e9 or None
    bw = max(max(b["torch_sum_read_gbs"], b["torch_copy_gbs"], b["numpy_copy_gbs"]) for b in bounds) * 1e9

    try:
        import gguf
        gguf_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(model_path).tensors)
    except Exception as e:  # the table still prints; the llama.cpp memory bound is then missing
        print(f"<!-- gguf tensor bytes unavailable: {e} -->")
        gguf_bytes = None

    layers, heads, hd, kvh = cfg["num_layers"], cfg["num_heads"], cfg["head_dim"], cfg["num_kv_heads"]
    prompt = next((r["prompt_tokens"] for r in rows if "prompt_tokens" in r), 0)

    def attn_flops(new):
        ctx = prompt + new / 2  # mean context over the generated tokens
        return layers * 4 * ctx * heads * hd

    f_single = fpt + attn_flops(128)
    f_batched = fpt + attn_flops(200)
    bytes_tok = {"f32": 4 * params, "q8": params * 36 / 32, "gguf": gguf_bytes}
    kv_bytes = 2 * layers * kvh * hd * 4 * (prompt + 64)  # f32 K+V read per token, mean context

    def mem_bound(kind):
        b = bytes_tok[kind]
        return bw / b if b else None

    single = [
        ("emlab (f32 weights)", "emlab-single-f32", mem_bound("f32")),
        ("emlab --q8 (int8 weights)", "emlab-single-q8", mem_bound("q8")),
        ("llama.cpp, low-level llama_decode, OMP_WAIT_POLICY=passive", "llama-single-lowlevel", mem_bound("gguf")),
        ("llama.cpp, low-level llama_decode, default (spinning) waits", "llama-single-lowlevel-spin", mem_bound("gguf")),
        ("llama.cpp, create_completion, OMP_WAIT_POLICY=passive", "llama-single-completion", mem_bound("gguf")),
        ("llama.cpp AVX-512 build, low-level llama_decode, default (spinning) waits", "llama512-single-lowlevel-spin", mem_bound("gguf")),
        ("transformers, dynamic cache", "hf-single-dynamic", mem_bound("f32")),
        ("transformers, static cache", "hf-single-static", mem_bound("f32")),
        ("transformers, static cache, OMP_WAIT_POLICY=passive", "hf-single-static-passive", mem_bound("f32")),
    ]
    batched = [
        ("emlab (f32 weights)", "emlab-batched-f32"),
        ("emlab --q8 (int8 weights and inputs, VNNI)", "emlab-batched-q8"),
        ("llama.cpp, llama_batch, unified KV (llama-batched layout)", "llama-batched-unified"),
        ("llama.cpp, llama_batch, one KV stream per sequence", "llama-batched-split"),
        ("llama.cpp AVX-512 build (VNNI, BF16), one KV stream per sequence", "llama512-batched-split"),
        ("transformers, static cache", "hf-batched-static"),
        ("transformers, dynamic cache", "hf-batched-dynamic"),
        ("transformers, static cache, OMP_WAIT_POLICY=passive", "hf-batched-static-passive"),
    ]

    def tps(label):
        r = by.get(label)
        return r["tokens_per_s"] if r else None

    def fmt(x, nd=1):
        return "n/a" if x is None else f"{x:.{nd}f}"

    out = []
    out.append(f"Bounds inputs: {params / 1e6:.1f} M parameters, {fpt / 1e6:.1f} MFLOP/token (2 x params) "
               f"+ attention {attn_flops(128) / 1e6:.1f} (single) / {attn_flops(200) / 1e6:.1f} (batched) MFLOP/token; "
               f"best f32 2048^3 matmul {mm / 1e9:.0f} GFLOP/s; best bandwidth {bw / 1e9:.1f} GB/s; "
               f"weights read per token: f32 {bytes_tok['f32'] / 1e6:.0f} MB, int8 {bytes_tok['q8'] / 1e6:.0f} MB, "
               f"GGUF as stored {fmt(gguf_bytes and gguf_bytes / 1e6, 0)} MB; f32 KV cache read per token at the mean "
               f"context ~{kv_bytes / 1e6:.1f} MB (not in the bound).")
    for b in bounds:
        out.append(f"- {b['label']}: matmul {b['matmul_gflops']:.0f} GFLOP/s, int8 matmul {fmt(b.get('int8_matmul_gops'), 0)} GOP/s, torch sum (read) {b['torch_sum_read_gbs']:.1f} GB/s, "
                   f"torch copy {b['torch_copy_gbs']:.1f} GB/s, numpy copy {b['numpy_copy_gbs']:.1f} GB/s "
                   f"(load {b['load_before']} -> {b['load_after']})")
    out.append("")
    out.append(f"Compute bound: single stream {mm / f_single:.0f} tokens/s, batched {mm / f_batched:.0f} tokens/s "
               f"(f32); batched at the int8 matmul rate {fmt(mm8 and mm8 / f_batched, 0)} tokens/s (the bound of `--q8`; "
               "the % column of its row uses it).")
    out.append("")
    out.append("| benchmark | implementation | tokens/s | new tokens | seconds | load before -> after | memory bound tok/s | % of memory bound | % of compute bound |")
    out.append("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for name, label, mb in single:
        r = by.get(label)
        if not r:
            out.append(f"| single stream | {name} | not run | | | | | | |")
            continue
        t = r["tokens_per_s"]
        out.append(f"| single stream | {name} | {t:.1f} | {r['new_tokens']} | {r['seconds']:.2f} | "
                   f"{r['load_before']} -> {r['load_after']} | {fmt(mb, 0)} | {fmt(mb and 100 * t / mb, 0)}% | "
                   f"{100 * t / (mm / f_single):.0f}% |")
    for name, label in batched:
        r = by.get(label)
        if not r:
            out.append(f"| batched 64 x 200 | {name} | not run | | | | | | |")
            continue
        t = r["tokens_per_s"]
        rate = mm8 if (label == "emlab-batched-q8" and mm8) else mm
        out.append(f"| batched 64 x 200 | {name} | {t:.1f} | {r['new_tokens_total']} | {r['seconds']:.2f} | "
                   f"{r['load_before']} -> {r['load_after']} | | | {100 * t / (rate / f_batched):.0f}% |")
    out.append("")

    def best(labels):
        vals = [(tps(l), l) for l in labels if tps(l) is not None]
        return max(vals) if vals else (None, None)

    e_single, e_single_l = best(["emlab-single-f32", "emlab-single-q8"])
    l_single, l_single_l = best(["llama-single-lowlevel", "llama-single-lowlevel-spin", "llama-single-completion", "llama512-single-lowlevel-spin"])
    e_b, e_b_l = best(["emlab-batched-f32", "emlab-batched-q8"])
    hf_b, hf_b_l = best(["hf-batched-static", "hf-batched-dynamic", "hf-batched-static-passive"])
    l_b, l_b_l = best(["llama-batched-unified", "llama-batched-split", "llama512-batched-split"])

    def x(v):
        return "n/a" if v is None else f"{v:.2f}x"

    def ratio(a, b):
        return None if a is None or b is None else a / b

    out.append("| ratio | value | goal | met |")
    out.append("|---|---:|---:|---|")
    goals = [
        (f"batched: emlab best ({e_b_l}) / transformers (faster: {hf_b_l})", ratio(e_b, hf_b), 3.0),
        (f"batched: emlab best ({e_b_l}) / llama.cpp (faster: {l_b_l})", ratio(e_b, l_b), 1.0),
        (f"single: emlab best ({e_single_l}) / llama.cpp (faster: {l_single_l})", ratio(e_single, l_single), 0.7),
    ]
    for name, v, g in goals:
        out.append(f"| {name} | {x(v)} | >= {g}x | {'n/a' if v is None else ('yes' if v >= g else 'NO')} |")
    extra = [
        ("single: emlab f32 / llama.cpp (faster)", ratio(tps("emlab-single-f32"), l_single)),
        ("single: emlab --q8 / llama.cpp (faster)", ratio(tps("emlab-single-q8"), l_single)),
        ("single: emlab best / transformers (faster)", ratio(e_single, best(["hf-single-dynamic", "hf-single-static", "hf-single-static-passive"])[0])),
        ("batched: emlab f32 / transformers (faster)", ratio(tps("emlab-batched-f32"), hf_b)),
        ("batched: emlab --q8 / transformers (faster)", ratio(tps("emlab-batched-q8"), hf_b)),
        ("batched: emlab --q8 / llama.cpp (faster)", ratio(tps("emlab-batched-q8"), l_b)),
    ]
    for name, v in extra:
        out.append(f"| {name} | {x(v)} | | |")
    checks = []
    for r in rows:
        if r.get("bench") == "single_stream_decode" and r.get("new_tokens") != 128:
            checks.append(f"{r['label']}: {r.get('new_tokens')} new tokens, not 128")
        if r.get("bench") == "batched_sampling" and r.get("new_tokens_total") != 64 * 200:
            checks.append(f"{r['label']}: {r.get('new_tokens_total')} new tokens, not 12800")
        if r.get("distinct_samples") is not None and r["distinct_samples"] < 60:
            checks.append(f"{r['label']}: only {r['distinct_samples']} distinct samples of 64")
        if r.get("tokenization_matches") is False:
            checks.append(f"{r['label']}: llama.cpp tokenizes the prompt differently (reference ids were fed)")
        if r.get("prompt_tokens") not in (None, prompt):
            checks.append(f"{r['label']}: prompt of {r['prompt_tokens']} tokens, others {prompt}")
    out.append("")
    out.append("Checks: " + ("all runs produced exactly the requested tokens, same prompt length "
                             f"({prompt} tokens) everywhere." if not checks else "; ".join(checks)))
    print("\n".join(out))


if __name__ == "__main__":
    main()
