"""Models: loading, GGUF conversion, tiny pretrained models, and every architecture fact."""
