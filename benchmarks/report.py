"""Write the generated pages of docs/: the benchmark tables and the settings table.

    python benchmarks/report.py            # write docs/benchmarks.md and docs/settings.md
    python benchmarks/report.py --check    # write nothing; exit 1 if either page is stale

docs/benchmarks.md is built from benchmarks/results/*.json alone, each table stamped
with what its file records: the CPU (and whether it computes bf16 natively), the torch
version, the commit and the date, "not recorded" where the file does not hold it.
docs/settings.md is built from steelflow/config.schema.yaml, the one schema of
config.yaml. Both pages are a pure function of those files (no clock, no git, no
machine), so they rebuild byte for byte; `make docs` runs this script.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks/results"
SCHEMA = ROOT / "steelflow/config.schema.yaml"
BENCHMARKS_PAGE = ROOT / "docs/benchmarks.md"
SETTINGS_PAGE = ROOT / "docs/settings.md"
CLASSES = ("1", "2", "3", "4")
NOT_RECORDED = "not recorded"
# AMD's CPU family and model numbers, as /proc/cpuinfo gives them, named by core generation
GENERATIONS = {("25", "17"): "Zen 4", ("26", "2"): "Zen 5"}


# --- helpers ---------------------------------------------------------------------------------


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def value(v) -> str:
    """A setting's value as YAML writes it in flow style (strings bare)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {value(x)}" for k, x in v.items()) + "}"
    return str(v)


def changes(overrides: dict) -> str:
    return ", ".join(f"{k}={value(v)}" for k, v in overrides.items()) or "default"


def num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def cpu_label(cpu: str | None) -> str:
    """The recorded CPU string, led by its core generation where family and model say it."""
    if not cpu:
        return NOT_RECORDED
    found = re.search(r"family (\d+), model (\d+)", cpu)
    generation = GENERATIONS.get(found.groups()) if found else None
    return f"{generation}: {cpu}" if generation else cpu


def native_bf16(cpu: str | None) -> str:
    """Whether the recorded CPU computes bf16 natively, as its string records it."""
    if not cpu:
        return NOT_RECORDED
    if "no native bf16" in cpu:
        return "no"
    for isa in ("AVX512-BF16", "AMX-BF16"):
        if isa in cpu:
            return f"yes ({isa})"
    return NOT_RECORDED


def stamp(source: str, data: dict, cpu: str | None = None, gpu: str | None = None) -> str:
    """The line under each table: where it comes from and what that file records."""
    parts = [f"Source: `benchmarks/results/{source}`"]
    if gpu:
        parts.append(f"GPU: {gpu}")
        parts.append(f"host CPU: {cpu_label(cpu)}")
    else:
        parts.append(f"CPU: {cpu_label(cpu)}")
        parts.append(f"native bf16: {native_bf16(cpu)}")
    parts.append(f"torch: {data.get('torch') or NOT_RECORDED}")
    parts.append(f"commit: {data.get('commit') or NOT_RECORDED}")
    parts.append(f"date: {data.get('date') or NOT_RECORDED}")
    return "*" + "; ".join(parts) + ".*"


# --- one section per results file -------------------------------------------------------------


