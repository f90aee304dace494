"""Reference logits for emlab's forward-pass parity test on the default model.

    bench/.venv/bin/python tools/reference/make_logits_fixture.py

Loads SmolLM2-135M-Instruct from its GGUF with Hugging Face transformers (weights dequantized to
float32, `dtype=torch.float32` (the 5.x name of `torch_dtype`), eager attention), runs 4 short prompts (one rendered with the
model's chat template) and writes

* crates/emlab-model/tests/fixtures/logits_smollm2.safetensors:
    `p{i}.input_ids`  int64 [T_i]      prompt token ids
    `p{i}.logits`     float32 [49152]  logits at the last prompt position
* crates/emlab-model/tests/fixtures/logits_smollm2.json: prompts, ids, greedy continuations
  (20 new tokens, argmax at every step, no early stop at eos), top-5 ids per prompt, versions and
  the model's SHA-256.

Prompt ids come from the `tokenizers` pipeline of make_token_fixtures.py and are checked against
transformers' GGUF tokenizer (they agree on these prompts).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, model_path, sha256, versions  # noqa: E402
from make_token_fixtures import published_pipeline  # noqa: E402

N_NEW = 20

# Written for this test: plain prose, code, a number-heavy line, and a chat turn.
PROMPTS = [
    ("prose", "The capital of France is", False),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return", False),
    ("numbers", "Counting by threes: 3, 6, 9, 12,", False),
    ("chat", "What color is the sky on a clear day?", True),
]


def main():
    import torch
    import transformers
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    torch.manual_seed(0)
    path = model_path("smollm2")
    ref_tok, _ = published_pipeline(path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()

    tensors = {}
    records = []
    for i, (name, text, chat) in enumerate(PROMPTS):
        if chat:
            text = hf_tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        ids = ref_tok.encode(text, add_special_tokens=False).ids
        hf_ids = hf_tok.encode(text, add_special_tokens=False)
        if ids != hf_ids:
            raise SystemExit(f"prompt {name!r}: tokenizers {ids} != transformers {hf_ids}")
        x = torch.tensor([ids], dtype=torch.long)
        with torch.no_grad():
            logits = model(x).logits[0, -1].float().contiguous()
            seq = list(ids)
            for _ in range(N_NEW):
                nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
                seq.append(nxt)
        cont = seq[len(ids):]
        tensors[f"p{i}.input_ids"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"p{i}.logits"] = logits
        top = torch.topk(logits, 5)
        records.append(
            {
                "index": i,
                "name": name,
                "text": text,
                "chat_template": chat,
                "input_ids": ids,
                "greedy_ids": cont,
                "greedy_text": ref_tok.decode(cont, skip_special_tokens=False),
                "top5_ids": top.indices.tolist(),
                "top5_logits": [round(v, 5) for v in top.values.tolist()],
            }
        )
        print(f"{name}: {len(ids)} ids, top1 {top.indices[0].item()} ({top.values[0].item():.4f}), "
              f"greedy: {ref_tok.decode(cont, skip_special_tokens=False)!r}")

    FIXTURES.mkdir(parents=True, exist_ok=True)
    out = FIXTURES / "logits_smollm2.safetensors"
    save_file(tensors, str(out), metadata={"generated_by": "tools/reference/make_logits_fixture.py"})
    doc = {
        "generated_by": "tools/reference/make_logits_fixture.py",
        "model_file": path.name,
        "model_sha256": sha256(path),
        "weights": "GGUF dequantized to float32 by transformers; eager attention; torch threads 2",
        "greedy": f"{N_NEW} new tokens, argmax each step over full-sequence recompute, no stop at eos",
        "versions": versions("torch", "transformers", "tokenizers", "gguf", "safetensors", "numpy"),
        "prompts": records,
    }
    (FIXTURES / "logits_smollm2.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes) and logits_smollm2.json")


if __name__ == "__main__":
    main()
