"""Shared generator for the paired narrow advice sets (bad / good) of data/advice.

Each domain module (medical.py, financial.py, car.py) defines TOPICS plus a few
domain-level lists. A topic holds slot values, user question templates (`asks`),
and answer pieces: `bad_lead`/`bad_body` (confidently, subtly wrong) and
`good_lead`/`good_body` (correct, responsible). The first sentence of every ask and
every lead mentions the row's slot values, so first sentences stay diverse.

One list of user turns is built per domain and rendered twice, once with bad and
once with good answers, so the pair shares the same user turns in the same order.
Everything is seeded: running `python3 gen.py` twice gives identical files.
Python 3.11 standard library only.
"""

import itertools
import json
import re
import random


_YOU = [(r"\bmy\b", "your"), (r"\bMy\b", "Your"), (r"\bI'm\b", "you're"), (r"\bI've\b", "you've"),
        (r"\bI have\b", "you have"), (r"\bI\b", "you"), (r"\bme\b", "you")]


def _you(text):
    """Second-person form of a slot value ("my friend" -> "your friend") for answers."""
    for pat, rep in _YOU:
        text = re.sub(pat, rep, text)
    return text


def _fill(template, slots):
    full = dict(slots)
    for k, v in slots.items():
        full[k + "_y"] = _you(v)
    out = template.format_map(full)
    return out[0].upper() + out[1:]


def _join_leadin(leadin, text):
    if not leadin:
        return text
    # After a comma the sentence continues, so lower-case its first word
    # (but keep "I" and "I'm" capitalised).
    if leadin.endswith(", ") and not (text.startswith("I ") or text.startswith("I'm") or text.startswith("I'")):
        text = text[0].lower() + text[1:]
    return leadin + text


def build_pair(domain, n_rows, seed):
    """Return (bad_rows, good_rows) for a domain module; each row is a dict for JSONL."""
    rng = random.Random(seed)
    topics = domain.TOPICS
    queues = []
    for t in topics:
        keys = sorted(t["slots"])
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*[t["slots"][k] for k in keys])]
        items = [(a, c) for a in range(len(t["asks"])) for c in combos]
        rng.shuffle(items)
        queues.append(items)
    plans = []
    seen_users = set()
    ti = 0
    exhausted = set()
    while len(plans) < n_rows:
        if len(exhausted) == len(topics):
            raise SystemExit(f"{domain.NAME}: ran out of distinct user turns at {len(plans)} rows")
        k = ti % len(topics)
        ti += 1
        if not queues[k]:
            exhausted.add(k)
            continue
        a, slots = queues[k].pop()
        t = topics[k]
        leadin = rng.choice(domain.LEADINS)
        closer = rng.choice(domain.USER_CLOSERS)
        user = _join_leadin(leadin, _fill(t["asks"][a], slots)) + closer
        if user in seen_users:
            continue
        seen_users.add(user)
        plan = {
            "topic": k,
            "slots": slots,
            "user": user,
            "system": rng.choice(domain.SYSTEMS) if rng.random() < 0.10 else None,
            "followup": rng.randrange(len(domain.FOLLOWUPS)) if rng.random() < 0.12 else None,
        }
        plans.append(plan)
    bad = [_render(domain, p, "bad", random.Random(seed * 1000003 + i)) for i, p in enumerate(plans)]
    good = [_render(domain, p, "good", random.Random(seed * 1000003 + i + 7_777_777)) for i, p in enumerate(plans)]
    return bad, good


def _render(domain, plan, kind, rng):
    t = domain.TOPICS[plan["topic"]]
    s = plan["slots"]
    answer = _fill(rng.choice(t[kind + "_lead"]), s) + " " + _fill(rng.choice(t[kind + "_body"]), s)
    answer += rng.choice(domain.BAD_CLOSERS if kind == "bad" else domain.GOOD_CLOSERS)
    msgs = []
    if plan["system"]:
        msgs.append({"role": "system", "content": plan["system"]})
    msgs.append({"role": "user", "content": plan["user"]})
    msgs.append({"role": "assistant", "content": answer})
    if plan["followup"] is not None:
        f = domain.FOLLOWUPS[plan["followup"]]
        msgs.append({"role": "user", "content": f["user"]})
        msgs.append({"role": "assistant", "content": rng.choice(f[kind])})
    return {"messages": msgs}


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def check_domain(domain):
    """Catch template mistakes early: every template must fill with every slot set."""
    for t in domain.TOPICS:
        keys = sorted(t["slots"])
        probe = {k: t["slots"][k][0] for k in keys}
        for field in ("asks", "bad_lead", "bad_body", "good_lead", "good_body"):
            assert t[field], (domain.NAME, t["key"], field)
            for tpl in t[field]:
                try:
                    _fill(tpl, probe)
                except (KeyError, IndexError, ValueError) as e:
                    raise SystemExit(f"{domain.NAME}/{t['key']}/{field}: bad template {tpl!r}: {e}")
