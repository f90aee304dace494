//! Chat templates rendered with minijinja (owned by the tokenizer work).