def runs(data: dict) -> list[str]:
    out = [
        "Whole `snakemake --cores all` runs of the default config with the changes each row "
        "names (preset `clear`, seed 42 unless the changes say otherwise), one run each "
        "(`python benchmarks/runs.py NAME=RUN_FOLDER`). Stage seconds as Snakemake's "
        "benchmark files give them: only rows named `alone` ran alone on the machine, so "
        "only their seconds compare. Test Dice: `results/metrics.json`; margin: test Dice "
        "minus that of predicting every mask empty (all-empty); classes 1-4: Dice on the "
        "test pairs with a true defect; val pooled: the U-Net's last epoch, pooled Dice per "
        "class (false positives count; - where not recorded); on: the classes tune "
        "switched on. The commit and date of each row, and what it tested: "
        "[experiments.md](experiments.md). Rows are grouped by the CPU they ran on.",
    ]
    groups: dict[str, list[dict]] = {}
    for r in data["rows"]:
        groups.setdefault(r.get("cpu") or "", []).append(r)
    header = [
        "run", "changes", "workflow s", "U-Net s", "classifier s", "tune s", "submit s",
        "test Dice", "all-empty", "margin", "classes 1 / 2 / 3 / 4", "val pooled 1 / 2 / 3 / 4",
        "on", "commit",
    ]  # fmt: skip
    for cpu, rows in groups.items():
        body = []
        for r in rows:
            s = r["seconds"]
            pooled = r.get("val_pooled_dice") or {}
            body.append(
                [
                    r["name"],
                    changes(r["changes"]),
                    num(r.get("workflow_s"), ".0f"),
                    *(num(s.get(k), ".0f") for k in ("train_unet_f0", "train_classifier_f0")),
                    *(num(s.get(k), ".0f") for k in ("tune", "submit")),
                    f"{r['test_dice']:.4f}",
                    f"{r['empty_baseline']:.3f}",
                    f"{r['test_dice'] - r['empty_baseline']:+.4f}",
                    " / ".join(num(r["test_dice_on_defects"].get(c), ".3f") for c in CLASSES),
                    " / ".join(num(pooled.get(c), ".3f") for c in CLASSES),
                    ",".join(r["enabled"]),
                    r.get("commit") or "-",
                ]
            )
        out += [
            "",
            f"### {cpu_label(cpu)}",
            "",
            *table(header, body),
            "",
            stamp("runs.json", data, cpu),
        ]
    return out


def ablation(data: dict) -> list[str]:
    out = [
        "One network trained on a default run's data with a few settings changed "
        "(`python benchmarks/ablation.py VARIANT`), one run each: the last epoch's validation "
        "metrics (best epoch in brackets), the training time with validation and its images/s. "
        "U-Net: Dice on each class's defect pairs at threshold 0.5. Classifier: AUC and F1 of "
        "'any defect'. Some ran beside other work, so their seconds do not all compare.",
    ]
    metrics = {
        "unet": [f"dice_defect_{c}" for c in CLASSES] + [f"pooled_dice_{c}" for c in CLASSES],
        "classifier": ["auc", "f1"],
    }
    for network, title in (("unet", "U-Net"), ("classifier", "Classifier")):
        rows = [r for r in data["rows"] if r.get("network", "unet") == network]
        names = [m for m in metrics[network] if any(m in r["last"] for r in rows)]
        body = [
            [
                r["variant"],
                r.get("data", "default run"),
                changes(r["overrides"]),
                str(r["epochs"]),
                f"{r['seconds']:.0f}",
                f"{r['train_images_per_s']:.1f}",
                *(
                    f"{r['last'][m]:.3f} ({r['best_of_epochs'][m]:.3f})" if m in r["last"] else "-"
                    for m in names
                ),
            ]
            for r in rows
        ]
        header = ["variant", "data", "changes", "epochs", "seconds", "img/s", *names]
        out += [
            "",
            f"### {title}",
            "",
            *table(header, body),
            "",
            stamp("ablation.json", data, data.get("cpu")),
        ]
    return out


def folds(data: dict) -> list[str]:
    body = [
        [
            r["models"],
            f"{r['tuned_on_images']} images",
            f"{r['test_dice']:.4f}",
            f"{r['empty_baseline']:.3f}",
            *(f"{r['dice_on_defects_per_class'][c]:.3f}" for c in CLASSES),
            ", ".join(str(c) for c in r["switched_on"]),
            " / ".join(str(r["support"][c]) for c in CLASSES),
        ]
        for r in data["rows"]
    ]
    header = [
        "models", "tuned on", "test Dice", "all-empty", "class 1", "class 2", "class 3",
        "class 4", "classes on", "tune's images with class 1 / 2 / 3 / 4",
    ]  # fmt: skip
    stages = ", ".join(f"{k} {v:.0f}" for k, v in data["stage_seconds"].items())
    return [
        f"Three folds against one model (`snakemake --cores all --configfile "
        f"configs/three_folds.yaml`, then the default config on the same models); "
        f"{data['data']}; precision {data['precision']}. Classes 1-4: Dice on the test pairs "
        "with a true defect.",
        "",
        *table(header, body),
        "",
        f"Three-fold workflow: {data['three_fold_workflow_seconds']} s. Stage seconds: {stages}.",
        "",
        stamp("folds.json", data, data.get("cpu")),
    ]


