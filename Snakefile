"""steelflow: Severstal steel defect detection, from raw images to a scored submission.

Each rule runs one `steelflow <stage>` command; dvc.yaml describes the same stages.
"""

from snakemake.utils import min_version

min_version("8.20")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/predict.smk"


rule all:
    input:
        all_outputs(),
    default_target: True
