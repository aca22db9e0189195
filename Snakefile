"""Where languages live inside large language models: one DAG from corpus to ablation.

Wiring only: config validation, the rule files, the `all` target.
"""

import sys

from snakemake.utils import min_version

min_version("9.0")

# the library is installed (pip install -e .); this also finds it in a plain checkout
sys.path.insert(0, workflow.basedir)

from workflow_scripts.config import validate_config


configfile: "config.yaml"


report: "resources/report/workflow.rst"


# the schema (snakemake.utils.validate, defaults filled in) and the cross-field checks
validate_config(config)


wildcard_constraints:
    lang="[a-z]{2}",
    condition="[a-z]{2}|parallel",
    model="[^/]+",
    corpus="[^/]+",
    dataset="[^/.][^/]*",


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/translation.smk"
include: "rules/models.smk"
include: "rules/neurons.smk"
include: "rules/figures.smk"
include: "rules/regions.smk"
include: "rules/ablation.smk"
include: "rules/steering.smk"
include: "rules/tasks.smk"
include: "rules/finetune.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
