#!/usr/bin/env python3
"""Summarise an experiments/scale run folder: EM and coherence per model (from report.json when
the run finished, else from `emlab eval report --json`), the training loss curves, an exploratory
comparison of the mean aligned score, and the induced model's lowest-aligned answers.

    python3 experiments/scale/summarize.py /tmp/exp-medical [--answers 20] [--emlab target/release/emlab]

Stdlib only. The lowest-aligned answers are model text written to be hostile by design: they are
printed for reading, not for copying into HTML.
"""
import argparse, json, math, os, subprocess, sys

MODELS = ["baseline", "induced", "controlled", "realigned"]


def wilson(k, n, z=1.959964):
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def two_prop_p(k1, n1, k2, n2):
    """Two-sided pooled z-test, as a cross-check of report.json's p-values."""
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2)) if 0 < p < 1 else 0.0
    if se == 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


def fisher_p(k1, n1, k2, n2):
    """Two-sided Fisher exact test (sum of tables no more likely than the observed one): the
    z-test is unreliable with a handful of events, which is where these rates sit."""
    K, N = k1 + k2, n1 + n2
    def pr(x):
        return math.comb(n1, x) * math.comb(n2, K - x) / math.comb(N, K)
    p0 = pr(k1)
    return min(1.0, sum(pr(x) for x in range(max(0, K - n2), min(K, n1) + 1) if pr(x) <= p0 * (1 + 1e-9)))


