"""Task data, prompts, metrics and evaluation (docs/methods.md, "Task evaluation")."""
