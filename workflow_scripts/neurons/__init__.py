"""Stage 2: language-specific neurons (activation counting, PLND, LAPE, logit lens)."""
