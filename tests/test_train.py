"""The training engine on a tiny real run: checkpoints, resume, errors, weights, DDP."""

from __future__ import annotations

import logging
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler
from torchvision import models

from steelflow import checkpoint, train
from steelflow.cli import main
from steelflow.config import load
from steelflow.dataset import (
    DecodedImages,
    EpochSampler,
    SteelDataset,
    at_scale,
    masks_at_scale,
    split_ids,
)
from steelflow.errors import SteelflowError
from steelflow.images import read_gray
from steelflow.masks import MaskCache, build
from steelflow.models import WeightsError, backbone, build_classifier, build_unet, image_logits
from steelflow.tasks import ClassifierTask, UNetTask
from tests.conftest import TEST_CONFIG, fetch_synthetic

TWO_EPOCHS = {"classifier.epochs": 2, "unet.epochs": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    args = ["--config", str(TEST_CONFIG)]
    fetch_synthetic(root / "raw", 20, 1)
    build(root / "raw/train.csv", root / "raw/train_images", root / "masks")
    assert (
        main(["split", *args, "--masks", str(root / "masks"), "--out", str(root / "split.csv")])
        == 0
    )
    return root


def tiny_config(**overrides):
    return load(TEST_CONFIG, {**TWO_EPOCHS, **overrides})


def train_network(data, out, name="unet", resume=False, fold=0, start=None, **overrides):
    outputs = {"out": out / f"{name}.pt", "history": out / f"{name}.csv"}
    return train.run(
        name,
        fold,
        tiny_config(**overrides),
        data / "raw/train_images",
        data / "masks",
        data / "split.csv",
        {**outputs, "curves": out / f"{name}.png"},
        resume=resume,
        start=start,
    )


@pytest.fixture(scope="module")
def unet(data, tmp_path_factory) -> Path:
    """A U-Net trained one epoch on fold 0: where fold 0's classifier starts."""
    out = tmp_path_factory.mktemp("start")
    train_network(data, out, **{"unet.epochs": 1})
    return out / "unet.pt"


def test_unet_trains_and_its_checkpoint_loads_for_prediction(data, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    best = train_network(data, tmp_path)
    assert not list((tmp_path / "temp").iterdir())  # the decoded images are gone
    assert set(best) >= {"score", "val_loss", "dice_defect_3", "pooled_dice_3"}
    assert 0 <= best["score"] <= 1
    history = pd.read_csv(tmp_path / "unet.csv")
    assert history.epoch.tolist() == [1, 2] and np.isfinite(history.train_loss).all()
    assert (tmp_path / "unet.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "unet.last.pt").exists()  # finished: nothing left to resume
    state = torch.load(tmp_path / "unet.pt", weights_only=True)
    assert state["task"] == "unet" and state["epoch"] in (1, 2)
    model = build_unet(state["config"])
    model.load_state_dict(state["model"])
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 1, 64, 400)).shape == (1, 4, 64, 400)


def test_images_are_decoded_once_and_every_loader_worker_maps_them(data, tmp_path):
    images, cache = data / "raw/train_images", MaskCache(data / "masks")
    ids = cache.image_ids
    decoded = DecodedImages(images, ids, 0.5, tmp_path)
    for image in ids:
        assert np.array_equal(decoded[image], at_scale(read_gray(images / image), 0.5))
    assert len(pickle.dumps(decoded)) < 10_000  # a worker gets the file's path, not pixels
    assert len(pickle.dumps(cache)) < cache.bits.nbytes / 10  # and the masks' folder
    augment = {"hflip": True, "vflip": True, "brightness": 0.1, "contrast": 0.1}
    samples = SteelDataset(decoded, cache, ids, crop_width=96, augment=augment, seed=3)
    order = EpochSampler(SequentialSampler(samples))
    batches = [
        list(DataLoader(samples, batch_size=8, sampler=order, num_workers=workers, **context))
        for workers, context in ((0, {}), (2, {"multiprocessing_context": "spawn"}))
    ]
    for alone, spawned in zip(*batches, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(alone, spawned, strict=True))


@pytest.mark.parametrize("scale", [0.25, 0.5, 1.0])
def test_a_one_pixel_mask_lands_under_the_pixel_it_labels(scale):
    """Masks are resized as images are: a defect pixel's mask and its bright image pixel
    land on the same pixel at every network scale, with the share of it they cover."""
    row, col = 141, 1203  # odd: the pixel a subsampling ([::2, ::2]) would miss
    gray = np.zeros((256, 1600), np.uint8)
    gray[row, col] = 255
    masks = np.zeros((4, 256, 1600), np.uint8)
    masks[2, row, col] = 1
    image = at_scale(gray, scale)
    scaled = masks_at_scale(masks, scale, np.array([0, 0, 1, 0]))
    under = np.unravel_index(image.argmax(), image.shape)
    assert under == (int(row * scale), int(col * scale))
    assert np.flatnonzero(scaled.reshape(4, -1).any(axis=1)).tolist() == [2]
    assert np.argwhere(scaled[2]).tolist() == [list(under)]
    assert scaled[2][under] == image[under] == round(255 * scale * scale)


@pytest.mark.parametrize(("head", "channels"), [("multilabel", 4), ("binary", 1)])
def test_the_classifier_is_told_a_defect_is_there_however_little_of_a_pixel_it_covers(
    head, channels
):
    masks = torch.zeros(1, 4, 8, 8)
    masks[0, 2, 3, 5] = 16 / 255  # a one-pixel pit at 1/4 scale covers 1/16 of its pixel
    target = ClassifierTask(tiny_config(**{"classifier.head": head}), 0).target(masks, None)
    assert target.shape == (1, channels, 8, 8) and target.max() == 1 and target.sum() == 1


def test_an_image_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    for path in (tmp_path / "gone.jpg", tmp_path / "folder.jpg"):
        with pytest.raises(SteelflowError, match=rf"{path.name}: cannot be read"):
            read_gray(path)


def test_a_rerun_clears_the_decoded_images_a_killed_run_left(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed = train.scratch_folder(tmp_path / "models/unet_f0.pt")
    left = killed.__enter__()  # never left: the process was killed
    (left / "images_0.5_x.npy").write_bytes(b"stale")
    with train.scratch_folder(tmp_path / "models/unet_f0.pt") as again:
        assert again == left and not any(again.iterdir())
        with train.scratch_folder(tmp_path / "models/unet_f1.pt") as other:
            assert other != again  # another training's folder
    assert not left.exists() and not other.exists()


def test_a_train_image_of_another_size_is_named(data, tmp_path):
    import cv2

    ids = MaskCache(data / "masks").image_ids[:3]
    for image in ids:
        gray = read_gray(data / "raw/train_images" / image)
        cv2.imwrite(str(tmp_path / image), gray if image != ids[1] else gray[:, :800])
    with pytest.raises(ValueError, match=rf"{ids[1]}: 800x256 pixels, expected 1600x256"):
        DecodedImages(tmp_path, ids, 0.5, tmp_path)


@pytest.mark.parametrize(("head", "labels"), [("multilabel", 4), ("binary", 1)])
def test_classifier_heads(data, tmp_path, unet, head, labels):
    """multilabel (the default): a logit per class; binary: one for 'any defect'."""
    settings = {"classifier.head": head, "classifier.epochs": 1}
    best = train_network(data, tmp_path, "classifier", start=unet, **settings)
    assert {"auc", "f1"} <= set(best)
    state = torch.load(tmp_path / "classifier.pt", weights_only=True)
    model = build_classifier(state["config"])
    model.load_state_dict(state["model"])
    assert image_logits(model(torch.zeros(2, 1, 64, 400))).shape == (2, labels)


def interrupted_after_one_epoch(data, out, monkeypatch, **settings):
    """Train, stopping as if killed during epoch 2; leaves out/unet.last.pt."""
    original = train.evaluate
    calls = []

    def validate_then_die(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train, "evaluate", validate_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_network(data, out, **settings)


def epochs_of_samples(data, scratch, workers: int, epochs: int) -> list[list]:
    """The training batches of each epoch, as ``train_one_epoch`` draws them."""
    task = UNetTask(tiny_config(**{"machine.workers": workers}), 0)
    args = (data / "raw/train_images", data / "masks", data / "split.csv", torch.device("cpu"))
    loader, _ = train.make_loaders(task, *args, scratch)
    drawn = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        drawn.append(list(loader))
    return drawn


def test_each_epoch_draws_new_samples_in_persistent_loader_workers(data, tmp_path):
    """Crops, flips and jitter follow the epoch in the loader's workers, which live
    through every epoch, as they do in the main process without workers."""
    (tmp_path / "0").mkdir(), (tmp_path / "2").mkdir()
    alone = epochs_of_samples(data, tmp_path / "0", workers=0, epochs=2)
    workers = epochs_of_samples(data, tmp_path / "2", workers=2, epochs=2)
    first, second = (torch.cat([x for x, _, _ in batches]) for batches in workers)
    assert first.shape == second.shape and not torch.equal(first, second)
    for epoch_alone, epoch_workers in zip(alone, workers, strict=True):
        for a, b in zip(epoch_alone, epoch_workers, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_interrupted_run_resumes_where_it_stopped(data, tmp_path, monkeypatch, workers):
    """Killed after epoch 1 of 3, resumed: same weights as a run never interrupted,
    with or without loader workers."""
    settings = {"unet.epochs": 3, "machine.workers": workers}
    train_network(data, tmp_path / "straight", **settings)
    interrupted_after_one_epoch(data, tmp_path / "resumed", monkeypatch, **settings)
    last = torch.load(tmp_path / "resumed/unet.last.pt", weights_only=True)
    assert last["epoch"] == 1 and "optimizer" in last
    assert not (tmp_path / "resumed/unet.pt").exists()  # one epoch of three is no model yet
    assert torch.load(tmp_path / "resumed/unet.best.pt", weights_only=True)["epoch"] == 1
    train_network(data, tmp_path / "resumed", resume=True, **settings)
    straight = pd.read_csv(tmp_path / "straight/unet.csv")
    resumed = pd.read_csv(tmp_path / "resumed/unet.csv")
    assert resumed.epoch.tolist() == [1, 2, 3]
    np.testing.assert_allclose(resumed.train_loss, straight.train_loss, rtol=1e-4)
    a = torch.load(tmp_path / "straight/unet.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed/unet.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.pt")) == ["unet.pt"]


def test_fp16_resumes_with_its_loss_scale(data, tmp_path, monkeypatch):
    """fp16 (here on the CPU) saves the GradScaler's state with the rest, and a resumed
    run trains with the saved scale, not with a fresh one."""
    settings = {"unet.epochs": 3, "train.precision": "fp16"}
    interrupted_after_one_epoch(data, tmp_path, monkeypatch, **settings)
    last = tmp_path / "unet.last.pt"
    state = torch.load(last, weights_only=True)
    assert state["scaler"]["scale"] == 2.0**16  # no overflow in a few steps
    state["scaler"]["scale"] = 2.0**100  # so large that fp16 gradients overflow
    torch.save(state, last)
    interrupted_after_one_epoch(data, tmp_path, monkeypatch, resume=True, **settings)
    resumed = torch.load(last, weights_only=True)["scaler"]["scale"]
    assert 2.0**16 < resumed < 2.0**100  # halved at each overflow, from the saved scale


def test_a_run_without_fp16_keeps_no_loss_scale(data, tmp_path, monkeypatch):
    interrupted_after_one_epoch(data, tmp_path, monkeypatch, **{"train.precision": "fp32"})
    assert "scaler" not in torch.load(tmp_path / "unet.last.pt", weights_only=True)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"seed": 7}, "seed"),
        ({"train.seed": 7}, "train"),
        ({"augment.hflip": False}, "augment"),
        ({"fold": 1}, "fold, train_ids, val_ids"),
        ({"train.channels_last": False}, "train"),
        ({"unet.lr": 0.01}, "unet"),
    ],
)
def test_a_run_resumes_only_from_the_same_recipe(
    data, tmp_path, monkeypatch, caplog, change, named
):
    """Any setting that shapes the weights, or other train/val images: start afresh, and say so."""
    settings = {"unet.epochs": 2}
    interrupted_after_one_epoch(data, tmp_path, monkeypatch, **settings)
    with caplog.at_level(logging.INFO, logger="steelflow.train"):
        train_network(data, tmp_path, resume=True, **settings, **change)
    assert f"trained with other {named}; training unet from scratch" in caplog.text
    assert "resuming unet from epoch" not in caplog.text
    assert pd.read_csv(tmp_path / "unet.csv").epoch.tolist() == [1, 2]


