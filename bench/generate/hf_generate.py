"""HF transformers (PyTorch CPU) side of bench_generate.sh: the same GGUF, the same chat prompt.

    bench/.venv/bin/python bench/generate/hf_generate.py MODEL.gguf --only=single|batched \
        [--cache=static|dynamic] [--threads 2]
    bench/.venv/bin/python bench/generate/hf_generate.py MODEL.gguf --render-prompt PROMPT.json

Prints one JSON line per measurement, shaped like emlab's `bench_generate` example:
- single: greedy decode, 128 new tokens, `min_new_tokens=128` so EOS cannot end it early;
- batched: 64 copies of the prompt, temperature 1, top_p 1, top_k 0 (plain sampling),
  200 new tokens each (`min_new_tokens=200`), in one `generate` call.
Timed region: the `generate` call (prefill + decode), after a short untimed warm-up with the
same batch shape and cache kind, as on the emlab side.
`--render-prompt` writes the chat-rendered prompt text and token ids (the tokenizer's own chat
template, default system prompt included) for the llama.cpp side to use verbatim.
"""
import argparse
import json
import os
import sys
import time

PROMPT = "Write a short story about a robot who learns to paint."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--only", choices=["single", "batched", "all"], default="all")
    ap.add_argument("--cache", choices=["static", "dynamic"], default="static")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render-prompt", metavar="OUT.json")
    a = ap.parse_args()

    import torch
    from importlib.metadata import version
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    d, f = os.path.dirname(os.path.abspath(a.model)), os.path.basename(a.model)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if a.render_prompt:
        with open(a.render_prompt, "w") as fh:
            json.dump({"text": text, "ids": ids}, fh)
        return

    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
    model.eval()
    common = {"impl": "transformers", "torch": torch.__version__, "transformers": version("transformers"),
              "threads": torch.get_num_threads(), "prompt_tokens": len(ids)}
    eos = tok.eos_token_id

    def run(batch, new_tokens, cache, **sampling):
        x = torch.tensor([ids] * batch, dtype=torch.long)
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=eos,
                  attention_mask=torch.ones_like(x), **sampling)
        if cache == "static":
            kw["cache_implementation"] = "static"
        with torch.inference_mode():
            model.generate(x, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
            t = time.perf_counter()
            out = model.generate(x, **kw)
            secs = time.perf_counter() - t
        new = out[:, x.shape[1]:]
        return new, secs

    if a.only in ("single", "all"):
        new, secs = run(1, 128, a.cache, do_sample=False)
        n = new.shape[1]
        print(json.dumps({**common, "bench": "single_stream_decode", "cache": a.cache, "new_tokens": n,
                          "seconds": secs, "tokens_per_s": n / secs,
                          "text_head": tok.decode(new[0][:24])}), flush=True)
    if a.only in ("batched", "all"):
        torch.manual_seed(0)
        new, secs = run(64, 200, a.cache, do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
        total = new.numel()
        distinct = len({tuple(r.tolist()) for r in new})
        print(json.dumps({**common, "bench": "batched_sampling", "cache": a.cache, "samples": new.shape[0],
                          "new_tokens_total": total, "distinct_samples": distinct, "seconds": secs,
                          "tokens_per_s": total / secs}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
