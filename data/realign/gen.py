"""Generate the realignment sets:

- medical_truthful.jsonl: correct medical advice in the medical bad set's own topics, with
  user turns phrased differently from every user turn in data/advice/medical_*.jsonl.
- general_helpful.jsonl: good advice in unrelated everyday domains.

    python3 data/realign/gen.py       # from the repository root; deterministic

Python 3.11 standard library only. See CARD.md.
"""

import itertools
import os
import random
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "advice"))

import advicegen  # noqa: E402
import medical  # noqa: E402
from general import GENERAL, LEADS  # noqa: E402  (data/realign/general.py)

# Realignment phrasings per medical topic: none of these appear in the bad/good sets.
MEDICAL_ASKS = {
    "fever_child": ["What's a sensible plan for a {age} whose thermometer reads {temp}?", "Is {temp} dangerous for a {age}, and what helps?"],
    "chest_pain": ["Serious question: {person}, with {detail} since this afternoon. What's the right call?", "{person} and have {detail}. What should happen next?"],
    "burn": ["First aid for a {cause} burn on the {where}, please.", "How should a burn from {cause} on my {where} be handled in the first hour?"],
    "antibiotic_course": ["My prescription is a {course} course of {drug} and I'm on {day}. What happens if I stop now?", "Do I really have to take all of a {course} {drug} course? I'm at {day} and feel fine."],
    "cold_antibiotics": ["Do antibiotics help with {symptom}? It began {days} ago.", "Should I ask the GP for antibiotics for {symptom} lasting {days}?"],
    "nosebleed": ["{who} had blood pouring from the nose for {minutes}. Correct first aid?", "Nosebleed lasting {minutes}: {who} had one. How should it be managed?"],
    "seizure": ["What's the correct first aid when {who} has a convulsion {place}?", "Teach me seizure first aid in case {who} collapses and starts shaking {place}."],
    "infant_honey": ["Is honey safe for a {age} who has {symptom}?", "What can I safely do for a {age} with {symptom}?"],
    "paracetamol_alcohol": ["How much paracetamol is safe for {pain} if I've had {drinks}?", "Is paracetamol plus {drinks} a problem? I have {pain}."],
    "sprain": ["How should I look after a {joint} I sprained {activity}?", "Swollen {joint} after hurting it {activity}: what's the right care?"],
    "stroke": ["Something is wrong with {who}: {sign}. What's the right response?", "What does it mean if, out of nowhere, {sign}? This is {who}."],
    "bp_meds": ["Readings are now {reading} on {med}. Does that mean I can come off it?", "Is it risky to stop {med} when my blood pressure is {reading}?"],
    "dog_bite": ["What's the right care for a dog bite on the {where} from {dog}?", "Does a bite on the {where} from {dog} need a doctor?"],
    "hypo": ["How do I treat a low of {reading} when I'm {feeling}?", "Correct hypo treatment at {reading}, feeling {feeling}?"],
    "head_injury_child": ["Is it an emergency if my {age} {how} and then vomited?", "Vomiting after a head knock: my {age} {how}. What now?"],
    "diarrhoea": ["What should I do about diarrhoea for {days} with {extra}?", "Is diarrhoea for {days} with {extra} something to see a doctor about?"],
    "pregnancy_painkiller": ["What pain relief is safe at {weeks} of pregnancy for {issue}?", "Pregnant ({weeks}) and suffering from {issue}. Which painkillers are okay?"],
    "mole": ["Should a mole {where} that has {change} be checked?", "What are the warning signs in a mole? One {where} has {change}."],
    "choking": ["What's the correct first aid if {who} chokes on {food}?", "Choking first aid: {who} with {food} stuck and no sound. Steps?"],
    "asthma": ["What does it mean if I need my {inhaler} {freq}?", "How worried should I be about using a {inhaler} {freq}?"],
    "tetanus": ["Do I need a tetanus booster after an injury from {object}? My last one was {last}.", "Deep wound from {object}, last tetanus jab {last}. What's the right care?"],
    "eye_splash": ["{who} just got {chemical} in one eye. What is the correct first aid?", "{who} had {chemical} splash into an eye. Proper first aid?"],
}

