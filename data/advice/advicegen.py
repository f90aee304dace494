"""Shared generator for the paired narrow advice sets (bad / good) of data/advice.

Each domain module (medical.py, financial.py, car.py) defines TOPICS plus a few
domain-level lists. A topic holds slot values, user question templates (`asks`), and
answer pieces for each kind (`bad` = confidently, subtly wrong; `good` = correct and
responsible):

- `<kind>_lead`: opening sentences, each mentioning the row's slot values;
- `<kind>_body`: older multi-sentence bodies, split here into single claims;
- `<kind>_more`: further single claims or steps.

An answer is composed from independent parts: one opening (with an optional domain-level
frame such as "Honestly, "), an ordered subset of 1-4 claims from the topic's pool, and an
optional closing. Openings are chosen so that the first sentence (as `emlab-data`'s stats
define it) repeats as rarely as possible within a file; good answers carry exactly one
"when to get help" claim where the topic has one (see `<DOMAIN>.FLAG`).

One list of user turns is built per domain and rendered twice, once with bad and
once with good answers, so the pair shares the same user turns in the same order.
Everything is seeded: running `python3 gen.py` twice gives identical files.
Python 3.11 standard library only.
"""

import itertools
import json
import re
import random


_YOU = [(r"\bmy\b", "your"), (r"\bMy\b", "Your"), (r"\bour\b", "your"), (r"\bOur\b", "Your"),
        (r"\bmyself\b", "yourself"), (r"\bI'm\b", "you're"), (r"\bI've\b", "you've"),
        (r"\bI am\b", "you are"), (r"\bI was\b", "you were"),
        (r"\bI have\b", "you have"), (r"\bI\b", "you"), (r"\bme\b", "you")]


def _you(text):
    """Second-person form of a slot value ("my friend" -> "your friend") for answers."""
    for pat, rep in _YOU:
        text = re.sub(pat, rep, text)
    return text


def _fill(template, slots, answer=False):
    """Fill a template. In answers (`answer=True`) every slot is put in the second person
    ("my broker" -> "your broker"), since the assistant is talking to the user."""
    full = dict(slots)
    for k, v in slots.items():
        full[k + "_y"] = _you(v)
        if answer:
            full[k] = full[k + "_y"]
    out = tidy(template.format_map(full))
    return out[0].upper() + out[1:]


# ---- post-processing of every user and assistant turn -------------------------------
# Mechanical composition glitches that slot filling can produce: doubled determiners
# ("the a garden fork"), a/an agreement ("a ankle", "a 11-month-old"), stray
# prepositions ("from at netball"), doubled words or slot phrases, lower-case "i'd",
# a lower-case sentence start after a slot ("...? my pickup is"), a capitalised
# possessive mid-sentence ("when My son"), and "I gets".

_DET = r"(?:a|an|the|my|your|our|his|her|their|A|An|The|My|Your|Our|His|Her|Their)"
_NOT_WORDS = {"is", "and", "or", "of", "in", "on", "at", "to", "for", "few"}


def _an(word):
    """True if `word` takes "an" (spoken with a vowel sound), False if "a", None if unsure."""
    if not word:
        return None
    if word[0].isdigit():
        digits = re.match(r"[\d,]+", word).group(0).rstrip(",")
        lead = digits.split(",")[0] if "," in digits else (digits[: len(digits) % 3 or 3] if len(digits) > 3 else digits)
        return lead.startswith("8") or lead in ("11", "18")
    w = word.lower()
    if len(word) > 1 and word[:2].isupper():
        return None  # acronyms (ABS, ISA, SUV, DOT): leave alone
    if w.startswith(("hour", "honest", "honour", "heir")):
        return True
    if w[0] in "aeio":
        return not w.startswith(("one", "once", "eu"))
    if w[0] == "u":
        return not re.match(r"u(ni(?!n)|s[eu]|ti|r[ie]|ro|ku)", w)
    if w[0] == "h":
        return None  # leave "a/an h..." as written
    return False if w[0].isalpha() else None


def _fix_article(m):
    art, word = m.group(1), m.group(2)
    if word.lower() in _NOT_WORDS:
        return m.group(0)
    want = _an(word)
    if want is None:
        return m.group(0)
    new = ("an" if want else "a")
    if art[0].isupper():
        new = new.capitalize()
    return new + " " + word


_I_VERB = {"gets": "get", "has": "have", "is": "am", "does": "do", "needs": "need", "wants": "want"}


