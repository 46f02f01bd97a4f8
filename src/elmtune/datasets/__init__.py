"""Data loading, prompt templates, tokenisation with loss masks, batching and packing."""
