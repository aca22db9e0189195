"""Stage 1: corpus preparation and the prompts built from it."""