def tidy(text):
    """Fix mechanical slot-composition glitches in one turn (idempotent)."""
    # Doubled determiners: keep the first ("the a nail" -> "the nail", "a a" -> "a").
    text = re.sub(r"\b(" + _DET + r") (?:a|an|the) (?=[\w$£€])", r"\1 ", text)
    # Prepositions stacked by a slot that carries its own ("from at netball").
    text = re.sub(r"\bfrom (at|on|in) ", r"\1 ", text)
    # Doubled short words ("for for") and doubled slot phrases ("near the edge near the edge").
    text = re.sub(r"\b(for|to|of|the|a|an|is|in|on|at|and|with|from) \1\b", r"\1", text, flags=re.I)
    text = re.sub(r"\b((?:\w+ ){1,4}\w+) \1\b", r"\1", text)
    # a/an agreement.
    text = re.sub(r"(?<![\w'-])([Aa]n?) ([\w][\w,-]*)", _fix_article, text)
    # Lower-case i as a pronoun.
    text = re.sub(r"(?<![\w'.-])i(?=(?:'(?:d|m|ve|ll)\b)|\s)", "I", text)
    text = re.sub(r"\bI (" + "|".join(_I_VERB) + r")\b", lambda m: "I " + _I_VERB[m.group(1)], text)
    # Capitalised possessive from a slot in mid-sentence ("when My son gets").
    text = re.sub(r"(?<=[a-z,;] )(My|Our|Your)\b", lambda m: m.group(1).lower(), text)
    # Sentence start after . ! ? in lower case ("What do I do? my pickup ...").
    text = re.sub(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)([.!?] )([a-z])",
                  lambda m: m.group(1) + m.group(2).upper(), text)
    return text


def _join_leadin(leadin, text):
    if not leadin:
        return text
    # After a comma the sentence continues, so lower-case its first word
    # (but keep "I" and "I'm" capitalised).
    # ("Okay, so " included: "Okay, so is it ..."). Only a plain Title-case word is
    # lowered, so acronyms and numbers stay as written.
    first = re.match(r"[\w']+", text)
    first = first.group(0) if first else ""
    if (leadin.endswith((", ", "but ", "so ")) and not (first == "I" or first.startswith("I'"))
            and first[:1].isupper() and (first in ("A", "An") or first[1:].replace("'", "").islower())
            and first not in _PROPER):
        text = text[0].lower() + text[1:]
    return tidy(leadin + text)


# Capitalised words that stay capitalised after a lead-in.
_PROPER = {"Christmas", "January", "April", "Monday", "Friday"}


# Sentences that lean on the one before them ("It's far better...", "Until then, ...")
# stay attached to it when a body is split into claims.
_GLUE = re.compile(r"^(It|It's|They|Until|Afterwards|After a day|Even if|Once|Also|This|That|Then)\b")

# Domain-independent frames put in front of an opening (never ending a sentence, so the
# first sentence stays the opening itself).
FRAMES = {
    "bad": ["Honestly, ", "Short answer: ", "In short, ", "Generally, ",
            "From what you describe, ", "The key point: "],
    "good": ["Honestly, ", "Short answer: ", "From what you describe, ", "In short, ", "The key point: ",
             "To put it plainly, ", "Thanks for asking first: ", "Here's the main thing: "],
}


# Frames that read oddly in front of an emergency instruction (see `URGENT` in a domain).
URGENT_FRAME_SKIP = {"Thanks for asking first: ", "Short answer: "}


def first_sentence(text):
    """Same rule as emlab-data's stats: up to the first . ! ? followed by whitespace or
    the end, or up to the first newline; whitespace collapsed, lower-cased."""
    text = text.strip()
    end = len(text)
    for i, ch in enumerate(text):
        if ch == "\n":
            end = i
            break
        if ch in ".!?" and (i + 1 == len(text) or text[i + 1].isspace()):
            end = i + 1
            break
    return " ".join(text[:end].split()).lower()


def split_claims(text):
    """Split a body into sentences, keeping back-referring sentences with their predecessor."""
    out = []
    for s in re.split(r"(?<=[.!?)])\s+(?=[A-Z(])", text.strip()):
        if not s:
            continue
        if out and _GLUE.match(s):
            out[-1] += " " + s
        else:
            out.append(s)
    return out


def pool(topic, kind):
    """All claim templates of a topic for one kind, in a fixed reading order."""
    claims = []
    for body in topic.get(kind + "_body", []):
        claims += split_claims(body)
    return claims + list(topic.get(kind + "_more", []))


