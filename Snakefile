"""Where languages live inside large language models: one DAG from corpus to ablation.

Wiring only: config validation, the rule files, the `all` target.
"""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


report: "resources/report/workflow.rst"


validate(config, "resources/schemas/config.schema.yaml")


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
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
