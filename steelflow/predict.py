"""Inference with both networks, and the post-processing that turns it into masks.

Each network sees an image exactly as it saw images in training: decoded once at
full size and area-resized to the network's scale (``dataset.at_scale``). The U-Net's
probabilities are averaged over the models of every trained fold and the
flipped views of test-time augmentation, and upsampled to full size (256x1600)
where a class can pass its threshold. The tuned
post-processing then keeps, per class, the pixels above the class's threshold
(optionally only where the class is the most probable), drops components and
masks smaller than the class's minimums, and empties every class of an image
the classifier calls clean.

``predict_images`` is the one prediction loop of ``submit``, ``predict``, the
Kaggle script and the benchmarks, and ``Predictor.batches`` its reader, shared
with tune's inference pass. Three stages overlap: the next batch is decoded
while the networks and the thresholds run on the device, while the CPU drops
small components and RLE-encodes the batch before. Decoding and that last stage
spread each batch's images over a thread per core (libjpeg, OpenCV and the numba
RLE kernels release the GIL). On a GPU (``Predictor.on_device``) the device also
decodes the JPEGs, downscales them and RLE-encodes the masks of classes without a
component minimum (``on_device``): only the file bytes cross to it, and only runs
and the masks left for the component search come back. At most a few batches are
in memory, however many images there are.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from steelflow import checkpoint, on_device, rle
from steelflow.dataset import at_scale, normalise
from steelflow.device import autocast, memory_format, pick_device, pick_precision, usable_cores
from steelflow.errors import SteelflowError
from steelflow.images import check_size, read_bytes, read_gray
from steelflow.io import CLASSES
from steelflow.models import build_classifier, build_unet, image_logits
from steelflow.thresholds import Thresholds

H, W = rle.SHAPE
C = len(CLASSES)
CORES = usable_cores()  # threads that decode and RLE-encode
STRETCH = 1.1  # an image whose width-to-height ratio is this far from 1600x256's is named

log = logging.getLogger(__name__)


def load_network(path: Path, task: str, device: torch.device):
    """A trained network and its config section, from a checkpoint of the engine."""
    state = checkpoint.load(path, task)
    build = build_unet if task == "unet" else build_classifier
    cfg = {**state["config"], "pretrained": "none"}  # the weights come from the checkpoint
    try:
        model = build(cfg)
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise checkpoint.CheckpointError(
            f"{path}: its weights do not fit the network its config describes (a checkpoint "
            f"of another steelflow version?): {str(e).splitlines()[0]}"
        ) from None
    return model.to(device).eval(), state["config"]


def exclusive(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) probabilities with every class but the most probable zeroed at each
    pixel: true masks never overlap."""
    return prob * (prob == prob.amax(dim=1, keepdim=True))


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a (H, W) uint8 mask: labels (0 = background) and the
    pixel count of each label."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA]


def drop_small_components(mask: np.ndarray, minimum: int) -> np.ndarray:
    """A (H, W) uint8 mask without its components of fewer than ``minimum`` pixels."""
    if not minimum or not mask.any():
        return mask
    labels, areas = components(mask)
    keep = areas >= minimum
    if keep[1:].all():
        return mask  # nothing to drop
    keep[0] = False
    return np.take(keep, labels).view(np.uint8)  # take frees the GIL; keep[labels] holds it


def upsample(prob: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) probabilities at full size, (N, C, H, W): bilinear, as in training.
    Always from a contiguous tensor: the channels_last kernel rounds differently, and
    every class of an image is upsampled the same way, alone or with the others."""
    if prob.shape[-2:] == (H, W):
        return prob
    return F.interpolate(prob.contiguous(), size=(H, W), mode="bilinear", align_corners=False)


# Bilinear upsampling gives each pixel a weighted mean of its neighbours, so nothing
# above their peak but float rounding, far below this margin.
PEAK_MARGIN = 1e-4


def threshold(prob: torch.Tensor, th: Thresholds, gated: np.ndarray) -> np.ndarray:
    """The device's part of ``postprocess``: (N, C, h, w) probabilities (at the U-Net's
    output size, or full size) to (N, C, H, W) uint8 masks on the CPU. Optionally only
    the most probable class per pixel; then per class the pixels above its threshold,
    emptied unless gated, and, for classes without a component minimum, unless the mask
    has the class's minimum area (``threshold_pairs`` does it)."""
    masks = np.zeros((len(prob), C, H, W), np.uint8)
    image, cls, found = threshold_pairs(prob, th, gated)
    masks[image, cls] = found.cpu().numpy()
    return masks


