import torch

from workflow_scripts.models.tiny import pretrain
from workflow_scripts.steps._step import placement, run, threads

sm = snakemake
torch.set_num_threads(threads(sm))
run(
    sm,
    lambda: pretrain(
        dict(zip(sm.params.languages, sm.input.corpora, strict=True)),
        sm.params.spec,
        sm.output[0],
        sm.params.checkpoint_dir,
        device=placement(sm)["device"],
    ),
)
