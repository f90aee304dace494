"""Writes the PEFT fixture that emlab-train's tests load (crates/emlab-train/tests/fixtures/peft_tiny).

A tiny LlamaForCausalLM built from a config (random weights, fixed seed), saved by transformers as an
HF folder; two adapters made by real PEFT (`get_peft_model` + `save_pretrained`) with non-zero B; and
the logits transformers + PEFT compute for a fixed input, with and without each adapter. The Rust test
loads the same folders in emlab and compares logits: an independent check of emlab's PEFT reader and
of its LoRA forward (scale alpha/r vs alpha/sqrt(r), layers_to_transform, target subsets).

    bench/.venv/bin/python bench/train/make_peft_fixture.py crates/emlab-train/tests/fixtures/peft_tiny
"""
import copy
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1] if len(sys.argv) > 1 else "crates/emlab-train/tests/fixtures/peft_tiny"
os.makedirs(out, exist_ok=True)
torch.manual_seed(1234)
cfg = LlamaConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=64,
    tie_word_embeddings=True, initializer_range=0.2,
)
model = LlamaForCausalLM(cfg).float().eval()
base_dir = os.path.join(out, "base")
model.save_pretrained(base_dir, safe_serialization=True)
ids = torch.tensor([[1, 5, 9, 20, 33, 63, 2, 7]])
expected = {"ids": ids[0].tolist()}
with torch.no_grad():
    expected["base"] = model(ids).logits[0].flatten().tolist()

all7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
adapters = {
    # rsLoRA on a subset of modules of one layer.
    "rslora_q_v_down_layer1": LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                                         layers_to_transform=[1], lora_dropout=0.0, task_type="CAUSAL_LM"),
    # Plain LoRA (alpha / r) on all seven projections of all layers.
    "lora_all": LoraConfig(r=2, lora_alpha=3, target_modules=all7, lora_dropout=0.0, task_type="CAUSAL_LM"),
}
for name, lcfg in adapters.items():
    pm = get_peft_model(copy.deepcopy(model), lcfg)
    g = torch.Generator().manual_seed(7)
    for n, p in pm.named_parameters():
        if "lora_B" in n:  # PEFT initialises B to zeros; give it values so the adapter matters
            p.data = torch.randn(p.shape, generator=g) * 0.3
    pm.eval()
    pm.save_pretrained(os.path.join(out, name))
    os.remove(os.path.join(out, name, "README.md"))  # PEFT's generated model card: not needed
    with torch.no_grad():
        expected[name] = pm(ids).logits[0].flatten().tolist()

with open(os.path.join(out, "expected_logits.json"), "w") as f:
    json.dump(expected, f)
import peft, transformers  # noqa: E401
print(f"wrote {out} (torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__})")
