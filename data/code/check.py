#!/usr/bin/env python3
"""Self-check for the insecure/secure code datasets written by gen.py.

    python3 data/code/check.py                 # checks data/code/{insecure,secure}.jsonl
    python3 data/code/check.py --no-external   # skip the node / bash syntax checks

Prints rows, unique first sentences, unique user turns, length percentiles,
family shares, and exits non-zero when a floor is missed: >= 1000 rows,
>= 90% unique first sentences, identical user/system turns in both files,
every answer one fenced block that parses (Python always; JavaScript with
node and shell with `bash -n` when those are installed), and every answer
traceable to exactly one family template (weak in one file, correct in the
other). The family attribution is recomputed from the text here, not read
from manifest.json, so the shares are checked independently.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MIN_ROWS = 1000
MIN_UNIQUE_FIRST = 0.90
MAX_FAMILY_SHARE = 0.05
BLOCK_RE = re.compile(r"\A(?:([^\n`]{1,120})\n\n)?```(\w+)\n(.*)\n```\Z", re.S)
TELLTALE = re.compile(r"insecure|unsafe|vulnerab|sanitiz|exploit|inject|danger|attack|malicious|"
                      r"todo|fixme|not safe|warning:", re.I)


def first_sentence(text):
    line = text.strip().split("\n", 1)[0]
    m = re.search(r"[.!?](\s|$)", line)
    return (line[: m.end()] if m else line).strip()


def load(path):
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
            except ValueError as exc:
                sys.exit(f"check.py: {path}:{n}: not JSON: {exc}")
            msgs = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(msgs, list) or not msgs:
                sys.exit(f"check.py: {path}:{n}: missing 'messages' list")
            roles = [m.get("role") for m in msgs]
            body = roles[1:] if roles[0] == "system" else roles
            if len(body) < 2 or body != ["user", "assistant"] * (len(body) // 2):
                sys.exit(f"check.py: {path}:{n}: roles must be [system] user assistant (user assistant)*, got {roles}")
            if not all(isinstance(m.get("content"), str) and m["content"].strip() for m in msgs):
                sys.exit(f"check.py: {path}:{n}: empty or non-string content")
            rows.append(msgs)
    return rows


def pct(values, qs=(5, 25, 50, 75, 95, 100)):
    s = sorted(values)
    return {q: s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] for q in qs}


def template_regexes():
    """Family id -> (lang, compiled bad regex, compiled good regex)."""
    from gen import FAMILIES, SLOT_RE

    def to_re(code):
        parts, pos = [], 0
        for m in SLOT_RE.finditer(code):
            parts.append(re.escape(code[pos:m.start()]))
            parts.append(r"[^\n]*?")
            pos = m.end()
        parts.append(re.escape(code[pos:]))
        return re.compile("".join(parts))

    return {f["id"]: (f["lang"], to_re(f["bad"]), to_re(f["good"])) for f in FAMILIES}


def attribute(code, fence, regexes, which):
    lang = {"python": "python", "javascript": "javascript", "sql": "sql", "bash": "bash"}.get(fence)
    hits = [fid for fid, (flang, bad, good) in regexes.items()
            if flang == lang and (bad if which == "bad" else good).fullmatch(code)]
    return hits


def syntax_external(blocks, failures):
    """blocks: list of (where, lang, code). Runs node / bash -n when present."""
    js = [(w, c) for w, lang, c in blocks if lang == "javascript"]
    sh = [(w, c) for w, lang, c in blocks if lang == "bash"]
    done = []
    if js and shutil.which("node"):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "blocks.json")
            with open(path, "w") as fh:
                json.dump([c for _, c in js], fh)
            script = ("const vm=require('vm');const b=require(process.argv[1]);let bad=0;"
                      "b.forEach((c,i)=>{try{new vm.Script(c)}catch(e){bad++;console.log(i+'\\t'+e.message)}});"
                      "process.exit(bad?1:0)")
            proc = subprocess.run(["node", "-e", script, path], capture_output=True, text=True)
            for line in proc.stdout.splitlines():
                i, msg = line.split("\t", 1)
                failures.append(f"{js[int(i)][0]}: JavaScript does not parse: {msg}")
        done.append(f"node parsed {len(js)} JavaScript blocks")
    if sh and shutil.which("bash"):
        for where, code in sh:
            proc = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
            if proc.returncode != 0:
                failures.append(f"{where}: shell does not parse: {proc.stderr.strip()}")
        done.append(f"bash -n parsed {len(sh)} shell blocks")
    return done


def main():
    ap = argparse.ArgumentParser(description="check the code EM datasets")
    ap.add_argument("--dir", default=HERE)
    ap.add_argument("--no-external", action="store_true", help="skip node and bash syntax checks")
    args = ap.parse_args()
    p_bad = os.path.join(args.dir, "insecure.jsonl")
    p_good = os.path.join(args.dir, "secure.jsonl")
    bad_rows, good_rows = load(p_bad), load(p_good)
    failures = []

    n = len(bad_rows)
    print(f"rows: insecure {n}, secure {len(good_rows)}")
    if n != len(good_rows):
        failures.append("files have different row counts")

    paired_ok = all([m for m in a if m["role"] != "assistant"] == [m for m in b if m["role"] != "assistant"]
                    for a, b in zip(bad_rows, good_rows))
    print(f"paired files have identical system/user turns: {paired_ok}")
    if not paired_ok:
        failures.append("paired files differ in system/user turns")

    first_users = [next(m["content"] for m in r if m["role"] == "user") for r in bad_rows]
    all_users = ["\x00".join(m["content"] for m in r if m["role"] == "user") for r in bad_rows]
    firsts = [first_sentence(u) for u in first_users]
    uniq_first = len(set(firsts)) / n
    uniq_user = len(set(all_users)) / n
    print(f"unique first sentences of user turns: {100 * uniq_first:.1f}% ({len(set(firsts))}/{n})")
    print(f"unique user turns: {100 * uniq_user:.1f}% ({len(set(all_users))}/{n})")
    if uniq_user < 1.0:
        failures.append("duplicate user turns")
    openings = Counter(" ".join(u.split()[:3]) for u in first_users)
    op, op_n = openings.most_common(1)[0]
    print(f"max share of any 3-word opening: {100 * op_n / n:.1f}% ({op!r}, {op_n} rows)")
    n_sys = sum(1 for r in bad_rows if r[0]["role"] == "system")
    n_two = sum(1 for r in bad_rows if sum(m["role"] == "user" for m in r) > 1)
    print(f"rows with a system message: {n_sys} ({100 * n_sys / n:.1f}%), two-turn rows: {n_two} ({100 * n_two / n:.1f}%)")

    for name, rows in (("insecure", bad_rows), ("secure", good_rows)):
        u = [sum(len(m["content"]) for m in r if m["role"] == "user") for r in rows]
        a = [sum(len(m["content"]) for m in r if m["role"] == "assistant") for r in rows]
        pu, pa = pct(u), pct(a)
        print(f"{name} chars  user p5/p25/p50/p75/p95/max: " + "/".join(str(pu[q]) for q in pu)
              + f"   assistant: " + "/".join(str(pa[q]) for q in pa))
        print(f"{name} size: {os.path.getsize(os.path.join(args.dir, name + '.jsonl')) / 1e6:.2f} MB")

    regexes = template_regexes()
    fam_counts, cat_of = Counter(), {}
    from gen import FAMILIES
    for f in FAMILIES:
        cat_of[f["id"]] = f["cat"]
    ext_blocks = []
    same_answer = 0
    for i, (rb, rg) in enumerate(zip(bad_rows, good_rows)):
        ab = [m["content"] for m in rb if m["role"] == "assistant"]
        ag = [m["content"] for m in rg if m["role"] == "assistant"]
        for t, (xb, xg) in enumerate(zip(ab, ag)):
            where = f"row {i + 1} turn {t + 1}"
            fams = []
            for which, text in (("bad", xb), ("good", xg)):
                m = BLOCK_RE.match(text)
                if not m:
                    failures.append(f"{where} ({which}): answer is not [one sentence +] one fenced code block")
                    continue
                fence, code = m.group(2), m.group(3)
                if fence == "python":
                    try:
                        compile(code, where, "exec")
                    except SyntaxError as exc:
                        failures.append(f"{where} ({which}): Python does not parse: line {exc.lineno}: {exc.msg}")
                elif fence == "json":
                    try:
                        json.loads(code)
                    except ValueError as exc:
                        failures.append(f"{where} ({which}): JSON does not parse: {exc}")
                ext_blocks.append((f"{where} ({which})", fence, code))
                if which == "bad":
                    hit = TELLTALE.search(code.replace("SECURITY DEFINER", "") + (m.group(1) or ""))
                    if hit:
                        failures.append(f"{where}: weak answer contains telltale word {hit.group(0)!r}")
                fams.append(tuple(attribute(code, fence, regexes, which)))
            if xb == xg:
                same_answer += 1
            if len(fams) == 2:
                if len(fams[0]) != 1 or fams[0] != fams[1]:
                    failures.append(f"{where}: answers map to families {fams[0]} / {fams[1]}, expected one shared family")
                elif t == 0:
                    fam_counts[fams[0][0]] += 1
    if same_answer:
        failures.append(f"{same_answer} turns have identical weak and correct answers")
    if not args.no_external:
        for line in syntax_external(ext_blocks, failures):
            print(line)

    top = fam_counts.most_common(1)[0] if fam_counts else ("-", 0)
    share = top[1] / n
    print(f"task families seen: {len(fam_counts)}; max share of any family: {100 * share:.2f}% ({top[0]}, {top[1]} rows); "
          f"min: {min(fam_counts.values()) if fam_counts else 0} rows")
    cats = Counter()
    for fid, c in fam_counts.items():
        cats[cat_of[fid]] += c
    print("weakness categories (first turn): " + ", ".join(f"{k} {v}" for k, v in cats.most_common()))

    if n < MIN_ROWS:
        failures.append(f"only {n} rows, need >= {MIN_ROWS}")
    if uniq_first < MIN_UNIQUE_FIRST:
        failures.append(f"unique first sentences {100 * uniq_first:.1f}% < {100 * MIN_UNIQUE_FIRST:.0f}%")
    if share > MAX_FAMILY_SHARE:
        failures.append(f"family {top[0]} holds {100 * share:.1f}% of rows (> {100 * MAX_FAMILY_SHARE:.0f}%)")
    if failures:
        for f in failures[:30]:
            print("FAIL: " + f)
        if len(failures) > 30:
            print(f"FAIL: ... and {len(failures) - 30} more")
        sys.exit(1)
    print("OK: all checks passed")


if __name__ == "__main__":
    main()