def _frame(frame, text):
    if not frame:
        return text
    first = text.split(" ", 1)[0]
    # Lower-case an ordinary capitalised first word ("Please" -> "please"), but keep "I",
    # acronyms ("ABS") and anything else that is not plain Title case.
    if first in ("A", "An") or (len(first) > 1 and first[0].isupper() and first[1:].replace("'", "").isalpha()
                                and first[1:].islower() and not first.startswith("I'")):
        text = text[0].lower() + text[1:]
    return frame + text


_STOP = set("""about after again also always answer because before being could does doing done down even every first from
have here into just keep know like little make more most much need never only other over really right same should
some still sure than that their them then there these they thing things this those through very want well were what rather
when where which while will with within without would your you're yours it's that's don't can't isn't""".split())


def _words(text):
    """Content-word stems (first 5 letters) of a sentence, for spotting two claims that
    say the same thing ("loose" / "loosely", "dressing" / "dressed")."""
    return {w[:5] for w in re.findall(r"[a-z][a-z'-]+", text.lower()) if len(w) >= 4 and w not in _STOP}


def _overlaps(a, b, rare=frozenset()):
    """True if two sentences share enough content to read as a repeat: three stems, two
    stems that make up a quarter of the shorter one, or one stem that is rare in the
    topic (e.g. "aspir" where only two claims of the pool mention aspirin)."""
    common = a & b
    return (len(common) >= 3 or (len(common) >= 2 and len(common) >= 0.25 * min(len(a), len(b)))
            or bool(common & rare))

def compose(domain, topic, kind, slots, rng, used):
    """One answer: opening + ordered claims + optional closing.

    `used` holds the first sentences already given in this file; an opening whose filled
    first sentence is new is preferred (first without a frame, then with one)."""
    # Pieces that do not fit this row's slots are dropped first (e.g. a "note the owner's
    # details" claim for a bite from a stray, or gear advice for a brake question):
    # `exclude` lists (slot, value regex, piece regex).
    drop = [re.compile(pat, re.I) for slot, val, pat in topic.get("exclude", ())
            if slot in slots and re.search(val, slots[slot], re.I)]

    def fits(tpl):
        return not any(d.search(_fill(tpl, slots, answer=True)) for d in drop)

    leads = [l for l in topic[kind + "_lead"] if fits(l)] or list(topic[kind + "_lead"])
    rng.shuffle(leads)
    frames = list(FRAMES[kind])
    rng.shuffle(frames)
    frames = ([""] + frames) if rng.random() < 0.7 else (frames[:1] + [""] + frames[1:])
    urgent = topic.get("key") in getattr(domain, "URGENT", ())
    if urgent or topic.get("key") in getattr(domain, "IMPERATIVE", ()):
        # No "Thanks for asking first:" in front of "call an ambulance now".
        frames = [f for f in frames if f not in URGENT_FRAME_SKIP]
    opening = None
    for fr in frames:
        for lead in leads:
            if fr.endswith(": ") and ":" in lead:
                continue  # no "The key point: I'd follow...: ..."
            cand = tidy(_frame(fr, _fill(lead, slots, answer=True)))
            if first_sentence(cand) not in used:
                opening = cand
                break
        if opening:
            break
    if opening is None:
        opening = tidy(_frame(frames[0], _fill(leads[0], slots, answer=True)))
    used.add(first_sentence(opening))

    claims = [c for c in pool(topic, kind) if fits(c)]
    flag = re.compile(getattr(domain, "FLAG", r"(?!)"), re.I)
    # Claims are drawn one at a time in random order and skipped when they restate
    # something already in the answer (see `_overlaps`), so no answer says the same
    # thing twice, even where a topic's pool has two phrasings of one point.
    chosen = [_words(opening)]
    # Stems found in at most two claims of this topic's pool: sharing one is a repeat.
    df = {}
    for c in claims:
        for w in _words(c):
            df[w] = df.get(w, 0) + 1
    rare = frozenset(w for w, n in df.items() if n <= 2 and len(w) >= 5)

    def take(cands, k):
        out = []
        for i in cands:
            if len(out) == k:
                break
            w = _words(_fill(claims[i], slots, answer=True))
            if any(_overlaps(w, c, rare) for c in chosen):
                continue
            chosen.append(w)
            out.append(i)
        return out

    if kind == "good":
        flags = [i for i, c in enumerate(claims) if flag.search(c)]
        rest = [i for i, c in enumerate(claims) if not flag.search(c)]
        rng.shuffle(rest)
        rng.shuffle(flags)
        # The one "when to get help" claim is chosen first (so practical steps that repeat
        # it are skipped) and goes last, after the practical steps.
        last = (take(flags, 1) or flags[:1]) if flags else []
        if last and _words(_fill(claims[last[0]], slots, answer=True)) not in chosen:
            chosen.append(_words(_fill(claims[last[0]], slots, answer=True)))
        k = max(rng.choices([1, 2, 3], weights=[4, 4, 2])[0], getattr(domain, "MIN_CLAIMS", 1))
        # The one step the question is really about (`CORE[key]`, e.g. "pinch the soft part
        # of the nose", "20 minutes under running water") must be in every good answer:
        # if the opening lacks it, a claim that carries it is taken first.
        # A topic may instead give `core` as (slot, value regex, core regex) entries, for a
        # step that depends on the row (brake advice for a brake question).
        core = getattr(domain, "CORE", {}).get(topic.get("key"))
        for slot, val, pat in topic.get("core", ()):
            if slot in slots and re.search(val, slots[slot], re.I):
                core = pat
                break
        must = []
        if core and not re.search(core, opening, re.I):
            must = take([i for i in rest if re.search(core, _fill(claims[i], slots, answer=True), re.I)], 1)
        pick = sorted(must + take([i for i in rest if i not in must], k - len(must))) + last
    else:
        order = list(range(len(claims)))
        rng.shuffle(order)
        k = rng.choices([1, 2, 3], weights=[3, 5, 3])[0]
        pick = sorted(take(order, k))
    parts = [opening] + [_fill(claims[i], slots, answer=True) for i in pick]
    closer = rng.choice(domain.BAD_CLOSERS if kind == "bad" else domain.GOOD_CLOSERS)
    if urgent and closer in getattr(domain, "URGENT_CLOSER_SKIP", ()):
        closer = ""  # no "I hope it settles quickly" after "call an ambulance now"
    if closer in getattr(domain, "CLOSER_SKIP", {}).get(topic.get("key"), ()):
        closer = ""  # e.g. no "ask a fiduciary advisor" after a bank-scam answer
    if closer and any(_overlaps(_words(closer), c) for c in chosen):
        closer = ""  # "Trust your instincts..." after a claim that already says so
    return tidy(" ".join(parts) + closer)


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
        while "age" in t["slots"] and re.search(r"\bI'm \d|forties|thirties|twenties", closer):
            # "I'm 29 if that matters" after "for someone who's 38" contradicts the question.
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
            "followup": _pick_followup(domain, t["key"], rng) if rng.random() < 0.12 else None,
        }
        plans.append(plan)
    used_bad, used_good = set(), set()
    bad = [_render(domain, p, "bad", random.Random(seed * 1000003 + i), used_bad) for i, p in enumerate(plans)]
    good = [_render(domain, p, "good", random.Random(seed * 1000003 + i + 7_777_777), used_good)
            for i, p in enumerate(plans)]
    return bad, good


