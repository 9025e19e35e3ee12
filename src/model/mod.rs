//! The model: loading, tokenizer, forward pass.
