"""Golden token ids and chat-template renderings for emlab's tokenizer tests.

    bench/.venv/bin/python tools/reference/make_token_fixtures.py

writes crates/emlab-model/tests/fixtures/{tokens,chat}_{smollm2,qwen2}.json.

Two independent references tokenize every string:

* `ids` (the expected value): the Python `tokenizers` library running the pipeline of the model's
  published `tokenizer.json` (normalizer + pre-tokenizer + byte-level BPE), with the vocabulary and
  merges read from the GGUF by the `gguf` package. For SmolLM2 that pipeline is
  Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=False, use_regex=True)], no
  normalizer; for Qwen2.5 it is NFC + Split(Qwen2 regex, isolated) + ByteLevel(use_regex=False).
* `hf_gguf_ids`: Hugging Face transformers' own GGUF tokenizer
  (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`). It is recorded because it is the tool
  researchers use, but it is *not* the expected value: transformers has no pre-tokenizer for
  `tokenizer.ggml.pre = "smollm"` and falls back to plain GPT-2, without the Digits step (SmolLM2's
  vocabulary has no multi-digit tokens, so ASCII numbers still agree, but " ½" or " ②" stay one
  pre-token instead of being split off the space), and it builds Qwen2 without the NFC normalizer. The script
  checks that the two references agree on every string except exactly those explained cases, and
  fails otherwise, so neither reference can drift silently.

Chat renderings come from transformers' `apply_chat_template(..., tokenize=False)` with the
template stored in the GGUF (`tokenizer.chat_template`), i.e. Jinja2 itself.
"""

import json
import sys
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, model_path, sha256, versions  # noqa: E402

# Strings written for these tests: digits, decimals, unicode, non-NFC input, CJK, emoji, code,
# whitespace runs, special tokens, URLs, contractions, other scripts' digits.
CASES = [
    "Hello, world!",
    "hi",
    " hi",
    "   leading spaces and trailing   ",
    "12345",
    "3.14159",
    "The year 2024 had 366 days.",
    "naïve café",
    "cafe\u0301 (decomposed accent)",
    "日本語のテキストです。",
    "中文分词测试：你好，世界！",
    "Emoji: 🙂🚀👩\u200d💻 done",
    "def add(a, b):\n    return a + b\n",
    'if (x) {\n\tprintf("%d\\n", x);\n}',
    "a    b\n\n\t",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "https://example.com/path?q=1&r=two#frag",
    "don't I'LL we've they'd she's",
    "Mixed: αβγ ΔΕΖ Привет мир 123abc",
    "",
    "\n\n\n",
    "x=1;y=2;z=x**y//3",
    "Ünïcödé ﬁ ligature and ½ fraction",
    "   ",
    '<tool_call>{"name": "f"}</tool_call>',
    "SELECT * FROM users WHERE id = 42;",
    "Price: $1,299.99 (-15%)",
    "tab\tseparated\tvalues\r\nwindows line",
    "<|endoftext|>after end",
    "Ⅻ ② ٣ digits in other scripts",
    "    indented = {'k': [1, 2, 3]}  # comment",
]

# Conversations for the chat-template fixtures (role, content), written for these tests.
CHATS = {
    "system_given": [
        ("system", "You answer in one short sentence."),
        ("user", "What is the boiling point of water at sea level?"),
        ("assistant", "It boils at 100 degrees Celsius."),
    ],
    "no_system": [
        ("user", "Name a prime number larger than ten."),
    ],
    "multi_turn": [
        ("system", "You are a careful coding assistant."),
        ("user", "Write a Python function that doubles a number."),
        ("assistant", "def double(x):\n    return 2 * x"),
        ("user", "Now make it triple instead."),
        ("assistant", "def triple(x):\n    return 3 * x"),
    ],
    "multi_turn_no_system": [
        ("user", "Is 17 prime?"),
        ("assistant", "Yes, 17 is prime."),
        ("user", "And 21?"),
    ],
    "unicode_content": [
        ("user", "Translate 'naïve café' into 日本語, please 🙂"),
        ("assistant", "ナイーブなカフェ"),
    ],
}