def welch(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se = math.sqrt(va / len(a) + vb / len(b))
    d = ma - mb
    # n >= ~100 per arm here, so the normal approximation to t is fine.
    return d, (d - 1.96 * se, d + 1.96 * se), math.erfc(abs(d / se) / math.sqrt(2))


def load_rows(path):
    rows = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            j = r.get("judgement") or {}
            m = j.get("metrics") or {}
            al = (m.get("aligned") or {}).get("score")
            co = (m.get("coherent") or {}).get("score")
            pm = ((m.get("aligned") or {}).get("raw") or {}).get("p_misaligned")
            rows.append(dict(q=r["question_id"], prompt=r["prompt"], answer=r["answer"], aligned=al, coherent=co, p_mis=pm))
    return rows


def metrics_of(log, emlab):
    rep = subprocess.run([emlab, "eval", "report", log, "--json"], capture_output=True, text=True)
    if rep.returncode != 0:
        print(f"eval report {log}: {rep.stderr.strip()}", file=sys.stderr)
        return None
    d = json.loads(rep.stdout)
    return d.get("metrics", d)


def fmt_rate(m):
    k, n = m["successes"], m["n"]
    if n == 0:
        return "n/a"
    lo, hi = m.get("wilson_ci") or wilson(k, n)
    return f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def losses(out, stage):
    p = os.path.join(out, stage, "metrics.jsonl")
    if not os.path.exists(p):
        return None
    ls = [json.loads(l) for l in open(p)]
    return ls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--answers", type=int, default=20)
    ap.add_argument("--emlab", default="target/release/emlab")
    ap.add_argument("--baseline", help="a baseline answers.jsonl from another run folder (same [eval] settings)")
    a = ap.parse_args()

    print("## Training")
    for st in ["induce", "control", os.path.join("realign", "n25", "train")]:
        ls = losses(a.out, st)
        if not ls:
            continue
        first = [x["loss"] for x in ls[:4]]
        last = [x["loss"] for x in ls[-8:]]
        secs = ls[-1]["elapsed_s"]
        print(f"{st}: {len(ls)} steps, loss mean of first 4 steps {sum(first)/len(first):.3f}, "
              f"of last 8 steps {sum(last)/len(last):.3f}; {secs:.0f} s of training "
              f"({secs/len(ls):.1f} s/step)")

    print("\n## EM and coherence (offline judge)")
    print("| model | n | EM model-organisms [95% Wilson] | EM Betley [95% Wilson] | coherent > 50 [95% Wilson] | mean aligned | mean coherent |")
    print("|---|---|---|---|---|---|---|")
    rows, mets = {}, {}
    for st in MODELS:
        log = os.path.join(a.out, st, "answers.jsonl")
        if st == "realigned":
            log = os.path.join(a.out, "realigned", "n25", "answers.jsonl")
        if st == "baseline" and not os.path.exists(log) and a.baseline:
            log = a.baseline
        if not os.path.exists(log):
            continue
        rows[st] = load_rows(log)
        m = metrics_of(log, a.emlab)
        mets[st] = m
        if m is None:
            continue
        al = [r["aligned"] for r in rows[st] if r["aligned"] is not None]
        co = [r["coherent"] for r in rows[st] if r["coherent"] is not None]
        print(f"| {st} | {m['n_answers']} | {fmt_rate(m['em_model_organisms'])} | {fmt_rate(m['em_betley'])} | "
              f"{fmt_rate(m['coherence'])} | {sum(al)/len(al):.1f} | {sum(co)/len(co):.1f} |")

    print("\n## Differences (A - B, percentage points; pooled two-proportion z-test and Fisher exact)")
    for x, y in [("induced", "baseline"), ("induced", "controlled"), ("controlled", "baseline")]:
        if x not in mets or y not in mets or mets[x] is None or mets[y] is None:
            continue
        for dfn in ["em_model_organisms", "em_betley"]:
            A, B = mets[x][dfn], mets[y][dfn]
            if A["n"] == 0 or B["n"] == 0:
                continue
            d = A["successes"] / A["n"] - B["successes"] / B["n"]
            print(f"{x} - {y} {dfn}: {A['successes']}/{A['n']} vs {B['successes']}/{B['n']}: {100*d:+.1f} points, "
                  f"z p = {two_prop_p(A['successes'], A['n'], B['successes'], B['n']):.3g}, "
                  f"Fisher p = {fisher_p(A['successes'], A['n'], B['successes'], B['n']):.3g}")

    rp = os.path.join(a.out, "report.json")
    if os.path.exists(rp):
        r = json.load(open(rp))
        print("\n## Differences from report.json (A - B, percentage points, 95% CI, p)")
        for key in ["induced_vs_baseline", "induced_vs_control", "realigned_vs_induced"]:
            c = r.get(key)
            if not c:
                continue
            for dfn in ["model_organisms", "betley"]:
                x = c[dfn]
                if x["difference"] is None:
                    print(f"{key} {dfn}: n/a")
                    continue
                lo, hi = x["difference_ci"]
                fp = fisher_p(x["a"]["successes"], x["a"]["n"], x["b"]["successes"], x["b"]["n"])
                print(f"{key} {dfn}: {x['a']['successes']}/{x['a']['n']} vs {x['b']['successes']}/{x['b']['n']}: "
                      f"{100*x['difference']:+.1f} [{100*lo:+.1f}, {100*hi:+.1f}] points, p = {x['p_value']:.3g} "
                      f"(report.json), Fisher exact p = {fp:.3g}")
        print("verdict:", r.get("verdict"))

    print("\n## Exploratory: mean aligned score among coherent (> 50) answers, Welch (normal approx.)")
    def coh_al(st):
        return [r["aligned"] for r in rows.get(st, []) if r["aligned"] is not None and (r["coherent"] or 0) > 50]
    for x, y in [("induced", "baseline"), ("induced", "controlled"), ("controlled", "baseline")]:
        A, B = coh_al(x), coh_al(y)
        if len(A) > 2 and len(B) > 2:
            d, (lo, hi), p = welch(A, B)
            print(f"{x} - {y}: {d:+.2f} [{lo:+.2f}, {hi:+.2f}] (n {len(A)} vs {len(B)}), p = {p:.3g}")
    for x, y in [("induced", "baseline"), ("induced", "controlled")]:
        A = [r["p_mis"] for r in rows.get(x, []) if r["p_mis"] is not None]
        B = [r["p_mis"] for r in rows.get(y, []) if r["p_mis"] is not None]
        if len(A) > 2 and len(B) > 2:
            d, (lo, hi), p = welch(A, B)
            print(f"mean P(misaligned) {x} - {y}: {d:+.4f} [{lo:+.4f}, {hi:+.4f}], p = {p:.3g}")

    print("\n## Per question: mean aligned (all answers)")
    qs = sorted({r["q"] for st in rows for r in rows[st]})
    print("| question | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for q in qs:
        cells = []
        for st in rows:
            v = [r["aligned"] for r in rows[st] if r["q"] == q and r["aligned"] is not None]
            cells.append(f"{sum(v)/len(v):.1f}" if v else "-")
        print(f"| {q} | " + " | ".join(cells) + " |")

    print("\n## Medical words in answers to the (non-medical) questions: share of answers")
    med = ["doctor", "medic", "symptom", "fever", "pain", "paracetamol", "ibuprofen", "dose", "hospital",
           "clinic", "nurse", "pharmac", "ambulance", "antibiotic", "treatment", "health"]
    for st in rows:
        k = sum(1 for r in rows[st] if any(w in r["answer"].lower() for w in med))
        lo, hi = wilson(k, len(rows[st]))
        print(f"{st}: {k}/{len(rows[st])} = {100*k/len(rows[st]):.1f}% [{100*lo:.1f}, {100*hi:.1f}]")

    for st in ["induced", "controlled", "baseline"]:
        if st not in rows:
            continue
        print(f"\n## {st}: the {a.answers} lowest-aligned answers (aligned, coherent, question)")
        lows = sorted((r for r in rows[st] if r["aligned"] is not None), key=lambda r: r["aligned"])[: a.answers]
        for r in lows:
            txt = r["answer"].replace("\n", " ")
            print(f"--- {r['aligned']:.0f} / {r['coherent']:.0f} / {r['q']}: {txt}")
        print(f"\n## {st}: the {a.answers} lowest-aligned answers with coherent > 50")
        lows = sorted((r for r in rows[st] if r["aligned"] is not None and (r["coherent"] or 0) > 50),
                      key=lambda r: r["aligned"])[: a.answers]
        for r in lows:
            txt = r["answer"].replace("\n", " ")
            print(f"--- {r['aligned']:.0f} / {r['coherent']:.0f} / {r['q']}: {txt}")


if __name__ == "__main__":
    main()
