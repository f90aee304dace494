"""Writes the tokenizer + chat template of a GGUF model as a small HF tokenizer folder
(tokenizer.json, tokenizer_config.json with the chat template, the GGUF's config as config.json),
so that bench/gpu/run.sh can build shape-identical models on a machine the GGUF cannot be carried to.

    bench/.venv/bin/python bench/gpu/export_tokenizer.py MODEL.gguf OUT_DIR
"""
import json
import os
import sys

from transformers import AutoConfig, AutoTokenizer

gguf, out = sys.argv[1], sys.argv[2]
d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
cfg = AutoConfig.from_pretrained(d, gguf_file=f)
os.makedirs(out, exist_ok=True)
tok.save_pretrained(out)
# emlab reads the template from tokenizer_config.json; transformers may have written it elsewhere.
tc_path = os.path.join(out, "tokenizer_config.json")
tc = json.load(open(tc_path))
if not tc.get("chat_template"):
    tc["chat_template"] = tok.chat_template
json.dump(tc, open(tc_path, "w"), indent=1)
jinja = os.path.join(out, "chat_template.jinja")
if os.path.exists(jinja):
    os.remove(jinja)
cfg.save_pretrained(out)  # config.json: the real shapes (weights are made on the GPU machine)
print(json.dumps({"tokenizer": out, "vocab": len(tok), "model_type": cfg.model_type, "layers": cfg.num_hidden_layers}))