def data_stage(data: dict) -> list[str]:
    reads = data["read_four_masks"]
    body = [
        [
            "synthetic generation",
            f"{data['generate_s']:.0f} s ({data['generate_images_per_s']:.0f} images/s), "
            f"{data['raw_bytes'] / 1e9:.2f} GB of JPEG",
        ],
        ["mask cache build", f"{data['cache_build_s']:.1f} s"],
        ["mask cache on disk", f"{data['cache_bytes'] / 1e6:.0f} MB"],
        *(
            [
                f"read one image's four masks ({which})",
                f"median {r['median_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms",
            ]
            for which, r in reads.items()
        ),
    ]
    return [
        f"The data stages at Kaggle scale (`python benchmarks/data.py`): {data['images']:,} "
        f"synthetic train images, {data['masks']:,} masks, {data['cores']} cores, one run.",
        "",
        *table(["what", "measured"], body),
        "",
        stamp("data.json", data, data.get("cpu") or data.get("machine")),
    ]


def rle(data: dict) -> list[str]:
    body = []
    for cache in ("warm", "cold"):
        for coverage, r in data[cache].items():
            for op in ("decode", "encode"):
                us = r[f"{op}_us"]
                body.append(
                    [
                        cache, coverage, op,
                        f"{us['steelflow']:.1f}", f"{us['kaggle_numpy']:.1f}",
                        num(us.get("pycocotools"), ".1f"), f"{r['memset_us']:.1f}",
                        f"{us['kaggle_numpy'] / us['steelflow']:.1f}x",
                        f"{us['steelflow'] / r['memset_us']:.1f}",
                    ]
                )  # fmt: skip
    header = [
        "cache", "coverage", "op", "steelflow", "kaggle numpy", "pycocotools", "memset",
        "speed-up vs numpy", "x memset",
    ]  # fmt: skip
    return [
        "The RLE codec (`python benchmarks/rle.py`): median microseconds per 256x1600 mask, "
        "one run, every case interleaved. memset: `np.zeros` and a fill of one image. "
        "warm: the mask is in cache (as after thresholding); cold: each call meets a mask "
        "not touched for 8 MB.",
        "",
        *table(header, body),
        "",
        stamp("rle.json", data, data.get("cpu") or data.get("machine")),
    ]


def loader(data: dict) -> list[str]:
    body = [
        [
            name, r["input"], str(r["batch_size"]),
            f"{r['each_sample']:.0f}", f"{r['decoded_once']:.0f}",
            f"{r['decoded_once'] / r['each_sample']:.1f}x",
            f"{r['decode_pass_seconds']:.2f} s for {r['decode_pass_images']} images",
        ]
        for name, r in data["rows"].items()
    ]  # fmt: skip
    header = [
        "config, network", "sample", "batch", "JPEG decoded at every sample", "decoded once",
        "speed-up", "the one decoding pass",
    ]  # fmt: skip
    return [
        "The training data pipeline (`python benchmarks/loader.py`): images/s of one loader "
        f"process, best of three alternated runs of {data['batches']} batches.",
        "",
        *table(header, body),
        "",
        stamp("loader.json", data, data.get("cpu") or data.get("machine")),
    ]


