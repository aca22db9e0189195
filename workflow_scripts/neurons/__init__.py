"""Stage 2: language-specific neurons (activation counting, PLND, LAPE, logit lens).

The settings each job reads, and so re-runs on when they change (the rules pass exactly
these as ``params``; a setting of a later step, such as a selection threshold, re-runs
no statistics). Kept here, torch-free, so the Snakefile can import them.
"""

# count_condition (actcount.py), every condition
ACTCOUNT_SETTINGS = (
    "positions n_prompts max_prompt_chars prompt_prefix split max_new_tokens max_length "
    "batch_size temperature seed chat_template system_prompt prompt_template"
).split()
# ... and the parallel condition (data/prompts.py condition_prompts)
PARALLEL_SETTINGS = ["parallel_languages", "parallel_template", "parallel_item_template"]
PARALLEL_TRANSLATED_SETTINGS = ["parallel_source", "parallel_skip_flagged"]
PIM_SETTINGS = ["parallel_builder", "pim_k", "pim_template"]
# plnd_stats (selection.py) and the LAPE statistics (actcount.count_activations, all positions)
STATS_SETTINGS = {
    "plnd": "variant parts reduction top_fraction epsilon n_docs max_length batch_size split".split(),
    "lape": "n_docs max_length batch_size split".split(),
    "experts": "n_docs max_length batch_size split".split(),  # routing.py routing_counts
}
