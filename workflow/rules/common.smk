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


def training_settings(network):
    """The config a network's training reads; a change reruns the rule."""
    keys = ("seed", "split", "train", "augment", network)
    return {key: config[key] for key in keys}


def gpus():
    """GPUs a training job asks the scheduler for: 1 when config asks for CUDA."""
    return 1 if config["train"]["device"] == "cuda" else 0


def all_outputs():
    """The final products of the workflow."""
    return ["results/eda/stats.json", "submission.csv", "results/metrics.json"]
