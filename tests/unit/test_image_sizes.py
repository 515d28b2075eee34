"""Models at 28, 32, 64 and 128 px: the stages follow the size, the capsule D's routing stays bounded."""

from __future__ import annotations

import pytest
import torch

from capsgan_dist.config import load_config
from capsgan_dist.models import build_discriminator, build_generator, count_params
from capsgan_dist.shapes import conv1_stride, g_upsamplings, g_widths_for

SIZES = [28, 32, 64, 128]


def test_generator_stages_and_widths_follow_the_size():
    assert [g_upsamplings(s) for s in SIZES] == [2, 3, 4, 5]  # from 7x7 at 28 px (the paper), else from 4x4
    paper = (128, 64, 32, 3)
    assert g_widths_for(paper, 28) == paper == g_widths_for(paper, 32)
    assert g_widths_for(paper, 64) == (256, 128, 64, 32, 3)
    assert g_widths_for(paper, 128) == (512, 256, 128, 64, 32, 3)


@pytest.mark.parametrize("size", SIZES)
def test_capsule_d_keeps_the_paper_at_28_and_a_bounded_grid_above(size):
    cfg = load_config(None, [f"data.image_size={size}", "data.channels=3"])
    D = build_discriminator(cfg)
    grid = int((D.n_in // 32) ** 0.5)
    assert D.conv1.stride == ((1, 1) if size <= 32 else (conv1_stride(size, 9, 7, 12),) * 2)
    assert grid <= 12 and D.n_in == 32 * grid * grid
    if size == 28:
        assert grid == 7 and D.conv1.kernel_size == (9, 9)  # the paper's 1,568 primary capsules
    # 5.3M at 28 px; at most 12 x 12 x 32 capsules x 10 x 16 x 8 routing weights (5.9M) plus the primary conv
    # (3.2M) above it, where an unbounded grid had 28.9M at 64 px and 136M at 128 px
    assert count_params(D) < 10_000_000
    x = torch.rand(2, 3, size, size) * 2 - 1
    assert D(x).shape == (2,)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("generator", ["dcgan", "capsule"])
def test_generators_make_images_of_every_size(size, generator):
    G = build_generator(load_config(None, [f"data.image_size={size}", "data.channels=3",
                                           f"model.generator={generator}"]))
    assert G(torch.randn(2, 100)).shape == (2, 3, size, size)


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("routing", ["em", "attention"])
def test_every_routing_kind_works_at_larger_sizes(size, routing):
    extra = ["model.primary_dim=16"] if routing == "em" else []
    D = build_discriminator(load_config(None, [f"data.image_size={size}", "data.channels=3",
                                               f"model.routing={routing}", *extra]))
    assert D.n_in <= 32 * 12 * 12  # the same bounded grid as dynamic routing
    logits = D(torch.rand(2, 3, size, size) * 2 - 1)
    logits.sum().backward()
    assert logits.shape == (2,) and all(p.grad is not None for p in D.parameters())
