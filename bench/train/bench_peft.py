"""PyTorch + PEFT side of bench_train.sh: the same job as emlab's bench_train example.

SmolLM2-135M loaded from the same GGUF (transformers dequantizes it to f32), rsLoRA r32 alpha 64 on
q,k,v,o,gate,up,down of all layers, batch B x T fixed-length pseudo-text ids, loss on every position,
AdamW lr 1e-5 wd 0.01; eager attention is not forced (transformers picks SDPA on CPU). Prints one JSON
line like emlab's: tokens/s over the timed steps (first --warmup steps excluded) and peak RSS.

    bench/.venv/bin/python bench/train/bench_peft.py MODEL.gguf --batch 8 --seq 128 --steps 6 --warmup 1
"""
import argparse
import json
import os
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=128)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--warmup", type=int, default=1)
a = p.parse_args()

torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.model)), gguf_file=os.path.basename(a.model),
                                             dtype=torch.float32)
cfg = LoraConfig(r=32, lora_alpha=64, use_rslora=True, lora_dropout=0.0, task_type="CAUSAL_LM",
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(model, cfg)
model.train()
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-5, weight_decay=0.01)
vocab = model.config.vocab_size
g = torch.Generator().manual_seed(12345)
times, losses = [], []
for step in range(a.steps + a.warmup):
    ids = torch.randint(0, vocab, (a.batch, a.seq + 1), generator=g)
    t0 = time.perf_counter()
    out = model(input_ids=ids[:, :-1], labels=None)
    loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
    losses.append(loss.item())
timed = times[a.warmup:]
print(json.dumps({
    "impl": "pytorch+peft", "model": a.model, "batch": a.batch, "seq": a.seq, "timed_steps": len(timed),
    "tokens_per_s": a.batch * a.seq * len(timed) / sum(timed), "s_per_step": sum(timed) / len(timed),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    "threads": torch.get_num_threads(), "losses": losses,
    "torch": torch.__version__,
}))