def threshold_pairs(
    prob: torch.Tensor, th: Thresholds, gated: np.ndarray
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """``threshold``'s masks that can be non-empty, as (image, class) indices and their
    (M, H, W) uint8 masks, on the device: only the gated classes whose peak probability
    reaches their threshold are upsampled and thresholded; the others are empty whatever
    upsampling does (with the non-overlap rule, every class of an image with such a
    class is upsampled)."""
    device = prob.device
    pixel = torch.tensor(th.pixel, dtype=prob.dtype, device=device)
    peak = prob.amax(dim=(-2, -1))
    candidate = torch.from_numpy(gated).to(device) & (peak > pixel - PEAK_MARGIN)
    if th.non_overlap:
        images = candidate.any(dim=1).nonzero()[:, 0]
        pairs = candidate[images].nonzero()
        full = exclusive(upsample(prob[images]))[pairs[:, 0], pairs[:, 1]]
        pairs[:, 0] = images[pairs[:, 0]]
    else:
        pairs = candidate.nonzero()
        full = upsample(prob[pairs[:, 0], pairs[:, 1]][:, None])[:, 0]
    k = pairs[:, 1]
    above = full > pixel[k].view(-1, 1, 1)
    area = above.sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)  # a row fits int16
    has_components = torch.tensor([m > 0 for m in th.min_component], device=device)[k]
    keep = has_components | (area >= torch.tensor(th.min_area, device=device)[k])
    image, cls = pairs.cpu().numpy().T
    return image, cls, (above & keep.view(-1, 1, 1)).view(torch.uint8)


def components_kept(mask: np.ndarray, k: int, th: Thresholds) -> np.ndarray:
    """A (H, W) mask of class ``k`` past its threshold, with the class's component
    minimum applied: small components dropped, then the mask emptied unless what is
    left has the class's minimum area."""
    kept = drop_small_components(mask, th.min_component[k])
    return kept if np.count_nonzero(kept) >= th.min_area[k] else np.zeros_like(kept)


def drop_components(masks: np.ndarray, th: Thresholds, gated: np.ndarray) -> np.ndarray:
    """The CPU's part of ``postprocess``, in place on ``threshold``'s masks:
    ``components_kept`` for the gated classes with a component minimum."""
    for k, minimum in enumerate(th.min_component):
        if minimum:
            for i in np.flatnonzero(gated[:, k]):
                masks[i, k] = components_kept(masks[i, k], k, th)
    return masks


def postprocess(prob: torch.Tensor, th: Thresholds, gated: np.ndarray) -> np.ndarray:
    """(N, C, h, w) probabilities (any size; ``threshold`` upsamples them) to
    (N, C, H, W) uint8 masks; ``gated`` (N, C) says which classes of each image are on
    and past their gate (``Thresholds.gated``)."""
    return drop_components(threshold(prob, th, gated), th, gated)


