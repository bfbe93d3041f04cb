"""steelflow: a reproducible Snakemake + DVC pipeline for Severstal steel defect detection."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("steelflow")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "unknown"
