"""The config every stage reads, the code each stage runs, and helpers shared by the rules."""

import os
import shlex
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from snakemake.logging import logger

from steelflow.recorded import (
    RECORDS,
    align_times,
    forget_overruled,
    locked_stages,
    rule_params,
    stale,
)
from steelflow.config import (
    STAGE_SECTIONS,
    dotted_leaves,
    format_override,
    local_path,
    retyped,
    set_dotted,
    validate,
)

# --config KEY=VALUE (a section as KEY='{epochs: 1}') as dotted keys. Snakemake
# reads values inside a section as text, so each is read again as a number or YAML.
OVERRIDES = {
    key: retyped(value) for key, value in dotted_leaves(workflow.config_settings.config).items()
}
for key, value in OVERRIDES.items():
    set_dotted(config, key, value)
validate(config)


def config_arguments():
    """What each stage is told, so that it reads the config Snakemake validated:
    config.yaml, then each --configfile, then each --config KEY=VALUE."""
    files = [] if workflow.config_settings.replace_workflow_config else [Path("config.yaml")]
    files += workflow.config_settings.configfiles
    here = Path.cwd()
    names = [str(f.relative_to(here)) if f.is_relative_to(here) else str(f) for f in files]
    sets = [format_override(key, value) for key, value in OVERRIDES.items()]
    return " ".join(
        [f"--config {shlex.quote(n)}" for n in names] + [f"--set {shlex.quote(s)}" for s in sets]
    )