def test_train_seed_is_the_seed_of_the_training_alone(data, tmp_path):
    """train.seed null trains with the top-level seed, as does train.seed set to it;
    another train.seed trains other weights (on the same split: the data stages
    never read it)."""
    seed = tiny_config()["seed"]
    runs = {"null": {}, "same": {"train.seed": seed}, "other": {"train.seed": seed + 1}}
    weights = {}
    for name, change in runs.items():
        train_network(data, tmp_path / name, **{"unet.epochs": 1}, **change)
        weights[name] = torch.load(tmp_path / name / "unet.pt", weights_only=True)["model"]
    null, same, other = weights["null"], weights["same"], weights["other"]
    assert all(torch.allclose(null[k].float(), same[k].float(), atol=1e-5) for k in null)
    assert max((null[k].float() - other[k].float()).abs().max() for k in null) > 1e-2


@pytest.mark.parametrize("change", [{"machine.threads": 1}, {"train.folds": [0, 1, 2]}])
def test_machine_settings_and_other_folds_do_not_stop_a_resume(
    data, tmp_path, monkeypatch, caplog, change
):
    settings = {"unet.epochs": 2}
    interrupted_after_one_epoch(data, tmp_path, monkeypatch, **settings)
    with caplog.at_level(logging.INFO, logger="steelflow.train"):
        train_network(data, tmp_path, resume=True, **settings, **change)
    assert "resuming unet from epoch 1 of 2" in caplog.text


