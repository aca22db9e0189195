"""Thin rule scripts: read the ``snakemake`` object, call the library, write outputs."""