class Arguments:
    """Text for a shell command that is not a rerun trigger: Snakemake leaves params it
    cannot serialise out of its record, so the `settings` params alone (which leave out
    the machine section) decide when a rule reruns."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


CONFIG = Arguments(config_arguments())


IMAGE_FOLDERS = ("train_images", "test_images")


def local_source(wildcards):
    """The local source, where there is one: fetch's inputs, so that a newer one fetches
    again. A zip; or a folder, its entries and, in a folder beside them (the files
    extracted inside one folder), theirs: a folder's time is that of its list of files,
    not of the files, so an image folder stands for its images' names and a train.csv
    copied over the old one is seen."""
    data = config["data"]
    if data["source"] != "local" or not data["local_path"]:
        return []
    path = local_path(data["local_path"])
    if not path.is_dir():
        return [str(path)] if path.exists() else []  # else fetch says so in its own line
    entries = shown_entries(path)
    folders = [e for e in entries if e.is_dir() and e.name not in IMAGE_FOLDERS]
    below = [p for folder in folders for p in shown_entries(folder)]
    return [str(path), *map(str, entries), *map(str, below)]


def shown_entries(folder):
    """The entries of ``folder`` but hidden ones; none where it cannot be read (fetch
    then says so in its own line)."""
    try:
        return [p for p in folder.iterdir() if not p.name.startswith(".")]
    except OSError:
        return []


def rerun_marker(stage):
    """The input whose time reruns ``stage`` where its record is stale (see below)."""
    return str(RECORDS / f"{stage}.rerun")


# Outputs DVC wrote back (dvc commit --force, dvc pull) carry DVC's times, not the
# pipeline's: line up those of each stage dvc.lock holds for. Outputs DVC made (dvc
# repro) or checked out (dvc checkout) have Snakemake records of an earlier run: where
# dvc.lock holds for every stage, drop them. So Snakemake sees what DVC's record says
# (steelflow/recorded.py).
if workflow.is_main_process:
    HERE = Path.cwd()
    STAGES = locked_stages(HERE)
    for moved in align_times(HERE, STAGES):
        logger.info(f"{moved.relative_to(HERE)}: time set after its inputs', as dvc.lock records it")
    for made in forget_overruled(HERE, STAGES, config):
        logger.info(
            f"{made.relative_to(HERE)}: made by DVC as it would be now; Snakemake's record dropped"
        )
    # After `dvc pull` Snakemake has no params of its own to compare: there the record DVC
    # pulled with a stage's outputs (results/stages/STAGE.yaml) says what they were made
    # with. Each stage has an input, STAGE.rerun, whose time says whether that record is
    # stale: now if so, which reruns the stage and the config stage (which rewrites the
    # records), else 1970, which reruns nothing; the set of inputs stays the same.
    RECORDS.mkdir(parents=True, exist_ok=True)
    for stage in STAGE_SECTIONS:
        marker = Path(rerun_marker(stage))
        marker.touch()
        if stale(config, stage):
            logger.info(f"{stage}: made otherwise than its record says (steelflow.recorded)")
        else:
            os.utime(marker, (0, 0))

# Rules run `steelflow` from the environment that runs Snakemake, so a venv works
# without being activated. Under conda the environment holds steelflow's dependencies
# alone (workflow/envs/steelflow.yaml) and `steelflow` runs this checkout's package,
# found by PYTHONPATH, wherever --conda-prefix puts the environment. A prefix replaces
# Snakemake's default one, bash's strict mode, so it starts with it; shell.prefix reads
# braces as placeholders, hence the doubling.
SHELL_PREFIX = "set -euo pipefail; " if Path(shell.get_executable() or "").name == "bash" else ""
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    SHELL_PREFIX += f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH; "
else:
    SHELL_PREFIX += (
        f"export PYTHONPATH={shlex.quote(str(Path(workflow.basedir).resolve()))}"
        '"${PYTHONPATH:+:$PYTHONPATH}"; '
        'steelflow() { python -m steelflow "$@"; }; '
    )
shell.prefix(SHELL_PREFIX.replace("{", "{{").replace("}", "}}"))

# What reruns a rule: besides its inputs, the settings it reads and the fingerprint
# of the code its command runs (steelflow.code.fingerprint), both params (rule_params),
# and where Snakemake has no params of its own (after `dvc pull`) the time of its rerun
# marker (above). A comment, docstring or help text changes no fingerprint, so it
# reruns nothing; dvc.yaml's stages depend on the same two, written by the config
# stage to results/stages/STAGE.yaml.

# Light rules run where Snakemake runs, not as cluster jobs (fetch also needs
# the network, which compute nodes often lack).
localrules:
    all,
    bundle,
    config,
    fetch,
    split,
    score,


STAGE_FILES = expand(
    "results/stages/{stage}.yaml", stage=[s for s in STAGE_SECTIONS if s != "config"]
)


def fold_models(network):
    """The checkpoints of ``network`` for every fold of train.folds."""
    return expand(f"models/{network}_f{{fold}}.pt", fold=config["train"]["folds"])


def train_threads():
    """Cores of a training job: all of them on a CPU; on GPUs each process's loader
    workers and itself (train.nproc_per_node processes), at most the cores' share of
    each of the jobs that --resources gpu=N runs at once, so that fold jobs run side by
    side, as many as the GPUs allow."""
    if config["train"]["device"] != "cuda":
        return workflow.cores
    per_job = config["train"]["nproc_per_node"]
    wanted = per_job * (config["machine"]["workers"] + 1)
    gpus = workflow.global_resources.get("gpu")
    if not gpus:
        return wanted
    return max(1, min(wanted, workflow.cores // max(1, gpus // per_job)))


def train_disk_mb(network):
    """disk_mb of a training job of ``network``: its decoded images in resources.tmpdir
    (Snakemake's $TMPDIR, where steelflow.train.scratch_folder puts them): one uint8
    array, shared by the job's processes, of at most every image of results/split.csv
    (one row each), at
    the network's scale: 256x1600 bytes an image at scale 1 (the Kaggle U-Net: 12,568
    images, 5,150 MB), plus 1,000 MB for checkpoints and slack. Before the split exists
    Snakemake holds the value as "to be determined" (reading the file fails) and asks
    again when the job is ready to run, so the count is the real one, never a guess."""
    scale = config[network]["scale"]
    image_mb = round(256 * scale) * round(1600 * scale) / 1e6

    def disk_mb(wildcards, input):
        with open(input.split) as split:
            images = sum(1 for _ in split) - 1  # a header, then one row per image
        return round(images * image_mb) + 1000

    return disk_mb


def gpus():
    """GPUs a job asks the scheduler for: one per process when config asks for CUDA."""
    return config["train"]["nproc_per_node"] if config["train"]["device"] == "cuda" else 0


def all_outputs():
    """The final products of the workflow."""
    return [
        "results/config.yaml",
        "results/eda/stats.json",
        "submission.csv",
        "results/metrics.json",
        "dist/kaggle",
    ]


def classifier_start(wildcards):
    """The U-Net checkpoint whose encoder the classifier starts from, if it does."""
    if config["classifier"]["pretrained"] == "unet":
        return f"models/unet_f{wildcards.fold}.pt"
    return []