def train(data: dict) -> list[str]:
    body = [
        [
            name, r["input"], str(r["batch_size"]),
            f"{r['data_images_per_s']:.0f}", f"{r['model_images_per_s_fp32']:.1f}",
            f"{r['model_images_per_s_config']:.1f} ({r['dtype_config']})",
            f"{r['train_images_per_s_fp32']:.1f}", f"{r['train_images_per_s_config']:.1f}",
            f"{r['data_to_model_ratio']:.1f}x", f"{r['peak_rss_mb']:.0f} MB",
        ]
        for name, r in data["networks"].items()
    ]  # fmt: skip
    header = [
        "network", "input", "batch", "data pipeline", "model step fp32",
        "model step, config precision", "training fp32", "training, config precision",
        "data / model", "peak RSS",
    ]  # fmt: skip
    return [
        "Training speed at the default config (`python benchmarks/train.py`), images/s, one "
        "run per network.",
        "",
        *table(header, body),
        "",
        stamp("train.json", data, data.get("cpu") or data.get("machine")),
    ]


def workers(data: dict) -> list[str]:
    def seconds(values: list[float]) -> str:
        return " / ".join(f"{v:.2f}" for v in values)

    body = [
        [
            name, str(r["images"]),
            seconds(r["persistent"]["epoch_s"]), seconds(r["fresh"]["epoch_s"]),
            seconds(r["persistent"]["first_batch_s"]), seconds(r["fresh"]["first_batch_s"]),
        ]
        for name, r in data["rows"].items()
    ]  # fmt: skip
    header = [
        "network, workers, start", "images", "epochs, persistent", "epochs, fresh",
        "first batch, persistent", "first batch, fresh",
    ]  # fmt: skip
    return [
        "Loader workers kept alive across epochs (persistent, the epoch handed with each "
        "index) or started afresh each epoch (`python benchmarks/workers.py`): seconds of "
        "each of three epochs of the data pipeline alone, and of each epoch's first batch.",
        "",
        *table(header, body),
        "",
        stamp("workers.json", data, data.get("cpu") or data.get("machine")),
    ]


def predict(data: dict) -> list[str]:
    body = [
        [
            precision,
            f"{r['images_per_s_forward']:.1f}", f"{r['images_per_s_device_part']:.1f}",
            f"{r['images_per_s_cpu_part']:.1f}", f"{r['images_per_s_end_to_end']:.1f}",
            f"{r['ratio']:.2f}", str(r["past_gate"]),
        ]
        for precision, r in data["runs"].items()
    ]  # fmt: skip
    header = [
        "precision", "forward passes alone", "device's part alone", "CPU's part alone",
        "end to end", "end to end / forward", "images past the gate",
    ]  # fmt: skip
    return [
        f"Prediction speed after `make run` (`python benchmarks/predict.py`) on "
        f"{data['images']} test images, batch {data['batch']}, images/s, best of three "
        "alternated runs. End to end: JPEG files in, RLE out. The device's part: both "
        "networks, upsampling, thresholds, masks back to the CPU, on decoded images. The "
        "CPU's part: decoding, components, RLE, with the device's outputs replayed.",
        "",
        *table(header, body),
        "",
        stamp("predict.json", data, data.get("cpu") or data.get("device")),
    ]