def test_a_non_finite_loss_stops_training(data, tmp_path, monkeypatch):
    monkeypatch.setattr(
        UNetTask, "loss", lambda self, logits, target: logits.float().sum() * np.nan
    )
    with pytest.raises(train.TrainingError, match=r"unet: loss is nan at epoch 1, step 1"):
        train_network(data, tmp_path)
    assert not (tmp_path / "unet.pt").exists()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def test_pretrained_weights_offline_stop_with_one_line(offline_hub):
    with pytest.raises(WeightsError) as info:
        backbone("resnet18", "imagenet", None, fallback_random=False)
    message = str(info.value)
    assert (
        "\n" not in message and "resnet18-f37072fd.pth" in message and "fallback_random" in message
    )


def test_fallback_to_random_weights_is_logged(offline_hub, caplog):
    with caplog.at_level(logging.WARNING):
        net = backbone("resnet18", "imagenet", None, fallback_random=True)
    assert "falling back to random weights" in caplog.text and net.conv1.in_channels == 1


def test_pretrained_weights_from_a_file_or_the_hub_cache(offline_hub, tmp_path):
    reference = models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)
    expected = reference["conv1.weight"].sum(dim=1, keepdim=True)
    from_file = backbone("resnet18", "imagenet", str(path), fallback_random=False)
    assert torch.equal(from_file.conv1.weight, expected)
    (offline_hub / "checkpoints").mkdir(parents=True)
    (offline_hub / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    from_cache = backbone("resnet18", "imagenet", None, fallback_random=False)
    assert torch.equal(from_cache.layer4[0].conv1.weight, reference["layer4.0.conv1.weight"])


def train_command(data, out: Path, network: str = "unet", **settings) -> list[str]:
    """The arguments of `steelflow train` on the tiny data, writing into ``out``."""
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    paths = {"raw": data / "raw", "masks": data / "masks", "split": data / "split.csv"}
    paths |= {"out": out / f"{network}.pt", "history": out / f"{network}.csv"}
    paths["curves"] = out / f"{network}.png"
    options = [arg for key, path in paths.items() for arg in (f"--{key}", str(path))]
    return ["train", network, "--config", str(TEST_CONFIG), *options, *sets]


def test_two_process_ddp_from_python_reports_once_with_the_same_checkpoint_format(data, tmp_path):
    """train.nproc_per_node=2 from `main([...])`: the command becomes torchrun with two gloo
    processes running the caller's arguments (not the Python process's own sys.argv), and
    only the main process decodes the images (into the one file both map), writes and
    reports."""
    args = train_command(data, tmp_path, **{"train.nproc_per_node": 2})
    script = f"import sys; from steelflow.cli import main; sys.exit(main({args!r}))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DistributedDataParallel with 2 processes (gloo)" in result.stderr
    assert len(re.findall(r"steelflow.dataset: decoding \d+ images into", result.stderr)) == 1
    assert result.stdout.count('"best"') == 1, result.stdout
    ddp = torch.load(tmp_path / "unet.pt", weights_only=True)
    single_model = build_unet(ddp["config"]).state_dict()
    assert set(ddp) >= {"model", "config", "epoch", "metrics", "task"}
    assert ddp["model"].keys() == single_model.keys()  # no "module." prefix from DDP
    assert len(pd.read_csv(tmp_path / "unet.csv")) == 1
    assert not (tmp_path / "unet.last.pt").exists()


def test_the_command_reports_missing_weights_in_one_line(data, tmp_path, offline_hub, capsys):
    code = main(train_command(data, tmp_path, **{"unet.pretrained": "imagenet"}))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("steelflow train: error: ImageNet weights for resnet18")
    assert not (tmp_path / "unet.pt").exists()


def test_ema_weights_are_validated_saved_and_resumed(data, tmp_path, monkeypatch):
    """With ema_decay, the checkpoint holds the averaged weights (not the last step's),
    and a run killed after epoch 1 resumes to the same averaged weights."""
    settings = {"unet.ema_decay": 0.9, "unet.epochs": 2}
    train_network(data, tmp_path / "straight", **settings)
    state = torch.load(tmp_path / "straight/unet.pt", weights_only=True)
    assert state["config"]["ema_decay"] == 0.9
    interrupted_after_one_epoch(data, tmp_path / "resumed", monkeypatch, **settings)
    last = torch.load(tmp_path / "resumed/unet.last.pt", weights_only=True)
    assert "ema" in last and not all(
        torch.equal(last["model"][k], last["weights"][k]) for k in last["weights"]
    )  # the averaged weights differ from the raw ones
    train_network(data, tmp_path / "resumed", resume=True, **settings)
    a = torch.load(tmp_path / "straight/unet.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed/unet.pt", weights_only=True)
    assert a["epoch"] == b["epoch"]
    assert all(
        torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5) for k in a["model"]
    )


