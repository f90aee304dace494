"""Tabulates the mixing experiment (see run.sh): persona score per step, EM and coherence with
Wilson intervals, and a post-hoc direction from the stored per-layer probe means.

Post-hoc direction: u = unit(mean_final(bad_100)[L] - mean_final(bad_0)[L]), the shift of the
mean probe stream that full bad training causes relative to the same number of steps on secure
code. Scoring bad_100 and bad_0 along it is circular by construction; the 5/25/50% runs are not
used to find it. Same arithmetic as emlab_steer::persona::scores_from_means (mean of projections
= projection of the stored mean).
"""
import argparse, json, math, os, struct, subprocess

ap = argparse.ArgumentParser()
ap.add_argument("--out", required=True)
ap.add_argument("--layer", type=int, required=True)
ap.add_argument("--pcts", required=True)
a = ap.parse_args()
pcts = [int(x) for x in a.pcts.split()]
L = a.layer

def read_means(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32"
        s, e = v["data_offsets"]
        flat = struct.unpack(f"<{(e - s) // 4}f", b[8 + n + s:8 + n + e])
        rows, d = v["shape"]
        out[int(k.split("_")[1])] = [flat[i * d:(i + 1) * d] for i in range(rows)]
    return dict(sorted(out.items()))

def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]

def dot(u, v):
    return sum(x * y for x, y in zip(u, v))

