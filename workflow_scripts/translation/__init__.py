"""GPT translation of parallel data through any OpenAI-compatible server."""
