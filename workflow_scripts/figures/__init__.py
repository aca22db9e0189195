"""Stage 6: every figure of the DAG."""