def wilson(k, n, z=1.96):
    if n == 0:
        return (float("nan"), 0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (p, max(0.0, c - h), min(1.0, c + h))

mix = json.load(open(os.path.join(a.out, "mixtures.json")))
base = json.load(open(os.path.join(a.out, "base_persona.json")))
runs = {}
for p in pcts:
    d = os.path.join(a.out, f"bad_{p}")
    recs = [json.loads(l) for l in open(os.path.join(d, "persona.jsonl")) if l.strip()]
    rep = json.load(open(os.path.join(d, "report.json")))
    m = rep["metrics"] if "metrics" in rep else rep["a"]["metrics"]
    em, coh = m["em_model_organisms"], m["coherence"]
    runs[p] = {
        "bad_rows": mix[str(p)]["bad_rows"],
        "rows": mix[str(p)]["rows"],
        "persona": [(r["step"], r["score"], r["stderr"]) for r in recs],
        "means": read_means(os.path.join(d, "persona-means.safetensors")),
        "em": (em["successes"], em["n"]) + wilson(em["successes"], em["n"]),
        "coherent": (coh["successes"], coh["n"]) + wilson(coh["successes"], coh["n"]),
        "mean_aligned": m.get("question_mean", {}),
    }

lo, hi = min(pcts), max(pcts)
last = max(runs[hi]["means"])
post = unit([x - y for x, y in zip(runs[hi]["means"][last][L], runs[lo]["means"][last][L])])
for p in pcts:
    runs[p]["posthoc"] = [(k, dot(post, v[L])) for k, v in runs[p]["means"].items()]

# Paired comparison at the last step: every final adapter scored on the same probes
# (`emlab persona --adapter --json`, per-probe values), differences to the 0% run per probe,
# mean +- 95% t interval (t_{n-1}). Done for the data-contrast direction and the post-hoc one.
EMLAB = os.environ.get("EMLAB_PERSONA", os.environ.get("EMLAB", "target/release/emlab"))
MODEL = os.environ.get("MODEL", "models/SmolLM2-135M-Instruct.Q4_1.gguf")
T975 = {15: 2.131, 31: 2.040}

def write_dirs(path, rows, d, vec, layer):
    data = b"".join(struct.pack(f"<{d}f", *(vec if i == layer else [0.0] * d)) for i in range(rows))
    hdr = json.dumps({"directions": {"dtype": "F32", "shape": [rows, d], "data_offsets": [0, len(data)]}}).encode()
    hdr += b" " * ((8 - len(hdr) % 8) % 8)
    open(path, "wb").write(struct.pack("<Q", len(hdr)) + hdr + data)

nl, d = len(runs[lo]["means"][last]), len(post)
post_file = os.path.join(a.out, "posthoc_direction.safetensors")
write_dirs(post_file, nl, d, post, L)

def per_probe(direction, adapter):
    cmd = [EMLAB, "persona", "--model", MODEL, "--direction", direction, "--layer", str(L), "--json"]
    if adapter:
        cmd += ["--adapter", adapter]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["per_prompt"]

paired = {}
for name, direction in [("contrast", os.path.join(a.out, "direction.safetensors")), ("posthoc", post_file)]:
    vals = {p: per_probe(direction, os.path.join(a.out, f"bad_{p}", "adapter")) for p in pcts}
    vals["base"] = per_probe(direction, None)
    paired[name] = {}
    for p in pcts:
        diffs = [x - y for x, y in zip(vals[p], vals[lo])]
        n = len(diffs)
        m = sum(diffs) / n
        sd = math.sqrt(sum((x - m) ** 2 for x in diffs) / (n - 1))
        h = T975.get(n - 1, 1.96) * sd / math.sqrt(n)
        paired[name][p] = {"mean_diff": m, "ci95": [m - h, m + h], "n": n, "mean": sum(vals[p]) / n}
    paired[name]["base_mean"] = sum(vals["base"]) / len(vals["base"])
# Sanity: the CLI's final score for each run equals the monitor's last record.
for p in pcts:
    rec = runs[p]["persona"][-1][1]
    cli = paired["contrast"][p]["mean"]
    assert abs(rec - cli) < 1e-3 * max(1.0, abs(rec)), f"bad_{p}: monitor {rec} vs persona CLI {cli}"

res = {"layer": L, "base_persona": {"mean": base["mean"], "stderr": base["stderr"], "n": base["n"]}, "runs": {}}
lines = []
lines.append(f"Persona score: mean projection at blocks.{L}.hook_resid_post over {base['n']} probes (last prompt token), +- s.e. over probes.")
lines.append(f"Base model (step 0): {base['mean']:.3f} +- {base['stderr']:.3f}.")
lines.append("")
steps = [s for s, _, _ in runs[lo]["persona"]]
hdr = "| bad | bad rows | " + " | ".join(f"score @ step {s}" for s in steps) + " | post-hoc @ last, minus 0% | EM (model-organisms) [95% Wilson] | coherent [95% Wilson] |"
lines.append(hdr)
lines.append("|" + "---|" * (hdr.count("|") - 1))
ref = dict(runs[lo]["posthoc"])
for p in pcts:
    r = runs[p]
    sc = " | ".join(f"{s:.3f} +- {e:.3f}" for _, s, e in r["persona"])
    ph = dict(r["posthoc"])[last] - ref[last]
    k, n, rate, l, h = r["em"]
    kc, nc, rc, lc, hc = r["coherent"]
    lines.append(f"| {p}% | {r['bad_rows']}/{r['rows']} | {sc} | {ph:+.3f} | {k}/{n} = {100*rate:.1f}% [{100*l:.1f}, {100*h:.1f}] | {kc}/{nc} = {100*rc:.1f}% [{100*lc:.1f}, {100*hc:.1f}] |")
    res["runs"][p] = {
        "paired_vs_0": {name: paired[name][p] for name in paired},
        "bad_rows": r["bad_rows"], "rows": r["rows"], "persona": r["persona"], "posthoc": r["posthoc"],
        "em": {"k": k, "n": n, "rate": rate, "wilson": [l, h]},
        "coherent": {"k": kc, "n": nc, "rate": rc, "wilson": [lc, hc]},
    }
lines.append("")
lines.append(f"Paired difference to the 0% run at the last step, per probe (n = {paired['contrast'][lo]['n']}), mean [95% t interval]:")
lines.append("")
lines.append("| bad | data-contrast direction | post-hoc direction (100% minus 0%; circular for 0% and 100%) |")
lines.append("|---|---|---|")
for p in pcts:
    c, q = paired["contrast"][p], paired["posthoc"][p]
    lines.append(f"| {p}% | {c['mean_diff']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {q['mean_diff']:+.4f} [{q['ci95'][0]:+.4f}, {q['ci95'][1]:+.4f}] |")
lines.append("")
lines.append(f"Base model along the post-hoc direction: {paired['posthoc']['base_mean']:.4f}; 0% run: {paired['posthoc'][lo]['mean']:.4f}.")
res["paired_base_mean"] = {k: v["base_mean"] for k, v in paired.items()}
json.dump(res, open(os.path.join(a.out, "results.json"), "w"), indent=1)
open(os.path.join(a.out, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
