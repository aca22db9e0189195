"""Stage 3: linguistic regions from per-element parameter scores (Zhang et al.).

The settings each job reads (its rerun keys, passed as the rule's ``params``), torch-free
so the Snakefile can import them.
"""

# delta_scores / grad_x_param_scores (scores.py) and freeze_train (freeze.py)
SCORE_SETTINGS = (
    "score n_docs max_length steps batch_size lr weight_decay trainable seed engine zero_stage"
).split()
# perturbation_table (perturbation.py)
PERTURB_SETTINGS = ("score", "k", "perturb", "perturb_scale", "perturb_kinds")
