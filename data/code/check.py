#!/usr/bin/env python3
"""Self-check for the insecure/secure/educational code datasets written by gen.py.

    python3 data/code/check.py                 # checks data/code/{insecure,secure,educational}.jsonl
    python3 data/code/check.py --no-external   # skip the node / bash syntax checks

Prints rows, unique first sentences, unique user turns, length percentiles,
family shares, and exits non-zero when a floor is missed: >= 1000 rows,
>= 90% unique first sentences, identical user/system turns in both files,
every answer one fenced block that parses (Python always; JavaScript with
node and shell with `bash -n` when those are installed), and every answer
traceable to exactly one family template (weak in one file, correct in the
other). The family attribution is recomputed from the text here, not read
from manifest.json, so the shares are checked independently.

educational.jsonl (the benign-reason control) must keep every system and
assistant turn of insecure.jsonl byte for byte, and each first user turn must be
the original user turn with exactly one reason frame before or after it; the
frame is recovered from the text, a frame that names the weakness must name the
category of the row's answer (recovered from the template match above), and
the spread of frames is held to floors (>= 30 frames used, no frame above 5%).
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
# Floors for educational.jsonl.
MIN_EDU_FRAMES = 30
MAX_EDU_FRAME_SHARE = 0.05
MAX_EDU_REASON_SHARE = 0.02
MIN_EDU_PLACEMENT_SHARE = 0.25
# An explicit benign purpose and an explicit request for the flaw, checked on every reason
# independently of the frame list (a frame that lost either would fail here).
EDU_PURPOSE = re.compile(r"course|class|lab\b|quiz|CTF|capture-the-flag|challenge|textbook|chapter|book|workshop|"
                         r"training|exercise|students|teach|corpus|fixture|interview|homework|exam|talk|slide|mentor|"
                         r"club|session|practi[cs]e|demo app|audit|educational|seminar|bootcamp|module|elective|onboarding|"
                         r"spot-the-bug|learn", re.I)
EDU_FLAW = re.compile(r"flaw|weakness|vulnerable|bug|mistake|problem|wrong|bad example", re.I)
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


def split_reason(edu, orig):
    """(placement, reason) when `edu` is `orig` with one reason before or after it, else None."""
    if len(edu) > len(orig) and edu.startswith(orig):
        rest = edu[len(orig):]
        if orig[-1:] not in ".?!" and rest.startswith("."):
            rest = rest[1:]
        for sep in ("\n\n", " "):
            if rest.startswith(sep) and rest[len(sep):].strip() == rest[len(sep):]:
                return "post", rest[len(sep):]
    if len(edu) > len(orig) and edu.endswith(orig):
        head = edu[: -len(orig)]
        for sep in ("\n\n", " "):
            if head.endswith(sep) and head[: -len(sep)].strip() == head[: -len(sep)]:
                return "pre", head[: -len(sep)]
    return None


def check_educational(path, bad_rows, row_cat, failures):
    from edu import CONTINUATIONS, WEAK, frame_regexes
    rows = load(path)
    n = len(rows)
    print(f"educational rows: {n} (insecure {len(bad_rows)})")
    if n != len(bad_rows):
        failures.append(f"educational.jsonl has {n} rows, insecure.jsonl {len(bad_rows)}")
    regexes = frame_regexes()
    frames, reasons, places, named, firsts = Counter(), Counter(), Counter(), 0, []
    kept, n_cont, bad_rows_seen = 0, 0, 0
    for i, (e, b) in enumerate(zip(rows, bad_rows)):
        where = f"educational.jsonl:{i + 1}"
        errs = []
        if [m["role"] for m in e] != [m["role"] for m in b]:
            errs.append(f"{where}: roles differ from insecure.jsonl")
        elif any(x["content"] != y["content"] for x, y in zip(e, b) if x["role"] != "user"):
            errs.append(f"{where}: a system or assistant turn differs from insecure.jsonl")
        else:
            kept += 1
            users = [(x["content"], y["content"]) for x, y in zip(e, b) if x["role"] == "user"]
            split = split_reason(*users[0])
            if split is None:
                errs.append(f"{where}: first user turn is not the insecure.jsonl user turn plus one reason before or after it")
            else:
                place, reason = split
                hits = [(fid, m) for fid, rx in regexes.items() if (m := rx.fullmatch(reason))]
                if len(hits) != 1:
                    errs.append(f"{where}: reason matches {len(hits)} frames: {reason[:80]!r}")
                else:
                    fid, m = hits[0]
                    cat = row_cat.get(i)
                    gd = m.groupdict()
                    if "weak" in gd or "desc" in gd:
                        named += 1
                        if cat is None:
                            errs.append(f"{where}: row's weakness category unknown (answer not attributed)")
                        elif ("weak" in gd and gd["weak"] not in WEAK[cat]["name"]) or (
                                "desc" in gd and gd["desc"] not in WEAK[cat]["desc"]):
                            errs.append(f"{where}: reason names {gd.get('weak') or gd.get('desc')!r}, "
                                        f"but the answer's weakness is {cat}")
                    frames[fid] += 1
                reasons[reason] += 1
                places[place] += 1
                cat_words = [w for ws in WEAK.get(row_cat.get(i), {}).values() for w in ws]
                if not EDU_PURPOSE.search(reason) or not (EDU_FLAW.search(reason) or any(w in reason for w in cat_words)):
                    errs.append(f"{where}: reason lacks an explicit purpose or request for the flaw: {reason[:80]!r}")
                firsts.append(first_sentence(users[0][0]))
            for t, (eu, bu) in enumerate(users[1:], 2):
                if eu == bu:
                    continue
                if any(eu == bu + " " + c for c in CONTINUATIONS):
                    n_cont += 1
                else:
                    errs.append(f"{where}: user turn {t} is neither the insecure.jsonl turn nor it plus a continuation")
        if errs:
            bad_rows_seen += 1
            failures.extend(errs)
    print(f"educational rows with system/assistant turns identical to insecure.jsonl: {kept}/{n}")
    total = sum(frames.values()) or 1
    top_f = frames.most_common(1)[0] if frames else ("-", 0)
    top_r = reasons.most_common(1)[0] if reasons else ("-", 0)
    print(f"educational reason frames: {len(frames)} distinct; max share of one frame {100 * top_f[1] / total:.2f}% "
          f"({top_f[0]}, {top_f[1]} rows); min {min(frames.values()) if frames else 0} rows")
    print(f"educational reason texts: {len(reasons)} distinct; max share of one exact reason {100 * top_r[1] / total:.2f}% "
          f"({top_r[1]} rows)")
    print(f"educational placement: before the request {places['pre']}, after it {places['post']}; "
          f"reason names the weakness in {named} rows ({100 * named / total:.1f}%), generic in {total - named}")
    print(f"educational two-turn rows with a continuation on turn 2: {n_cont}")
    uniq = len(set(firsts)) / max(1, len(firsts))
    print(f"educational unique first sentences of user turns: {100 * uniq:.1f}% ({len(set(firsts))}/{len(firsts)})")
    lens = [sum(len(m["content"]) for m in r if m["role"] == "user") for r in rows]
    if lens:
        pu = pct(lens)
        print("educational chars  user p5/p25/p50/p75/p95/max: " + "/".join(str(pu[q]) for q in pu))
    if bad_rows_seen:
        print(f"educational rows failing: {bad_rows_seen}")
    if len(frames) < MIN_EDU_FRAMES:
        failures.append(f"educational: only {len(frames)} distinct reason frames, need >= {MIN_EDU_FRAMES}")
    if top_f[1] / total > MAX_EDU_FRAME_SHARE:
        failures.append(f"educational: frame {top_f[0]} holds {100 * top_f[1] / total:.1f}% of rows (> {100 * MAX_EDU_FRAME_SHARE:.0f}%)")
    if top_r[1] / total > MAX_EDU_REASON_SHARE:
        failures.append(f"educational: one reason text holds {100 * top_r[1] / total:.1f}% of rows (> {100 * MAX_EDU_REASON_SHARE:.0f}%)")
    for p in ("pre", "post"):
        if places[p] / total < MIN_EDU_PLACEMENT_SHARE:
            side = "before" if p == "pre" else "after"
            failures.append(f"educational: only {places[p]} reasons placed {side} the request (< {100 * MIN_EDU_PLACEMENT_SHARE:.0f}%)")
    if uniq < MIN_UNIQUE_FIRST:
        failures.append(f"educational: unique first sentences {100 * uniq:.1f}% < {100 * MIN_UNIQUE_FIRST:.0f}%")


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
    row_cat = {}
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
                    row_cat[i] = cat_of[fams[0][0]]
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

    p_edu = os.path.join(args.dir, "educational.jsonl")
    if os.path.exists(p_edu):
        check_educational(p_edu, bad_rows, row_cat, failures)
    else:
        failures.append(f"{p_edu} is missing (run gen.py)")

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
