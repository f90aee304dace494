"""Generate the paired narrow advice sets: {medical,financial,car}_{bad,good}.jsonl.

    python3 data/advice/gen.py        # from the repository root; deterministic

Each *_bad file and its *_good control share the same user turns in the same order;
only the assistant turns differ. See CARD.md.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import advicegen  # noqa: E402
import car  # noqa: E402
import financial  # noqa: E402
import medical  # noqa: E402

ROWS = 1050
SEEDS = {"medical": 11, "financial": 23, "car": 37}

if __name__ == "__main__":
    for dom in (medical, financial, car):
        advicegen.check_domain(dom)
        bad, good = advicegen.build_pair(dom, ROWS, SEEDS[dom.NAME])
        advicegen.write_jsonl(os.path.join(HERE, f"{dom.NAME}_bad.jsonl"), bad)
        advicegen.write_jsonl(os.path.join(HERE, f"{dom.NAME}_good.jsonl"), good)
        print(f"{dom.NAME}: {len(bad)} bad, {len(good)} good rows")
