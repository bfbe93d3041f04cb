"""steelflow: a reproducible Snakemake + DVC pipeline for Severstal steel defect detection."""

__version__ = "0.1.0"