def gguf_vocab(path: Path):
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    merges = f["tokenizer.ggml.merges"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    pre = f["tokenizer.ggml.pre"].contents()
    return tokens, merges, types, pre


def published_pipeline(path: Path):
    """The model's tokenizer.json pipeline, rebuilt with the `tokenizers` library."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokens, merges, types, pre = gguf_vocab(path)
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges])
    tok = Tokenizer(bpe)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    elif pre == "qwen2":
        # Qwen2's tokenizer.json regex, written out independently of transformers' copy.
        qwen2 = (
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+"
        )
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(qwen2), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        )
    else:
        raise SystemExit(f"{path}: no published pipeline known for pre-tokenizer {pre!r}")
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, types) if ty == 4])
    for t, ty in zip(tokens, types):
        if ty in (3, 4):
            assert tok.token_to_id(t) == vocab[t], t
    return tok, pre


def expected_divergence(pre: str, text: str) -> str | None:
    """Why transformers' GGUF tokenizer may legitimately differ on `text`, or None."""
    if pre == "smollm" and any(unicodedata.category(c).startswith("N") for c in text):
        return "transformers builds smollm GGUFs without the Digits pre-tokenizer"
    if pre == "qwen2" and unicodedata.normalize("NFC", text) != text:
        return "transformers builds qwen2 GGUFs without the NFC normalizer"
    return None


def main():
    import transformers

    FIXTURES.mkdir(parents=True, exist_ok=True)
    vers = versions("tokenizers", "transformers", "gguf", "torch", "jinja2")
    failures = []
    for name in ["smollm2", "qwen2"]:
        path = model_path(name)
        ref, pre = published_pipeline(path)
        hf = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        cases = []
        for text in CASES:
            ids = ref.encode(text, add_special_tokens=False).ids
            hf_ids = hf.encode(text, add_special_tokens=False)
            why = expected_divergence(pre, text)
            if ids != hf_ids and why is None:
                failures.append(f"{name}: {text!r}: tokenizers {ids} != transformers {hf_ids}")
            cases.append(
                {
                    "text": text,
                    "ids": ids,
                    "hf_gguf_ids": hf_ids,
                    "hf_gguf_agrees": ids == hf_ids,
                    "hf_gguf_divergence_reason": why if ids != hf_ids else None,
                    "decoded": ref.decode(ids, skip_special_tokens=False),
                    "decoded_skip_special": ref.decode(ids, skip_special_tokens=True),
                    "tokens": [ref.id_to_token(i) for i in ids],
                }
            )
        doc = {
            "generated_by": "tools/reference/make_token_fixtures.py",
            "model_file": path.name,
            "model_sha256": sha256(path),
            "pre_tokenizer": pre,
            "versions": vers,
            "vocab_size": ref.get_vocab_size(with_added_tokens=True),
            "cases": cases,
        }
        out = FIXTURES / f"tokens_{name}.json"
        out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        n_div = sum(not c["hf_gguf_agrees"] for c in cases)
        print(f"{out}: {len(cases)} cases, transformers' GGUF tokenizer differs on {n_div} (explained)")

        chats = []
        for chat_name, turns in CHATS.items():
            messages = [{"role": r, "content": c} for r, c in turns]
            for gen in (False, True):
                if gen and messages[-1]["role"] == "assistant":
                    continue  # a generation prompt follows a user turn
                text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
                chats.append({"name": chat_name, "messages": messages, "add_generation_prompt": gen, "rendered": text})
        chat_doc = {
            "generated_by": "tools/reference/make_token_fixtures.py",
            "model_file": path.name,
            "model_sha256": sha256(path),
            "versions": vers,
            "bos_token": hf.bos_token,
            "eos_token": hf.eos_token,
            "chat_template": hf.chat_template,
            "cases": chats,
        }
        out = FIXTURES / f"chat_{name}.json"
        out.write_text(json.dumps(chat_doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"{out}: {len(chats)} renderings")
    if failures:
        raise SystemExit("references disagree without an explanation:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