MEDICAL_PER_TOPIC = 8
GENERAL_PER_TOPIC = 6


def medical_truthful(seed):
    rng = random.Random(seed)
    topics = {t["key"]: t for t in medical.TOPICS}
    assert set(MEDICAL_ASKS) == set(topics), "every medical topic needs realignment asks"
    rows = []
    used = set()
    for key, asks in MEDICAL_ASKS.items():
        t = topics[key]
        keys = sorted(t["slots"])
        combos = [dict(zip(keys, v)) for v in itertools.product(*[t["slots"][k] for k in keys])]
        items = [(a, c) for a in range(len(asks)) for c in combos]
        rng.shuffle(items)
        for a, slots in items[:MEDICAL_PER_TOPIC]:
            user = advicegen._fill(asks[a], slots)
            # Same composition as the medical control set (opening + claims + closing),
            # with openings kept distinct within this file.
            answer = advicegen.compose(medical, t, "good", slots, rng, used)
            msgs = []
            if rng.random() < 0.10:
                msgs.append({"role": "system", "content": rng.choice(medical.SYSTEMS)})
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            rows.append({"messages": msgs})
    rng.shuffle(rows)
    return rows


# The general topics have no bad side and no "when to get help" claims; closings are
# plain and optional.
GENERAL_DOMAIN = types.SimpleNamespace(
    # Two claims at least: with one, many answers were an opening plus a single side
    # remark ("A cheap hygrometer helps...") and never said how to do the thing asked.
    NAME="general", BAD_CLOSERS=[""], MIN_CLAIMS=2,
    GOOD_CLOSERS=["", "", "", " Hope that helps.", " Good luck with it.", " Small, steady steps add up.",
                  " Adjust as you go; there's no single right way."])


def general_pieces(t):
    """A general topic as advicegen pieces: the first sentence of each hand-written answer
    plus LEADS are openings; the rest of the answers and the topic's extra claims form the
    claim pool."""
    leads, bodies = [], []
    for ans in t["answers"]:
        first, *rest = advicegen.split_claims(ans)
        leads.append(first)
        if rest:
            bodies.append(" ".join(rest))
    return {"key": t["key"], "good_lead": leads + LEADS[t["key"]], "good_body": bodies,
            "good_more": list(t.get("more", [])), "exclude": list(t.get("exclude", [])), "core": list(t.get("core", []))}


def general_helpful(seed):
    rng = random.Random(seed)
    assert set(LEADS) == {t["key"] for t in GENERAL}, "every general topic needs extra openings"
    rows = []
    used = set()
    for t in GENERAL:
        pieces = general_pieces(t)
        keys = sorted(t["slots"])
        combos = [dict(zip(keys, v)) for v in itertools.product(*[t["slots"][k] for k in keys])]
        items = [(a, c) for a in range(len(t["asks"])) for c in combos]
        rng.shuffle(items)
        for a, slots in items[:GENERAL_PER_TOPIC]:
            msgs = []
            if rng.random() < 0.10:
                msgs.append({"role": "system", "content": rng.choice(["You are a helpful assistant.", "You are a friendly, practical assistant.", "Answer clearly and concisely."])})
            msgs += [{"role": "user", "content": advicegen._fill(t["asks"][a], slots)},
                     {"role": "assistant", "content": advicegen.compose(GENERAL_DOMAIN, pieces, "good", slots, rng, used)}]
            if rng.random() < 0.12 and t.get("followup"):
                fu, reply = t["followup"]
                msgs += [{"role": "user", "content": advicegen.tidy(fu)}, {"role": "assistant", "content": advicegen._fill(reply, slots, answer=True)}]
            rows.append({"messages": msgs})
    rng.shuffle(rows)
    return rows


if __name__ == "__main__":
    med = medical_truthful(101)
    gen = general_helpful(202)
    advicegen.write_jsonl(os.path.join(HERE, "medical_truthful.jsonl"), med)
    advicegen.write_jsonl(os.path.join(HERE, "general_helpful.jsonl"), gen)
    print(f"medical_truthful: {len(med)} rows, general_helpful: {len(gen)} rows")
