"""Library of the multilingual-neurons workflow.

Every module here knows nothing about Snakemake: rule scripts in
``workflow_scripts/steps`` read ``snakemake.input/params/threads`` and call
these functions, which are unit-tested directly.
"""
