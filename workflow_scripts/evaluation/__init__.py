"""Stage 4: perplexity, ablation of selections and regions, the findings table."""