def gpu(name: str, data: dict) -> list[str]:
    training = data["training"]
    body = [
        [
            network, r["input"], str(r["batch_size"]),
            f"{r['data_images_per_s']:.0f}",
            f"{r['model_images_per_s_config']:.0f} ({r['dtype_config']})",
            f"{r['model_ema_images_per_s_config']:.0f}"
            if r.get("model_ema_images_per_s_config") else "-",
            f"{r['train_images_per_s_config']:.0f}", f"{r['data_to_model_ratio']:.2f}x",
            f"{r['val_images_per_s']:.0f}", f"{r['peak_gpu_mb'] / 1024:.1f} GiB",
            f"{r['estimated_minutes_per_fold']:.1f} min ({r['epochs']} epochs)",
        ]
        for network, r in training.items()
    ]  # fmt: skip
    header = [
        "network", "input", "batch", "data pipeline", "model step", "model step with EMA",
        "training", "data / model", "validation", "peak GPU memory", "estimated time per fold",
    ]  # fmt: skip
    predicted = [
        [
            models, f"{r['images_per_s_forward']:.0f}", f"{r['images_per_s_end_to_end']:.0f}",
            f"{r['ratio']:.2f}", f"{r['seconds_end_to_end']:.1f} s", str(r["past_gate"]),
        ]
        for models, r in data.get("prediction", {}).items()
    ]  # fmt: skip
    decoding = data.get("decoding", {})
    host = data.get("cpu") or data.get("machine")
    out = [
        f"`configs/kaggle.yaml` on the GPU (`python benchmarks/gpu.py`): "
        f"{data['train_images']:,} synthetic train images. Training, images/s; the estimate is "
        "the config's epochs on Kaggle's 12,568 train images, a fifth of them validating.",
        "",
        *table(header, body),
    ]
    if predicted:
        out += [
            "",
            f"Prediction of {data['test_images']:,} test images, JPEG files in, RLE out:",
            "",
            *table(
                ["models", "forward passes alone, images/s", "end to end, images/s",
                 "end to end / forward", "end to end", "images past the gate"],
                predicted,
            ),
        ]  # fmt: skip
    if decoding:
        out += [
            "",
            "JPEG decoding at full size, images/s: "
            f"libjpeg {decoding['libjpeg_1_thread']:.0f} (one thread), "
            f"{decoding['libjpeg_all_cores']:.0f} (every core); "
            f"nvJPEG {decoding['nvjpeg']:.0f}.",
        ]
    if "nvjpeg_difference_mean" in decoding:
        out[-1] += (
            f" nvJPEG's pixels against libjpeg's: mean absolute difference "
            f"{decoding['nvjpeg_difference_mean']:.3f}, at most "
            f"{decoding['nvjpeg_difference_max']} gray levels."
        )
    return [*out, "", stamp(name, data, host, gpu=data.get("device") or NOT_RECORDED)]


def tune_scale(data: dict) -> list[str]:
    out = [
        "Tune's own work at Kaggle scale (`python benchmarks/tune_scale.py`): the out-of-fold pass "
        "(JPEG decode and resize, mask reads, upsampling, counting, the tally), the search and "
        "the figure, five folds, with the networks answering at once with synthetic outputs of "
        "their shapes. Other jobs shared the machine: times are upper bounds, compare sizes by "
        f"the ratios. Old: the previous code, its pass timed on {data['old_sample']} images "
        "(linear in the images), its search and peak RSS measured at each size."
    ]
    header = [
        "size", "images", "total s", "ms/image", "vs 1/12", "peak RSS MB", "old total s",
        "old peak RSS MB",
    ]  # fmt: skip
    for kind, rows in data["kinds"].items():
        old_ms = data["old_pass"][kind]["pass_ms_per_image"]
        body = [
            [
                r["size"],
                f"{r['images']:,}",
                f"{r['total_s']:.1f}",
                f"{r['ms_per_image']:.2f}",
                f"{r['ms_per_image'] / rows[0]['ms_per_image']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
                num(
                    old_ms * r["images"] / 1000 + r["old"]["search_s"] if "old" in r else None,
                    ".0f",
                ),
                num(r["old"]["peak_rss_mb"] if "old" in r else None, ".0f"),
            ]
            for r in rows
        ]
        past = f"{data['candidates'][kind]:.1f} classes per image past the lowest threshold"
        title = f"{kind} maps ({past}):"
        out += ["", title, "", *table(header, body)]
    return [*out, "", stamp("tune_scale.json", data, data.get("cpu"))]