def test_an_ema_that_keeps_only_the_last_step_validates_as_the_raw_weights(data, tmp_path):
    """ema_decay near 0: the average is the last step's weights, BatchNorm buffers
    included, so its validation and checkpoint equal a run without EMA's."""
    for label, decay in (("raw", 0), ("ema", 1e-9)):
        train_network(data, tmp_path / label, **{"unet.epochs": 1, "unet.ema_decay": decay})
    raw, ema = (pd.read_csv(tmp_path / f"{label}/unet.csv") for label in ("raw", "ema"))
    assert np.isfinite(raw.val_loss).all()
    assert np.allclose(raw.val_loss, ema.val_loss, rtol=1e-4)
    assert np.allclose(raw.score, ema.score, atol=1e-4)
    a, b = (
        torch.load(tmp_path / f"{label}/unet.pt", weights_only=True) for label in ("raw", "ema")
    )
    assert all(
        torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5) for k in a["model"]
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("network", ["classifier", "unet"])
def test_cuda_mixed_precision_trains_and_resumes(
    data, tmp_path, monkeypatch, unet, network, precision
):
    """On a GPU: autocast in fp16 (with the GradScaler) or bf16, batches from two
    persistent loader workers into pinned memory, killed after epoch 1 and resumed; the
    checkpoint loads on a CPU."""
    cuda = {"train.device": "cuda", "train.precision": precision, f"{network}.epochs": 2}
    cuda["machine.workers"] = 2
    cuda["start"] = unet if network == "classifier" else None
    interrupted_after_one_epoch(data, tmp_path, monkeypatch, name=network, **cuda)
    train_network(data, tmp_path, name=network, resume=True, **cuda)
    history = pd.read_csv(tmp_path / f"{network}.csv")
    assert history.epoch.tolist() == [1, 2] and np.isfinite(history.train_loss).all()
    state = torch.load(tmp_path / f"{network}.pt", weights_only=True, map_location="cpu")
    assert state["config"]["epochs"] == 2 and state["model"]


