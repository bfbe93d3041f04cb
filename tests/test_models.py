"""Every listed encoder with both decoders, on a full-size image; the one-channel input."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from steelflow.config import load
from steelflow.models import ENCODERS, backbone, build_classifier, build_unet
from tests.conftest import TEST_CONFIG

CONFIG = load(TEST_CONFIG)


@pytest.mark.parametrize("arch", ENCODERS)
def test_each_encoder_builds_both_decoders_and_the_classifier_on_a_full_image(arch):
    torch.manual_seed(0)
    x = torch.randn(1, 1, 256, 1600)
    with torch.no_grad():
        for decoder, stride in (("unet", 2), ("unet", 1), ("fpn", 2)):
            cfg = {**CONFIG["unet"], "arch": arch, "decoder": decoder, "output_stride": stride}
            out = build_unet(cfg).eval()(x)
            assert out.shape == (1, 4, 256, 1600), (decoder, stride)
            assert torch.isfinite(out).all()
        classifier = build_classifier({**CONFIG["classifier"], "arch": arch, "head": "multilabel"})
        assert classifier.eval()(x).shape == (1, 4, 8, 50)  # a logit per class and stride-32 cell


def test_the_encoder_takes_its_features_at_strides_2_to_32():
    unet = build_unet({**CONFIG["unet"], "arch": "regnet_y_400mf"})
    assert unet.encoder.strides == [2, 4, 8, 16, 32]
    assert unet.encoder.channels == [32, 48, 104, 208, 440]
    convnext = build_unet({**CONFIG["unet"], "arch": "convnext_tiny", "output_stride": 1})
    assert convnext.encoder.strides == [4, 8, 16, 32]  # no stride-2 stage: upsampled without skip


def test_the_rgb_first_layer_is_summed_into_one_channel(tmp_path):
    reference = models.efficientnet_b0(weights=None).state_dict()
    path = tmp_path / "effb0.pth"
    torch.save(reference, path)
    net = backbone("efficientnet_b0", "imagenet", str(path), fallback_random=False)
    first = net.features[0][0]
    assert first.in_channels == 1
    assert torch.equal(first.weight, reference["features.0.0.weight"].sum(dim=1, keepdim=True))


def test_a_full_resolution_head_adds_a_decoder_block_at_the_input_size():
    half = build_unet({**CONFIG["unet"], "output_stride": 2})
    full = build_unet({**CONFIG["unet"], "output_stride": 1})
    assert len(full.ups) == len(half.ups) + 1 and full.head.in_channels == 16


def test_the_balanced_sampler_draws_each_class_and_clean_images_equally_often():
    from steelflow.dataset import BalancedSampler

    flags = torch.zeros(1000, 4)
    flags[:400, 2] = 1  # class 3 common
    flags[400:420, 1] = 1  # class 2 rare: 20 images
    flags[420:490, 0] = 1  # class 1: 70 images
    flags[490:530, 3] = 1  # class 4: 40 images
    sampler = BalancedSampler(flags, seed=0)
    drawn = torch.tensor(list(sampler))
    assert len(drawn) == 1000
    share = flags[drawn].mean(dim=0)
    assert 0.17 < share[1] < 0.25 and 0.17 < share[3] < 0.25  # about 1/5 each, not 2%
    assert 0.15 < (flags[drawn].sum(dim=1) == 0).float().mean() < 0.25  # clean: about 1/5
    assert list(sampler) == drawn.tolist()  # depends only on (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler) != drawn.tolist()
    halves = [list(BalancedSampler(flags, 0, rank, 2)) for rank in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 500 and halves[0] != halves[1]


def test_the_square_root_sampler_draws_rare_classes_less_than_balanced_more_than_uniform():
    from steelflow.dataset import BalancedSampler

    flags = torch.zeros(1000, 4)
    flags[:400, 2] = 1  # class 3: 400 images
    flags[400:416, 1] = 1  # class 2: 16 images
    drawn = torch.tensor(list(BalancedSampler(flags, seed=0, power=0.5)))
    share = flags[drawn].mean(dim=0)
    expected = 4 / (4 + 20 + 24)  # sqrt of 16, of 400, of the 584 clean ones
    assert 0.02 < share[1] < 0.2 and share[1] == pytest.approx(expected, abs=0.025)


@pytest.mark.parametrize("decoder", ["unet", "fpn"])
def test_the_head_prior_sets_where_every_pixel_starts(decoder):
    """head_prior 0.01: the untrained network's output is near 0.01 everywhere, not 0.5."""
    cfg = {**CONFIG["unet"], "decoder": decoder, "head_prior": 0.01}
    torch.manual_seed(0)
    net = build_unet(cfg)
    head = net.head if decoder == "unet" else net.head[-1]
    assert torch.sigmoid(head.bias).tolist() == pytest.approx([0.01] * 4)
    with torch.no_grad():
        out = torch.sigmoid(net.eval()(torch.randn(2, 1, 64, 192)))
    assert 0.001 < out.median() < 0.05
    even = build_unet({**CONFIG["unet"], "decoder": decoder, "head_prior": 0.5})  # bias 0
    assert 0.2 < torch.sigmoid(even.eval()(torch.randn(2, 1, 64, 192))).median() < 0.8


def test_batch_norm_statistics_follow_a_short_run_in_every_family():
    """MobileNetV3 ships momentum 0.01: after 20 training batches its running means
    would hold under a fifth of the data's; at 0.1 they hold most of it."""
    net = backbone("mobilenet_v3_large", "none", None, False).train()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert first.momentum == 0.1
    with torch.no_grad():
        for _ in range(20):
            net(torch.full((2, 1, 64, 64), 3.0))
    batch_mean = net.features[0][0](torch.full((1, 1, 64, 64), 3.0)).mean(dim=(0, 2, 3))
    assert torch.allclose(first.running_mean, batch_mean, rtol=0.15, atol=1e-3)
