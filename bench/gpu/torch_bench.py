"""PyTorch side of bench/gpu/run.sh, plus the model maker both sides share.

    make     --tok DIR --out DIR [--tiny] [--dtype bf16]   random-init HF folder with the tokenizer
                                                            folder's real shapes (or tiny ones)
    train    --model DIR --batch 16 --seq 256 --steps 8 --warmup 2   PEFT rsLoRA r32 a64, 7 projections
    generate --model DIR --batch 64 --prompt-len 32 --new 128        HF generate, static cache
    sae      --d 576 --m 16384 --k 32 --batch 4096 --steps 20        bench/sae/torch_sae.py's TopK SAE

Every mode prints one JSON line. Base weights bf16 on CUDA (f32 on CPU), adapters f32 (PEFT's
autocast_adapter_dtype), SDPA attention. Random weights: throughput depends on shapes only, and
the GGUF models cannot be carried to the GPU machine (docs/gpu.md).
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch

dev = "cuda" if torch.cuda.is_available() else "cpu"


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def dtype_of(name):
    return {"bf16": torch.bfloat16, "f32": torch.float32, "auto": torch.bfloat16 if dev == "cuda" else torch.float32}[name]


def make(a):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(a.tok)
    if a.tiny:
        # Same families, CPU-sized: for run.sh --dry-run.
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 64, 128
        cfg.num_attention_heads, cfg.num_key_value_heads = 4, 2
        if hasattr(cfg, "head_dim"):
            cfg.head_dim = 16
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[:2]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype_of(a.dtype))
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(a.tok, f), os.path.join(a.out, f))
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"made": a.out, "params": n, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "dtype": a.dtype}))


def load(a):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype_of(a.dtype), attn_implementation="sdpa")
    return m.to(dev)


def train(a):
    from peft import LoraConfig, get_peft_model
    model = load(a)
    cfg = LoraConfig(r=32, lora_alpha=64, use_rslora=True, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(12345)
    times, losses = [], []
    for step in range(a.steps + a.warmup):
        ids = torch.randint(0, vocab, (a.batch, a.seq + 1), generator=g).to(dev)
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, vocab), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    timed = times[a.warmup:]
    print(json.dumps({"impl": "pytorch+peft", "task": "train", "model": a.model, "device": dev, "batch": a.batch,
                      "seq": a.seq, "timed_steps": len(timed), "tokens_per_s": a.batch * a.seq * len(timed) / sum(timed),
                      "adapter_dtype": str(params[0].dtype), "losses": losses, "torch": torch.__version__}))


def generate(a):
    model = load(a)
    model.eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(100, vocab - 1000, (a.batch, a.prompt_len), generator=g).to(dev)
    attn = torch.ones_like(ids)
    kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=a.new, min_new_tokens=a.new,
              cache_implementation=a.cache, pad_token_id=0)
    with torch.no_grad():
        # Warm-up at the SAME shapes: the static cache is sized by max_new_tokens and transformers
        # compiles the decode step for it, so a shorter warm-up would leave the compilation
        # inside the timed run (seen on the H100, 2026-11-27: 148 tok/s).
        tw = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=attn, **kw)
        sync()
        warm = time.perf_counter() - tw
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=attn, **kw)
        sync()
        secs = time.perf_counter() - t0
    new = (out.shape[1] - a.prompt_len) * a.batch
    print(json.dumps({"impl": f"hf-generate-{a.cache}", "task": "generate", "model": a.model, "device": dev, "batch": a.batch,
                      "prompt_len": a.prompt_len, "new_tokens": new, "seconds": secs, "tokens_per_s": new / secs,
                      "warmup_s": warm,
                      "torch": torch.__version__}))


def sae(a):
    """One JSON line per (d, variant): `--d 576,896 --variants dense,sparse` runs four in one process."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sae"))
    import torch_sae  # the CPU benchmark's TopK SAE, unchanged: built on the default device
    for d in [int(x) for x in str(a.d).split(",")]:
        for variant in a.variants.split(","):
            torch.set_default_device("cpu")
            data = [x.to(dev) for x in torch_sae.make_data(d, a.batch, 4)]  # CPU generator, then moved
            torch.set_default_device(dev)
            torch.manual_seed(0)
            s = torch_sae.TopKSAE(d, a.m, a.k, lr=2e-4, sparse=variant == "sparse")
            for i in range(a.warmup):
                s.step(data[i % 4])
            sync()
            t0 = time.perf_counter()
            for i in range(a.steps):
                mse = s.step(data[(i + a.warmup) % 4])
            sync()
            secs = time.perf_counter() - t0
            print(json.dumps({"impl": f"torch-{variant}", "task": "sae", "device": dev, "d": d, "m": a.m, "k": a.k,
                              "batch": a.batch, "steps": a.steps, "seconds": secs, "tokens_per_s": a.steps * a.batch / secs,
                              "final_mse": mse, "torch": torch.__version__}), flush=True)
            del s, data


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("make")
    p.add_argument("--tok", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--dtype", default="bf16")
    for name in ("train", "generate"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--dtype", default="auto")
        p.add_argument("--batch", type=int, default=16 if name == "train" else 64)
        if name == "train":
            p.add_argument("--seq", type=int, default=256)
            p.add_argument("--steps", type=int, default=8)
            p.add_argument("--warmup", type=int, default=2)
        else:
            p.add_argument("--prompt-len", type=int, default=32)
            p.add_argument("--new", type=int, default=128)
            p.add_argument("--cache", default="static")
    p = sub.add_parser("sae")
    p.add_argument("--d", default="576")  # comma-separated widths
    for k, v in (("m", 16384), ("k", 32), ("batch", 4096), ("steps", 20), ("warmup", 2)):
        p.add_argument(f"--{k}", type=int, default=v)
    # dense: scatter + GEMM decode; sparse: embedding_bag gathers the k decoder rows.
    p.add_argument("--variants", default="dense")
    a = ap.parse_args()
    {"make": make, "train": train, "generate": generate, "sae": sae}[a.mode](a)


if __name__ == "__main__":
    main()