def workflow_scale(data: dict, name: str = "scale") -> list[str]:
    """Every stage through the workflow at each size (benchmarks/scale.py)."""
    sizes = data["sizes"]
    first, last = sizes[0], sizes[-1]

    def grouped(row: dict) -> dict:
        """Stages with the folds of each training summed (seconds) or maxed (RSS)."""
        out = {}
        for name, r in row["stages"].items():
            stage = name.rsplit("_f", 1)[0] if name.startswith("train_") else name
            g = out.setdefault(stage, {"s": 0.0, "max_rss_mb": 0.0, "images": 0, "jobs": 0})
            g["s"] += r["s"]
            g["max_rss_mb"] = max(g["max_rss_mb"], r["max_rss_mb"])
            g["images"] = (g["images"] or 0) + (r["images"] or 0) if r["images"] else None
            g["jobs"] += 1
        return out

    def ms(g: dict) -> float | None:
        return 1000 * g["s"] / g["images"] if g["images"] else None

    def past_gate(row: dict) -> str:
        passed, n = row["submit_past_gate"], row["n_test"]
        if not passed:
            return f"{row['size']} none of {n:,} (the classifiers alone ran)"
        ms_past = 1000 * row["stages"]["submit"]["s"] / passed
        return f"{row['size']} {passed:,} of {n:,} ({ms_past:.0f} ms of submit per image past it)"

    stages = [grouped(row) for row in sizes]
    changed = changes(data.get("changes", {}))
    total = sum(g["s"] for g in stages[-1].values())
    body = []
    for stage, g in stages[-1].items():
        small = stages[0].get(stage)
        ratio = ms(g) / ms(small) if ms(g) and small and ms(small) else None
        body.append(
            [
                stage if g["jobs"] == 1 else f"{stage} ({g['jobs']} folds)",
                num(g["images"], ",d"),
                *(f"{s[stage]['s']:.1f}" if stage in s else "-" for s in stages),
                *([num(ms(small) if small else None, ".2f")] if len(sizes) > 1 else []),
                num(ms(g), ".2f"),
                *([num(ratio, ".2f")] if len(sizes) > 1 else []),
                " / ".join(f"{s[stage]['max_rss_mb']:.0f}" if stage in s else "-" for s in stages),
                f"{100 * g['s'] / total:.0f}%",
            ]
        )
    names = [row["size"] for row in sizes]
    header = [
        "stage", f"images ({last['size']})", *(f"{n} s" for n in names),
        *([f"ms/image {first['size']}"] if len(sizes) > 1 else []), f"ms/image {last['size']}",
        *([f"{last['size']} / {first['size']}"] if len(sizes) > 1 else []),
        f"peak RSS MB ({' / '.join(names)})",
        f"share of {last['size']}",
    ]  # fmt: skip
    out = [
        "Kaggle scale through the workflow (`python benchmarks/scale.py`): "
        "`snakemake --cores all` on configs/scale.yaml (five folds, one epoch per network, "
        f"tune out of fold on every train image, flip TTA; changes: {changed}) at "
        + ", ".join(f"{r['size']} ({r['n_train']:,} train, {r['n_test']:,} test)" for r in sizes)
        + " of Kaggle's images, one run each. Seconds and peak RSS from Snakemake's "
        "benchmark files; ms/image: seconds per image the stage reads (fetch: train and "
        "test; training: every train image, per fold, summed over folds; submit and "
        "score: test; config and bundle: none).",
        "",
        *table(header, body),
        "",
        *(
            [
                "Test images past the classifiers' gate at submit, the ones its U-Nets run on: "
                + ", ".join(map(past_gate, sizes))
                + ". Tune's thresholds, and so the gates, differ with the models of each size: "
                "compare submit's time per image between sizes where the U-Net ran on a "
                "similar share of the images.",
                "",
            ]
            if all("submit_past_gate" in r for r in sizes)
            else []
        ),
        "Workflow wall time (first job's start to last job's end): "
        + ", ".join(f"{r['size']} {r['workflow_s'] / 60:.1f} min" for r in sizes)
        + f". Load average {data['load_before']:.1f} before, {data['load_after']:.1f} after.",
        "",
    ]
    dvc = [
        [
            r["size"],
            f"{r['dvc']['remote_bytes'] / 1e9:.2f}",
            f"{r['dvc']['commit_s']:.1f}",
            f"{r['dvc']['push_s']:.1f}",
            f"{r['dvc']['pull_s']:.1f}",
            "yes" if r["dvc"]["clone_up_to_date"] else "no",
        ]
        for r in sizes
    ]
    out += [
        "Recording the run the README's way: `dvc commit --force`, `dvc push` to a local "
        "remote, `dvc pull` into a fresh clone, seconds each.",
        "",
        *table(["size", "remote GB", "commit s", "push s", "pull s", "clone up to date"], dvc),
    ]
    if "prediction" in last:
        submit = last["stages"]["submit"]
        rows = [
            [
                precision,
                f"{r['images_per_s_forward']:.1f}",
                f"{r['images_per_s_end_to_end']:.1f}",
                f"{r['ratio']:.2f}",
            ]
            for precision, r in last["prediction"].items()
            if precision != "sample"
        ]
        out += [
            "",
            f"Prediction at {last['size']} size with the run's models (five folds of each "
            f"network, flip TTA), images/s on {last['prediction']['sample']} test images "
            f"({last['prediction']['fp32']['past_gate']} past the classifier's gate, which the "
            "U-Net sees), best of two: the forward passes alone and end to end "
            "(decode, networks, upsampling, thresholds, RLE). The submit stage itself: "
            f"{last['n_test'] / submit['s']:.1f} images/s in the run, start-up and model "
            "loading included.",
            "",
            *table(["precision", "forward alone", "end to end", "end to end / forward"], rows),
        ]
    return [*out, "", stamp(f"{name}.json", data, data.get("cpu"))]


