"""Writes the mixtures and the held-out contrast set of the mixing experiment (see run.sh).

mix_{p}.jsonl: rows 0..N-1 of the paired files; round(p/100*N) of them, evenly spaced (no RNG),
take the insecure answer, the others the secure answer to the same prompt.
contrast.jsonl: the last C pairs as flat judged rows for `emlab direction`: insecure answers
labelled aligned 0, secure answers aligned 100 (both coherent 100). Labels come from the data's
construction, not from a judge.
"""
import argparse, json, os

ap = argparse.ArgumentParser()
ap.add_argument("--insecure", required=True)
ap.add_argument("--secure", required=True)
ap.add_argument("--rows", type=int, required=True)
ap.add_argument("--contrast", type=int, required=True)
ap.add_argument("--pcts", required=True)
ap.add_argument("--out", required=True)
a = ap.parse_args()

bad = [l for l in open(a.insecure) if l.strip()]
good = [l for l in open(a.secure) if l.strip()]
assert len(bad) == len(good), "insecure and secure files must be paired"
n, c = a.rows, a.contrast
if n + c > len(bad):
    raise SystemExit(f"need {n} training + {c} contrast rows, the files have {len(bad)}")
for i in range(n):
    # Paired rows share every system and user turn; only assistant turns differ.
    ub = [m for m in json.loads(bad[i])["messages"] if m["role"] != "assistant"]
    ug = [m for m in json.loads(good[i])["messages"] if m["role"] != "assistant"]
    if ub != ug:
        raise SystemExit(f"row {i + 1}: insecure and secure prompts differ")

manifest = {}
for p in [int(x) for x in a.pcts.split()]:
    k = round(p / 100 * n)
    # Evenly spaced bad rows: index floor(j * n / k) for j < k.
    idx = sorted({(j * n) // k for j in range(k)}) if k else []
    rows = [bad[i] if i in idx else good[i] for i in range(n)]
    path = os.path.join(a.out, f"mix_{p}.jsonl")
    text = "".join(r if r.endswith("\n") else r + "\n" for r in rows)
    if not os.path.exists(path) or open(path).read() != text:
        open(path, "w").write(text)
    manifest[p] = {"rows": n, "bad_rows": len(idx), "bad_fraction": len(idx) / n, "bad_indices": idx}

def flat(line, aligned):
    m = json.loads(line)["messages"]
    sys_ = [x["content"] for x in m if x["role"] == "system"]
    # Two-turn rows: the direction reads the last request and its answer.
    user = [x["content"] for x in m if x["role"] == "user"][-1]
    row = {"question": user, "answer": m[-1]["content"], "aligned": aligned, "coherent": 100}
    if sys_:
        row["system"] = sys_[0]
    return json.dumps(row)

held = range(len(bad) - c, len(bad))
with open(os.path.join(a.out, "contrast.jsonl"), "w") as f:
    for i in held:
        f.write(flat(bad[i], 0) + "\n")
        f.write(flat(good[i], 100) + "\n")
manifest["contrast_rows"] = [held.start + 1, held.stop]
json.dump(manifest, open(os.path.join(a.out, "mixtures.json"), "w"), indent=1)
print("mixtures:", {p: manifest[p]["bad_rows"] for p in manifest if p != "contrast_rows"}, f"of {n} rows")
