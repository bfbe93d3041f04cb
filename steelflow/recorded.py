"""What each stage was made with (its record: results/stages/STAGE.yaml), and Snakemake's
file times made to agree with DVC's record of the same pipeline.

A stage's record is the fingerprint of its code and the settings it reads. DVC's stages
depend on their records; Snakemake keeps its own (params) in .snakemake, which a fresh
clone filled by ``dvc pull`` lacks: there a record that differs from what the stage
would now be made with (``stale``) is Snakemake's cue to rerun it.

DVC writes outputs back in its own order (``dvc commit``, ``checkout``, ``pull``), so a
U-Net checkpoint can end up newer than the classifier trained from it. Snakemake goes
by file times where it has no record of its own (a fresh clone) or the file is too
large to checksum, and would redo that work. Where dvc.lock vouches for the whole
pipeline (``dvc status``: up to date), the times are lined up in pipeline order; where
anything changed, they are left alone and Snakemake decides as always.
"""

from __future__ import annotations

import os
from pathlib import Path

TIMESTAMP = ".snakemake_timestamp"  # what Snakemake reads as a directory output's time
RECORDS = Path("results/stages")


def record(config: dict, stage: str) -> dict:
    """What ``stage`` is made with: its code's fingerprint and the settings it reads."""
    from steelflow.code import fingerprint, stage_command
    from steelflow.config import stage_settings

    return {"code": fingerprint(stage_command(stage)), **stage_settings(config, stage)}


def write_records(config: dict, folder: Path = RECORDS) -> None:
    """Every stage's record (but the config stage's, the resolved config) in ``folder``."""
    import yaml

    from steelflow.atomic import atomic_path
    from steelflow.config import STAGE_SECTIONS

    for stage in STAGE_SECTIONS.keys() - {"config"}:
        with atomic_path(folder / f"{stage}.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(record(config, stage), sort_keys=False))


def stale(config: dict, stage: str, folder: Path = RECORDS) -> bool:
    """Whether ``stage``'s record in ``folder`` says it was made otherwise than it would
    be now (the config stage's: the resolved config beside ``folder``); False where
    there is none."""
    import yaml

    from steelflow.config import stage_settings

    path = folder.parent / "config.yaml" if stage == "config" else folder / f"{stage}.yaml"
    try:
        recorded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    now = stage_settings(config, stage) if stage == "config" else record(config, stage)
    return recorded != now


def _time_file(path: Path) -> Path:
    """The file whose time Snakemake takes for ``path``."""
    return path / TIMESTAMP if (path / TIMESTAMP).is_file() else path


def _mtime_ns(path: Path) -> int:
    return _time_file(path).stat().st_mtime_ns


def benchmark_file(stage: str) -> Path:
    """The Snakemake benchmark file of a dvc.yaml stage (train_unet@0:
    logs/benchmarks/train_unet_f0.tsv), which Snakemake counts among its outputs' times."""
    name, _, fold = stage.partition("@")
    return Path("logs/benchmarks") / f"{name}{f'_f{fold}' if fold else ''}.tsv"


def _dependencies_first(graph) -> list:
    """The stages of DVC's graph, each after every stage it depends on."""
    order: list = []

    def visit(stage) -> None:
        if stage not in order:
            for before in graph.successors(stage):
                visit(before)
            order.append(stage)

    for stage in graph.nodes:
        visit(stage)
    return order


def align_times(root: Path, records: str = "results/stages") -> list[Path]:
    """Where dvc.lock in ``root`` holds for every stage, make each stage's outputs (and
    its Snakemake benchmark file) no older than the outputs of other stages it reads,
    stage by stage in pipeline order. ``records``, DVC's own inputs of each stage, are
    not Snakemake's and do not count. Returns the outputs whose time moved."""
    if not (root / "dvc.lock").is_file():
        return []
    from dvc.repo import Repo

    moved = []
    with Repo(str(root)) as repo:
        if repo.status():
            return []
        graph = repo.index.graph  # an edge runs from a stage to one it depends on
        for stage in _dependencies_first(graph):
            made = {Path(o.fs_path) for before in graph.successors(stage) for o in before.outs}
            deps = [Path(d.fs_path) for d in stage.deps]  # a folder stands for what is in it
            inputs = [
                path
                for path in made
                if any(path.is_relative_to(dep) for dep in deps)
                and not path.is_relative_to(root / records)
            ]
            outs = [Path(o.fs_path) for o in stage.outs]
            if not inputs or not all(out.exists() for out in outs):
                continue
            benchmark = root / benchmark_file(stage.addressing)
            newest = max(_mtime_ns(path) for path in inputs)
            for path in [*outs, *([benchmark] if benchmark.is_file() else [])]:
                if _mtime_ns(path) < newest:
                    os.utime(_time_file(path), ns=(newest, newest))
                    moved.append(path)
    return moved