T = TypeVar("T")
R = TypeVar("R")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter), consumed lazily."""
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


def in_background(fn: Callable[[T], R], items: Iterable[T], ahead: int = 1) -> Iterator[R]:
    """``fn`` of each of ``items`` in order, computed in a background thread while the
    caller works on the one before: at most ``ahead + 1`` results wait."""
    with ThreadPoolExecutor(1) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


Views = dict[float, np.ndarray | torch.Tensor]  # an image at each scale the networks take
ReadBatch = Callable[[list[str]], list[Views]]  # the views of a batch of image names
# A batch past the thresholds: the RLE of each image's classes, and (image, class,
# (H, W) uint8 mask) for each mask the CPU has yet to finish (``components_kept``,
# then RLE encoding): the masks that can be non-empty, or on the device those alone
# whose class has a component minimum.
Thresholded = tuple[list[list[str]], list[tuple[int, int, np.ndarray]]]

FLIPS = {  # the image dimensions each test-time view flips
    "none": [()],
    "hflip": [(), (-1,)],
    "hflip+vflip": [(), (-1,), (-2,), (-2, -1)],
}


def load_ensemble(paths: list[Path], task: str, device: torch.device):
    """The networks of ``paths`` and their config section (of the first): all must take
    their input at the same scale."""
    loaded = [load_network(path, task, device) for path in paths]
    scales = {cfg["scale"] for _, cfg in loaded}
    if len(scales) > 1:
        raise SteelflowError(
            f"{', '.join(map(str, paths))}: {task} models of one ensemble must take the same "
            f"input scale, got {sorted(scales)}"
        )
    return [model for model, _ in loaded], loaded[0][1]


class Predictor:
    """The classifiers and U-Nets of the trained folds on a device, in the precision of
    the training config; their probabilities are averaged over the models and the
    ``tta`` flips (``FLIPS``). ``past_gate`` counts the images the U-Nets have run on.
    With ``on_device`` (the default on a GPU), JPEG decoding, downscaling and RLE
    encoding run on the device too (module ``on_device``), giving the CPU path's output."""

    def __init__(
        self,
        classifiers: list[Path],
        unets: list[Path],
        train_cfg: dict,
        tta: str = "none",
        on_device: bool | None = None,
    ):
        self.device = pick_device(train_cfg["device"])
        self.on_device = self.device.type == "cuda" if on_device is None else on_device
        self.pool = ThreadPoolExecutor(CORES)  # reads files and decodes on the CPU
        self.dtype = pick_precision(train_cfg["precision"], self.device)
        self.memory = memory_format(train_cfg["channels_last"])
        self.classifiers, self.classifier_cfg = load_ensemble(
            classifiers, "classifier", self.device
        )
        self.unets, self.unet_cfg = load_ensemble(unets, "unet", self.device)
        for model in self.classifiers + self.unets:
            model.to(memory_format=self.memory)
        self.flips = FLIPS[tta]
        self.past_gate = 0

    @property
    def scales(self) -> set[float]:
        return {self.classifier_cfg["scale"], self.unet_cfg["scale"]}

    def read(self, path: Path) -> Views:
        """The image file at each network's scale: decoded once, resized as in training."""
        return self.views_of(read_gray(path))

    def views_of(self, gray: np.ndarray) -> Views:
        """An image already decoded (any size) at each network's scale (``at_scale``)."""
        return {scale: at_scale(gray, scale) for scale in self.scales}

    def reader(self, folder: Path, severstal: bool = False) -> ReadBatch:
        """The views of a batch of images of ``folder``, by name: decoded on the CPU, an
        image per core (``read``), or, ``on_device``, the files read an image per core
        and decoded and downscaled on the device, as a batch. With ``severstal``, an
        image that is not 1600x256 is refused (``check_size``)."""
        if not self.on_device:

            def read_one(name: str) -> Views:
                gray = read_gray(folder / name)
                if severstal:
                    check_size(gray.shape, folder / name)
                return self.views_of(gray)

            return self.each(read_one)

        # the reader thread's device work on a stream of its own: nvJPEG may write over
        # memory that kernels queued on the networks' stream still use (pytorch/vision#9606),
        # which no synchronisation in this thread can rule out while that one runs
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

        def read(names: list[str]) -> list[Views]:
            paths = [folder / name for name in names]
            files = list(self.pool.map(read_bytes, paths))
            with torch.cuda.stream(stream):
                grays = on_device.decode_gray(files, paths, self.device)
                if severstal:
                    for gray, path in zip(grays, paths, strict=True):
                        check_size(tuple(gray.shape), path)
                views = [{s: on_device.at_scale(g, s) for s in self.scales} for g in grays]
            if stream is not None:
                stream.synchronize()  # done before the networks' stream reads them
            return views

        return read

    def each(self, read: Callable[[str], Views]) -> ReadBatch:
        """A batch reader calling ``read`` on each name, an image per core."""
        return lambda names: list(self.pool.map(read, names))

    def prepare(self, grays: list[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """A normalised (N, 1, h, w) batch on the device: uint8 is what crosses to it."""
        if isinstance(grays[0], torch.Tensor):  # decoded on the device
            x = torch.stack(grays).to(self.device)
            if x.is_cuda:  # made on the reader's stream: its memory is reused only after this
                for gray in grays:
                    gray.record_stream(torch.cuda.current_stream(x.device))
        else:
            x = torch.from_numpy(np.stack(grays))
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
        return normalise(x.to(self.device))[:, None].contiguous(memory_format=self.memory)

    def batches(
        self, names: Iterable[str], read: ReadBatch, batch_size: int
    ) -> Iterator[tuple[list[str], list[Views]]]:
        """(names, views) of ``names`` in batches, each read by ``read`` while the caller
        runs the networks on the batch before."""
        yield from in_background(lambda group: (group, read(group)), batched(names, batch_size))

    def average(self, models: list, x: torch.Tensor, dense: bool) -> torch.Tensor:
        """Mean sigmoid of ``models`` over the flipped views of ``x``, in fp32; a ``dense``
        (per-pixel) output is flipped back before it is averaged, a classifier's map of
        cells is reduced to its image logits."""
        total, passes = None, len(models) * len(self.flips)
        for model in models:
            for dims in self.flips:
                with autocast(self.device, self.dtype):
                    logits = model(x.flip(dims) if dims else x)
                # fp32 in the standard layout: on channels_last, the peak per class that
                # ``threshold_pairs`` takes is 40x slower on the CPU
                logits = logits.to(torch.float32, memory_format=torch.contiguous_format)
                # a new tensor: the in-place sums below never write to a model's output
                prob = torch.sigmoid(logits if dense else image_logits(logits))
                prob = prob.flip(dims) if dense and dims else prob
                total = prob if total is None else total.add_(prob)
        return total.div_(passes) if passes > 1 else total

    @torch.no_grad()
    def class_prob(self, views: list[Views]) -> np.ndarray:
        """Classifier probability that each image has each class, shape (N, C): a binary
        head's one 'any defect' probability stands for every class."""
        x = self.prepare([v[self.classifier_cfg["scale"]] for v in views])
        return self.average(self.classifiers, x, dense=False).expand(-1, C).cpu().numpy()

    @torch.no_grad()
    def mask_prob(self, views: list[Views], full_size: bool = True) -> torch.Tensor:
        """U-Net probabilities, (N, C, H, W) on the device; without ``full_size`` at the
        size the U-Net gives them (``threshold`` upsamples what it needs)."""
        x = self.prepare([v[self.unet_cfg["scale"]] for v in views])
        prob = self.average(self.unets, x, dense=True)
        return upsample(prob) if full_size else prob

    def thresholded(self, views: list[Views], th: Thresholds) -> Thresholded:
        """The batch's masks past ``threshold``, as ``Thresholded``; the U-Net runs only
        on images with a class that is on and past its gate. ``on_device``, the masks
        of classes without a component minimum are RLE-encoded there."""
        gated = th.gated(self.class_prob(views))
        passed = np.flatnonzero(gated.any(axis=1))
        texts = [[""] * C for _ in views]
        self.past_gate += len(passed)
        if not len(passed):
            return texts, []
        prob = self.mask_prob([views[i] for i in passed], full_size=False)
        image, cls, found = threshold_pairs(prob, th, gated[passed])
        image = passed[image]
        if self.on_device:  # the CPU searches components; the device encodes the rest
            search = np.array([th.min_component[k] > 0 for k in cls], bool)
            encode = torch.from_numpy(~search).to(self.device)
            encoded = on_device.rle_encode(found[encode])
            for i, k, text in zip(image[~search], cls[~search], encoded, strict=True):
                texts[i][k] = text
            image, cls, found = image[search], cls[search], found[~encode]
        return texts, list(zip(image, cls, found.cpu().numpy(), strict=True))


Prediction = tuple[str, list[str]]  # name, RLE of each class


def _finish(
    names: list[str], batch: Thresholded, th: Thresholds, pool: ThreadPoolExecutor
) -> list[Prediction]:
    """The CPU's stage, a mask per thread: components dropped, then RLE-encoded."""
    texts, masks = batch

    def one(item: tuple[int, int, np.ndarray]) -> str:
        _, k, mask = item
        return rle.encode(components_kept(mask, k, th) if th.min_component[k] else mask)

    for (i, k, _), text in zip(masks, pool.map(one, masks), strict=True):
        texts[i][k] = text
    return list(zip(names, texts, strict=True))


def predict_images(
    predictor: Predictor, th: Thresholds, names: list[str], read: ReadBatch, batch_size: int
) -> Iterator[Prediction]:
    """(name, RLE of each class) of each image of ``names`` (read by ``read``), in order
    and with a progress bar: decoding, the networks, and the components and RLE run as
    overlapping stages (see the module's docstring)."""

    def networks(batches):
        for batch_names, views in batches:
            yield batch_names, predictor.thresholded(views, th)

    batches = predictor.batches(names, read, batch_size)
    with (
        ThreadPoolExecutor(CORES) as pool,
        tqdm(total=len(names), desc="prediction", unit="img", mininterval=1) as bar,
    ):
        for found in in_background(lambda batch: _finish(*batch, th, pool), networks(batches)):
            yield from found
            bar.update(len(found))


def check_submission(table, image_ids: list[str]) -> None:
    """Every image has each class once, and every RLE is canonical; else SteelflowError."""
    expected = {(i, c) for i in image_ids for c in CLASSES}
    got = list(zip(table.ImageId, table.ClassId, strict=True))
    if len(got) != len(expected) or set(got) != expected:
        raise SteelflowError(
            f"submission has {len(got)} rows, expected one per image and class: {len(expected)}"
        )
    for image, cls, text in zip(table.ImageId, table.ClassId, table.EncodedPixels, strict=True):
        if text and rle.encode(rle.decode(text)) != text:
            raise SteelflowError(f"submission: the RLE of {image} class {cls} is not canonical")


def submission_rows(
    predictor: Predictor, th: Thresholds, folder: Path, image_ids: list[str], batch_size: int
) -> list[tuple[str, int, str]]:
    """(ImageId, ClassId, EncodedPixels) of every image of ``folder`` named in ``image_ids``,
    each 1600x256 (the submission's RLE is of that size)."""
    found = predict_images(
        predictor, th, image_ids, predictor.reader(folder, severstal=True), batch_size
    )
    return [
        (name, cls, text) for name, texts in found for cls, text in zip(CLASSES, texts, strict=True)
    ]


def predict_folder(
    predictor: Predictor,
    th: Thresholds,
    folder: Path,
    out: Path,
    batch_size: int,
    layout: str = "current",
    overlays: bool = False,
):
    """Masks for every image of ``folder``: ``out``/predictions.csv (in a submission's
    ``layout``) and, with ``overlays``, one overlay PNG per image, named after the
    image's whole file name (``coil.jpg.png``), so ``coil.jpg`` and ``coil.png`` get one each.

    Images are streamed, a batch at a time, and resized for the networks as in
    training; an image of another size than 1600x256 has its masks resized back
    (nearest neighbour), so the RLE refers to the image's own size. Returns the
    predictions table as written.
    """
    import pandas as pd

    from steelflow.atomic import atomic_dir
    from steelflow.images import list_images
    from steelflow.io import submission_table
    from steelflow.report import save_overlay

    names = [path.name for path in list_images(folder)]
    if not names:
        raise SteelflowError(f"{folder}: holds no images; expected JPEG or PNG files")
    kept = {}  # full-size images of the batches in flight: overlays, or a size to restore
    stretched = []  # images of another shape, which the networks see stretched to 1600x256

    def read(name: str) -> Views:
        gray = read_gray(folder / name)
        if overlays or gray.shape != (H, W):
            kept[name] = gray
        ratio = (gray.shape[1] / gray.shape[0]) / (W / H)
        if max(ratio, 1 / ratio) > STRETCH:
            stretched.append(f"{name} ({gray.shape[1]}x{gray.shape[0]})")
        return predictor.views_of(gray)

    rows = []
    with atomic_dir(out, "predict") as tmp:
        for name, texts in predict_images(predictor, th, names, predictor.each(read), batch_size):
            gray = kept.pop(name, None)
            mask = rle.decode_many(texts) if gray is not None else None
            if gray is not None and gray.shape != (H, W):
                size = (gray.shape[1], gray.shape[0])
                mask = np.stack(
                    [cv2.resize(m, size, interpolation=cv2.INTER_NEAREST) for m in mask]
                )
                texts = rle.encode_many(mask)
            rows += [(name, c, text) for c, text in zip(CLASSES, texts, strict=True)]
            if overlays:
                save_overlay(tmp / f"{name}.png", gray, mask)
        found = pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"])
        table = submission_table(found, names, layout)
        table.to_csv(tmp / "predictions.csv", index=False)
    if stretched:
        log.warning(
            "%d of %d images are not shaped as 1600x256 (width 6.25 times the height), so the "
            "networks saw them stretched to it, which they were not trained on: %s%s",
            len(stretched),
            len(names),
            ", ".join(stretched[:3]),
            ", ..." if len(stretched) > 3 else "",
        )
    return table
