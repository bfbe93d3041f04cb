"""What each stage was made with (its record: results/stages/STAGE.yaml), and Snakemake's
file times made to agree with DVC's record of the same pipeline.

A stage's record is the fingerprint of its code and the settings it reads. DVC's stages
depend on their records; Snakemake keeps its own (params) in .snakemake, which a fresh
clone filled by ``dvc pull`` lacks: there a record that differs from what the stage
would now be made with (``stale``) is Snakemake's cue to rerun it.

DVC writes outputs back in its own order (``dvc commit``, ``checkout``, ``pull``), so a
U-Net checkpoint can end up newer than the classifier trained from it. Snakemake goes
by file times where it has no record of its own (a fresh clone) or the file is too
large to checksum, and would redo that work. And where DVC made an output after
Snakemake did (``dvc repro``, or ``dvc checkout`` of another experiment), Snakemake's
record of it holds the params of its own last run and would redo that work too. The
outputs of each stage that dvc.lock holds for are lined up after its inputs, in
pipeline order (after a partial ``dvc pull`` too). Where it holds for the whole
pipeline (``dvc status``: up to date) and DVC's config stage wrote the stage records,
Snakemake's record of an output is dropped where it differs from what the stage's
record says it was made with, which is what Snakemake would make it with now;
elsewhere Snakemake decides as always.
"""

from __future__ import annotations

import json
import os
from base64 import urlsafe_b64encode
from dataclasses import dataclass
from pathlib import Path

TIMESTAMP = ".snakemake_timestamp"  # what Snakemake reads as a directory output's time
RECORDS = Path("results/stages")
SNAKEMAKE_RECORDS = Path(".snakemake/metadata")  # Snakemake's record of each output


def record(config: dict, stage: str) -> dict:
    """What ``stage`` is made with: its code's fingerprint and the settings it reads (its
    rule's params, ``rule_params``, as one mapping)."""
    params = rule_params(config, stage)
    return {"code": params["code"], **params.get("settings", {})}


def rule_params(config: dict, stage: str) -> dict:
    """The params of ``stage``'s Snakemake rule that rerun it when they change: the
    settings it reads (where it reads any) and its code's fingerprint; the config
    stage's, every stage's fingerprint, which it records."""
    from steelflow.code import fingerprint, stage_command
    from steelflow.config import STAGE_SECTIONS, stage_settings

    if stage == "config":
        code = {name: fingerprint(stage_command(name)) for name in STAGE_SECTIONS}
    else:
        code = fingerprint(stage_command(stage))
    settings = stage_settings(config, stage)
    return ({"settings": settings} if settings else {}) | {"code": code}


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


@dataclass
class Stage:
    """A dvc.yaml stage: its name (train_unet@0), its outputs, the outputs of other
    stages that it reads, and whether dvc.lock holds for it (``dvc status``: unchanged)."""

    name: str
    outs: list[Path]
    inputs: list[Path]
    in_lock: bool = True


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


def locked_stages(root: Path, records: str = "results/stages") -> list[Stage]:
    """The stages of dvc.yaml in ``root`` in pipeline order, each with whether dvc.lock
    holds for it; none without dvc.lock. ``records``, DVC's own inputs of each stage, are
    not Snakemake's and are not counted as inputs."""
    if not (root / "dvc.lock").is_file():
        return []
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except DvcException:  # dvc.lock without its DVC or git repository (an exported copy)
        return []
    with repo:
        changed = repo.status()
        graph = repo.index.graph  # an edge runs from a stage to one it depends on
        stages = []
        for stage in _dependencies_first(graph):
            made = {Path(o.fs_path) for before in graph.successors(stage) for o in before.outs}
            deps = [Path(d.fs_path) for d in stage.deps]  # a folder stands for what is in it
            inputs = [
                path
                for path in made
                if any(path.is_relative_to(dep) for dep in deps)
                and not path.is_relative_to(root / records)
            ]
            outs = [root / o.def_path for o in stage.outs]
            stages.append(Stage(stage.addressing, outs, inputs, stage.addressing not in changed))
    return stages


def align_times(root: Path, stages: list[Stage]) -> list[Path]:
    """Make the outputs in ``root`` of each of ``stages`` that dvc.lock holds for (and its
    Snakemake benchmark file) no older than the outputs of other stages it reads, stage by
    stage in pipeline order: dvc.lock vouches that they were made from those very inputs,
    whatever the other stages' state (a partial ``dvc pull``). Returns the outputs whose
    time moved."""
    moved = []
    for stage in stages:
        if not stage.in_lock or not stage.inputs:
            continue
        benchmark = root / benchmark_file(stage.name)
        newest = max(_mtime_ns(path) for path in stage.inputs)
        for path in [*stage.outs, *([benchmark] if benchmark.is_file() else [])]:
            if _mtime_ns(path) < newest:
                os.utime(_time_file(path), ns=(newest, newest))
                moved.append(path)
    return moved


def snakemake_record(root: Path, output: Path) -> Path:
    """Where Snakemake keeps its record of ``output`` (snakemake/persistence.py): its
    path relative to ``root`` in URL-safe base64, cut into names of at most 254
    characters, all but the last a folder marked with '@'."""
    name = urlsafe_b64encode(str(output.relative_to(root)).encode()).decode()
    parts = [name[i : i + 254] for i in range(0, len(name), 254)]
    return root / SNAKEMAKE_RECORDS / Path(*[f"@{p}" for p in parts[:-1]], parts[-1])


def _snakemake_params(root: Path, output: Path) -> list[str] | None:
    """The params Snakemake recorded for ``output`` (the sorted reprs of their values);
    None where it has no record (or one being written, which Snakemake ignores too)."""
    try:
        return json.loads(snakemake_record(root, output).read_text()).get("params")
    except (OSError, ValueError):
        return None


def forget_overruled(root: Path, stages: list[Stage], config: dict) -> list[Path]:
    """Where dvc.lock holds for every one of ``stages``, drop Snakemake's record of each
    of their outputs whose params differ from the rule's params now, where the stage's
    own record says it was made as it would be now (``stale``: no), as ``snakemake
    --cleanup-metadata`` would; only where DVC's config stage wrote those records
    (Snakemake's record of them is of other params, or there is none): where
    Snakemake's config rule wrote them, its records of the outputs are the newer word.
    Returns the outputs whose record went."""
    from steelflow.config import STAGE_SECTIONS

    def params_now(name: str) -> list[str]:
        return sorted(repr(value) for value in rule_params(config, name).values())

    if not all(stage.in_lock for stage in stages):
        return []  # where anything changed, Snakemake decides as always
    ours = [stage for stage in stages if stage.name.partition("@")[0] in STAGE_SECTIONS]
    records = [out for stage in ours if stage.name == "config" for out in stage.outs]
    if any(_snakemake_params(root, out) == params_now("config") for out in records):
        return []
    dropped = []
    for stage in ours:
        name = stage.name.partition("@")[0]
        if stale(config, name, root / RECORDS):
            continue
        for out in stage.outs:
            params = _snakemake_params(root, out)
            if params is not None and params != params_now(name):
                snakemake_record(root, out).unlink()
                dropped.append(out)
    return dropped
