//! Tokenizers from tokenizer.json or GGUF metadata (owned by the tokenizer work).
