"""Helpers shared by the rules."""

from pathlib import Path


def config_file():
    """The config file each `steelflow` stage reads: config.yaml or the one --configfile."""
    given = workflow.config_settings.configfiles
    if workflow.config_settings.config or len(given) > 1:
        raise ValueError(
            "steelflow stages read one config file: change config.yaml or pass a single "
            "--configfile, not --config KEY=VALUE or several files"
        )
    if not given:
        return "config.yaml"
    path = Path(given[0])
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


CONFIG_FILE = config_file()

# Light rules run where Snakemake runs, not as cluster jobs (fetch also needs
# the network, which compute nodes often lack).
localrules:
    all,
    fetch,
    split,
    score,


def training_settings(network):
    """The config a network's training reads; a change reruns the rule."""
    keys = ("seed", "split", "train", "augment", network)
    return {key: config[key] for key in keys}


def gpus():
    """GPUs a job asks the scheduler for: one per process when config asks for CUDA."""
    return config["train"]["nproc_per_node"] if config["train"]["device"] == "cuda" else 0


def all_outputs():
    """The final products of the workflow."""
    return ["results/eda/stats.json", "submission.csv", "results/metrics.json"]
