"""One training loop for every fine-tune of the DAG, with resumable checkpoints."""