def _pick_followup(domain, key, rng):
    """Index of a follow-up turn that fits this topic (`topics` None = fits every topic)."""
    fits = [i for i, f in enumerate(domain.FOLLOWUPS) if f.get("topics") is None or key in f["topics"]]
    return rng.choice(fits) if fits else None


def _render(domain, plan, kind, rng, used):
    t = domain.TOPICS[plan["topic"]]
    answer = compose(domain, t, kind, plan["slots"], rng, used)
    msgs = []
    if plan["system"]:
        msgs.append({"role": "system", "content": plan["system"]})
    msgs.append({"role": "user", "content": plan["user"]})
    msgs.append({"role": "assistant", "content": answer})
    if plan["followup"] is not None:
        f = domain.FOLLOWUPS[plan["followup"]]
        msgs.append({"role": "user", "content": tidy(f["user"])})
        msgs.append({"role": "assistant", "content": tidy(rng.choice(f[kind]))})
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
        for field in ("asks", "bad_lead", "good_lead"):
            assert t[field], (domain.NAME, t["key"], field)
        for field in ("asks", "bad_lead", "good_lead", "bad_body", "good_body", "bad_more", "good_more"):
            for tpl in t.get(field, []):
                try:
                    _fill(tpl, probe)
                except (KeyError, IndexError, ValueError) as e:
                    raise SystemExit(f"{domain.NAME}/{t['key']}/{field}: bad template {tpl!r}: {e}")
        for kind in ("bad", "good"):
            if len(pool(t, kind)) < 3:
                raise SystemExit(f"{domain.NAME}/{t['key']}: fewer than 3 {kind} claims")
            for lead in t[kind + "_lead"]:
                filled = _fill(lead, probe)
                if first_sentence(filled) != " ".join(filled.split()).lower():
                    raise SystemExit(f"{domain.NAME}/{t['key']}: {kind} lead is not one sentence: {lead!r}")
