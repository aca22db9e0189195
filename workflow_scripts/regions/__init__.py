"""Stage 3: linguistic regions from per-element parameter scores (Zhang et al.)."""
