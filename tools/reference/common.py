"""Shared helpers for emlab's reference-fixture scripts (run with bench/.venv/bin/python).

The fixtures these scripts write are the *independent* side of emlab's parity tests: token ids,
chat renderings and logits computed by the Python ecosystem (Hugging Face `tokenizers` and
`transformers`, PyTorch) from the same GGUF files emlab reads.
"""

import hashlib
import os
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "crates" / "emlab-model" / "tests" / "fixtures"
MODELS = Path(os.environ.get("EMLAB_MODELS", REPO / "models"))

# name -> (GGUF file name, the pre-tokenizer that file's tokenizer.ggml.pre names)
MODEL_FILES = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2": "qwen2.5-coder-0.5b-instruct.gguf",
}


def model_path(name: str) -> Path:
    path = MODELS / MODEL_FILES[name]
    if not path.is_file():
        raise SystemExit(f"{path}: model file missing (set EMLAB_MODELS to the folder holding it)")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions(*names: str) -> dict:
    import platform

    out = {"python": platform.python_version()}
    for n in names:
        out[n] = version(n)
    return out