def test_pos_weight_counts_each_class_defect_pixels_as_torch_does():
    from steelflow.losses import pixel_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 12, generator=gen)
    target = (torch.rand(2, 4, 8, 12, generator=gen) > 0.8).float()
    weights = [10.0, 4.0, 1.0, 1.0]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, reduction="none", pos_weight=torch.tensor(weights).view(4, 1, 1)
    ).mean(dim=(0, 2, 3))
    assert torch.allclose(pixel_loss(logits, target, 0, weights), expected, atol=1e-6)
    plain = pixel_loss(logits, target, 0, [1.0] * 4)
    assert torch.allclose(plain[2:], expected[2:]) and (plain[:2] < expected[:2]).all()


def test_the_unet_validates_the_images_with_a_defect_and_the_classifier_all(data, tmp_path):
    config, cache = tiny_config(), MaskCache(data / "masks")
    val_ids = split_ids(data / "split.csv", 0, cache)[1]
    defective = cache.classes().loc[val_ids].any(axis=1)
    assert defective.any() and not defective.all()  # the tiny fold has both kinds
    images = data / "raw/train_images"
    (tmp_path / "unet").mkdir(), (tmp_path / "classifier").mkdir()
    _, unet_val = UNetTask(config, 0).datasets(images, cache, data / "split.csv", tmp_path / "unet")
    _, classifier_val = ClassifierTask(config, 0).datasets(
        images, cache, data / "split.csv", tmp_path / "classifier"
    )
    assert unet_val.image_ids == [i for i in val_ids if defective[i]]
    assert classifier_val.image_ids == val_ids