SECTIONS = {  # results file: (title, writer)
    "runs.json": ("Whole workflow runs", runs),
    "ablation.json": ("Ablations: one network at a time", ablation),
    "folds.json": ("Three folds against one model", folds),
    "gpu.json": ("The Kaggle config on a GPU", lambda d: gpu("gpu.json", d)),
    "gpu_run1.json": (
        "The Kaggle config on a GPU, before the uint8 loaders and thread pools",
        lambda d: gpu("gpu_run1.json", d),
    ),
    "train.json": ("Training speed on a CPU", train),
    "loader.json": ("Training data pipeline", loader),
    "workers.json": ("Loader workers across epochs", workers),
    "predict.json": ("Prediction speed on a CPU", predict),
    "data.json": ("Data stages at Kaggle scale", data_stage),
    "scale.json": ("Kaggle scale through the workflow", workflow_scale),
    "scale_fp32.json": (
        "Kaggle scale through the workflow in fp32",
        lambda d: workflow_scale(d, "scale_fp32"),
    ),
    "tune_scale.json": ("Tune at Kaggle scale", tune_scale),
    "rle.json": ("RLE codec", rle),
}


def benchmarks_page() -> str:
    present = sorted(p.name for p in RESULTS.glob("*.json"))
    known = [name for name in SECTIONS if name in present]
    unknown = [name for name in present if name not in SECTIONS]
    markdown_only = sorted(
        p.name for p in RESULTS.glob("*.md") if not (RESULTS / f"{p.stem}.json").exists()
    )
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/report.py from benchmarks/results/*.json: do not edit. -->",
        "",
        "Every measurement kept in a results file of `benchmarks/results/`. "
        "This page is generated: `make docs` (or `.venv/bin/python benchmarks/report.py`) "
        "rebuilds it byte for byte from those files. Each table is stamped with the file it "
        "comes from and what that file records: the CPU (with its family and model where "
        "recorded, and whether it computes bf16 natively), the torch version, the commit and "
        'the date; a field the file does not hold reads "not recorded" '
        "(`git log -- benchmarks/results/NAME.json` tells which commit wrote the file). "
        "Why each default was chosen, with these numbers: [design.md](design.md).",
        "",
        *(f"- [{SECTIONS[n][0]}](#{anchor(SECTIONS[n][0])}) (`{n}`)" for n in known),
    ]
    for name in known:
        title, write = SECTIONS[name]
        lines += ["", f"## {title}", "", *write(load(name))]
    if unknown or markdown_only:
        lines += ["", "## Other results files", ""]
        lines += [f"- `benchmarks/results/{n}`: no table on this page yet." for n in unknown]
        lines += [
            f"- `benchmarks/results/{n}`: kept as Markdown only (no JSON to build from)."
            for n in markdown_only
        ]
    return "\n".join(lines) + "\n"


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


# --- settings ---------------------------------------------------------------------------------


def allowed(spec: dict) -> str:
    """What values a key takes, from its JSON schema."""
    if "enum" in spec:
        return "one of " + ", ".join(f"`{value(v)}`" for v in spec["enum"])
    types = spec.get("type", "any")
    types = types if isinstance(types, list) else [types]
    words = {"boolean": "true or false", "object": "section"}
    text = " or ".join(words.get(t, t) for t in types)
    if "array" in types:
        items = spec.get("items", {})
        count = ""
        if spec.get("minItems") is not None and spec.get("minItems") == spec.get("maxItems"):
            count = f"{spec['minItems']} "
        elif spec.get("minItems") == 1:
            count = "one or more "
        elif spec.get("minItems"):
            count = f"{spec['minItems']} or more "
        kind = {"integer": "integers", "number": "numbers", "boolean": "booleans"}
        text = f"list of {count}{kind.get(items.get('type'), 'values')}"
        bounds = ranges(items)
        if bounds:
            text += f", each {bounds}"
        if spec.get("uniqueItems"):
            text += ", no repeats"
        return text
    bounds = ranges(spec)
    return f"{text}, {bounds}" if bounds else text


def ranges(spec: dict) -> str:
    parts = []
    if "minimum" in spec:
        parts.append(f">= {value(spec['minimum'])}")
    if "exclusiveMinimum" in spec:
        parts.append(f"> {value(spec['exclusiveMinimum'])}")
    if "maximum" in spec:
        parts.append(f"<= {value(spec['maximum'])}")
    if "exclusiveMaximum" in spec:
        parts.append(f"< {value(spec['exclusiveMaximum'])}")
    return " and ".join(parts)


def text(spec: dict) -> str:
    words = " ".join(str(spec.get("description", "")).split())
    return words.replace("|", "\\|") if words else "(no description in the schema)"


def sentence(words) -> str:
    words = " ".join(str(words).split()).rstrip(".")
    return words[:1].upper() + words[1:] + "."


def settings_rows(properties: dict, prefix: str) -> list[list[str]]:
    rows = []
    for key, spec in properties.items():
        name = f"{prefix}{key}"
        if spec.get("type") == "object" and "properties" in spec:
            rows += settings_rows(spec["properties"], f"{name}.")
        else:
            rows.append([f"`{name}`", allowed(spec), f"`{value(spec.get('default'))}`", text(spec)])
    return rows


def settings_page() -> str:
    schema = yaml.safe_load(SCHEMA.read_text())
    header = ["key", "allowed", "default", "what it does"]
    top = {k: s for k, s in schema["properties"].items() if s.get("type") != "object"}
    sections = {k: s for k, s in schema["properties"].items() if s.get("type") == "object"}
    lines = [
        "# Settings",
        "",
        "<!-- Generated by benchmarks/report.py from steelflow/config.schema.yaml: "
        "do not edit. -->",
        "",
        "Every key of `config.yaml`, generated from `steelflow/config.schema.yaml`, the one "
        "schema that validates the config and fills its defaults (`make docs` rebuilds this "
        "page). The defaults are `config.yaml`'s values. How to change a setting for one run, "
        "in a file or under DVC: the README's Configuration section.",
        "",
        " ".join(str(schema.get("description", "")).split()),
        "",
        "## Top level",
        "",
        *table(header, settings_rows(top, "")),
    ]
    for key, spec in sections.items():
        lines += ["", f"## `{key}`", ""]
        if spec.get("description"):
            lines += [sentence(spec["description"]), ""]
        lines += table(header, settings_rows(spec.get("properties", {}), f"{key}."))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a page differs"
    )
    args = parser.parse_args()
    stale = []
    for path, page in ((BENCHMARKS_PAGE, benchmarks_page()), (SETTINGS_PAGE, settings_page())):
        current = path.read_text() if path.exists() else None
        if current == page:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.write_text(page)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(map(str, stale))} (run `make docs`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
