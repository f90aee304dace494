"""Loads an adapter that emlab wrote into real PEFT and prints the logits for the given ids as JSON.

    bench/.venv/bin/python bench/train/peft_load_emlab_adapter.py BASE_HF_DIR ADAPTER_DIR 1,5,9
Used by the ignored test `emlab_adapters_load_in_real_peft` (run it with EMLAB_PYTHON=bench/.venv/bin/python).
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

base, adapter, ids = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
model = PeftModel.from_pretrained(model, adapter).eval()
with torch.no_grad():
    print(json.dumps(model(torch.tensor([ids])).logits[0].flatten().tolist()))