def test_the_classifier_is_told_which_cell_holds_the_defect():
    task = ClassifierTask(tiny_config(), 0)
    masks, flags = torch.zeros(1, 4, 64, 400), torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    masks[0, 2, 40:50, 350:360] = 1  # a class 3 defect in the lower row, near the right end
    target = task.target(masks, flags)
    right, wrong = torch.full((1, 1, 2, 13), -8.0), torch.full((1, 1, 2, 13), -8.0)
    right[0, 0, 1, 11], wrong[0, 0, 0, 2] = 8.0, 8.0  # the same image logit, other cells
    assert image_logits(right).item() == image_logits(wrong).item() == 8.0
    assert task.loss(right, target) < 0.01 < task.loss(wrong, target)
    prob, label = task.evidence(right, target, flags)
    assert prob.item() > 0.99 and label.item() == 1


def test_the_unet_score_sees_false_positives_that_the_defect_pair_dice_misses():
    task = UNetTask(tiny_config(), 0)
    flags = np.array([[0, 1, 0, 0], [0, 0, 1, 0]], dtype=float)  # a class 2, a class 3 image
    truth = np.array([[0, 100, 0, 0], [0, 0, 400, 0]])
    exact = np.stack([truth, truth, truth], axis=1)  # (N, 3, C): overlap, predicted, true
    spilled = exact.copy()
    spilled[1, 1, 1] = 300  # class 2 predicted over the class 3 scrape as well
    clean, noisy = task.metrics(exact, flags), task.metrics(spilled, flags)
    assert clean["dice_defect_2"] == noisy["dice_defect_2"] == 1.0  # blind to it
    assert noisy["pooled_dice_2"] == pytest.approx(2 * 100 / (400 + 100))
    assert clean["score"] == 1.0 and noisy["score"] == pytest.approx((1 + 0.4) / 2)
    assert np.isnan(noisy["pooled_dice_1"])  # no class 1 image: not scored


