"""Dequantize every tensor of crates/emlab-model/tests/fixtures/all_dtypes.gguf with the `gguf`
Python package (llama.cpp's reference implementation, independent of candle) and write the
expected f32 values to all_dtypes_expected.json. Used by crates/emlab-model/tests/gguf_dtypes.rs.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install gguf==0.19.0 numpy
    /tmp/v/bin/python tools/reference/dequant_fixture.py
"""
import json, sys
import numpy as np
from gguf import GGUFReader, quants

path = sys.argv[1] if len(sys.argv) > 1 else "crates/emlab-model/tests/fixtures/all_dtypes.gguf"
r = GGUFReader(path)
out = {}
for t in r.tensors:
    vals = quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    out[t.name] = {"type": t.tensor_type.name, "values": [float(v) for v in vals]}
json.dump(out, open(path.replace(".gguf", "_expected.json"), "w"))
print("wrote", len(out), "tensors")