@pytest.mark.parametrize("schedule", ["cosine", "none"])
def test_the_learning_rate_warms_up_then_follows_its_schedule(schedule):
    lr, steps = 0.01, 5
    cfg = {"epochs": 3, "warmup_epochs": 1, "schedule": schedule}
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    lrs = []
    sched = train.lr_schedule(optimizer, cfg, steps)
    for _ in range(3 * steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    warmup, after = lrs[:steps], lrs[steps:]
    assert all(a < b for a, b in zip(warmup, warmup[1:], strict=False)) and warmup[-1] < lr
    assert after[0] == pytest.approx(lr)
    if schedule == "cosine":
        assert all(a > b for a, b in zip(after, after[1:], strict=False)) and after[-1] < 0.05 * lr
    else:
        assert after == pytest.approx([lr] * len(after))


def test_the_classifier_starts_from_the_unets_encoder(unet):
    net = ClassifierTask(tiny_config(), 0, start=unet).model()
    weights = torch.load(unet, weights_only=True)["model"]
    encoder = {
        k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")
    }
    ours = net.encoder.state_dict()
    assert ours.keys() == encoder.keys()
    assert all(torch.equal(ours[k], encoder[k].to(ours[k].dtype)) for k in ours)
    random = ClassifierTask(tiny_config(**{"classifier.pretrained": "none"}), 0).model()
    assert not torch.equal(
        random.encoder.state_dict()["body.conv1.weight"], ours["body.conv1.weight"]
    )


def test_a_classifier_without_its_unet_or_from_another_arch_stops_with_one_line(data, tmp_path):
    with pytest.raises(ValueError, match=r"U-Net checkpoint of fold 0 .*--start"):
        ClassifierTask(tiny_config(), 0).model()
    regnet = {"unet.epochs": 1, "unet.arch": "regnet_y_400mf", "classifier.pretrained": "none"}
    train_network(data, tmp_path, **regnet)
    config = tiny_config(**{"classifier.pretrained": "none"})
    config["classifier"]["pretrained"] = "unet"  # past the config check, as a stale file would be
    with pytest.raises(ValueError, match=r"unet.pt: a regnet_y_400mf U-Net, expected .*resnet18"):
        ClassifierTask(config, 0, start=tmp_path / "unet.pt").model()


def test_a_classifier_resumes_only_from_the_same_unet(data, tmp_path, unet, monkeypatch, caplog):
    train_network(data, tmp_path / "other", **{"unet.epochs": 1, "seed": 7})
    settings = {"name": "classifier", "classifier.epochs": 2}
    interrupted_after_one_epoch(data, tmp_path, monkeypatch, start=unet, **settings)
    with caplog.at_level(logging.INFO, logger="steelflow.train"):
        train_network(data, tmp_path, resume=True, start=tmp_path / "other/unet.pt", **settings)
    assert "trained with other start; training classifier from scratch" in caplog.text


def test_a_split_that_does_not_fit_is_one_line_before_any_training(data, tmp_path, capsys):
    """A split.csv of another mask cache, or without the fold asked for, stops the
    training before any image is decoded."""
    split = pd.read_csv(data / "split.csv")
    stale = tmp_path / "stale.csv"
    split.iloc[1:].to_csv(stale, index=False)  # one image fewer than the cache
    args = train_command(data, tmp_path / "out", **{"split.folds": 6})
    args[args.index("--split") + 1] = str(stale)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert f"{stale}: made from another mask cache than {data / 'masks'}" in err
    assert f"e.g. {split.ImageId[0]}" in err and "\n" not in err
    args[args.index("--split") + 1] = str(data / "split.csv")
    args[args.index("unet") + 1 : args.index("unet") + 1] = ["--fold", "5"]  # split has 0-4
    assert main(args) == 1
    assert "split.csv: fold 5 has no images; its folds are 0, 1, 2, 3, 4" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_same_state_saves_to_the_same_bytes_whatever_the_path(tmp_path):
    """A retrained model with the same weights is the same file: DVC reruns nothing after it."""
    state = {"model": {"w": torch.arange(6.0)}, "epoch": 1, "task": "unet"}
    checkpoint.save(tmp_path / "a/unet_f0.pt", state)
    checkpoint.save(tmp_path / "b/unet_f1.pt", state)
    assert (tmp_path / "a/unet_f0.pt").read_bytes() == (tmp_path / "b/unet_f1.pt").read_bytes()
