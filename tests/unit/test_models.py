"""Model shapes, forward + backward for both image sizes, and the params/FLOPs utility."""

from __future__ import annotations

import pytest
import torch
from conftest import DEBUG_CONFIG
from torch import nn

from capsgan_dist.config import Config, DataConfig, ModelConfig, load_config
from capsgan_dist.errors import ConfigError
from capsgan_dist.models import (
    CapsuleDiscriminator,
    ConvDiscriminator,
    Generator,
    build_discriminator,
    build_generator,
    count_params,
    forward_flops,
    model_summary,
)

SIZES = [pytest.param(28, 1, id="28x28x1"), pytest.param(32, 3, id="32x32x3")]


def _cfg(size: int, channels: int, *extra: str):
    return load_config(None, [f"data.image_size={size}", f"data.channels={channels}", *extra])


def _all_grads_finite(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("size,channels", SIZES)
def test_generator_shape_range_and_backward(size, channels):
    torch.manual_seed(0)
    G = build_generator(_cfg(size, channels))
    x = G(torch.randn(3, 100))
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    x.square().mean().backward()
    _all_grads_finite(G)


@pytest.mark.parametrize("size,channels", SIZES)
@pytest.mark.parametrize("kind", ["capsule", "conv"])
def test_discriminator_logits_and_backward(size, channels, kind):
    torch.manual_seed(0)
    D = build_discriminator(_cfg(size, channels, f"model.discriminator={kind}"))
    assert isinstance(D, CapsuleDiscriminator if kind == "capsule" else ConvDiscriminator)
    x = torch.rand(3, channels, size, size) * 2 - 1
    logits = D(x)
    assert logits.shape == (3,)
    nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0, 1.0])).backward()
    _all_grads_finite(D)


def test_generator_batchnorm_option():
    G = build_generator(_cfg(28, 1, "model.g_batchnorm=true"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in G.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build_generator(_cfg(28, 1)).modules())


def test_paper_generator_conv_widths():
    """The paper's five 3x3 convs have 128, 64, 32, 3 and 1 kernels (MNIST)."""
    G = Generator()
    convs = [m for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [m.out_channels for m in convs] == [128, 64, 32, 3, 1]
    assert all(m.kernel_size == (3, 3) for m in convs)


def test_capsule_discriminator_paper_layout():
    D = CapsuleDiscriminator()  # 28x28: conv 9x9 -> 20x20, primary 7x7 stride 2 -> 7x7
    assert D.conv1.out_channels == 256 and isinstance(D.act1, nn.PReLU)
    assert D.primary.conv.kernel_size == (7, 7) and D.primary.conv.stride == (2, 2)
    assert D.n_in == 32 * 7 * 7
    assert D.caps.weight.shape == (32 * 7 * 7, 10, 16, 8)
    assert D.caps.iterations == 3
    linears = [m for m in D.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(160, 64), (64, 1)]


def test_conv_discriminator_has_five_convs():
    D = ConvDiscriminator()
    assert sum(isinstance(m, nn.Conv2d) for m in D.modules()) == 5
    assert sum(isinstance(m, nn.LeakyReLU) for m in D.modules()) == 4


def test_discriminator_routes_each_sample_independently():
    """D's output for one image does not depend on the rest of the batch (no batch-shared state)."""
    torch.manual_seed(0)
    D = build_discriminator(load_config(DEBUG_CONFIG)).double()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(D(x)[2:3], D(x[2:3]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n_caps", [0, 1])
def test_n_caps_below_two_rejected_by_config(n_caps):
    with pytest.raises(ConfigError, match=r"model\.n_caps.*no-op"):
        load_config(None, [f"model.n_caps={n_caps}"])


def test_too_small_image_rejected():
    with pytest.raises(ValueError, match="too small"):
        CapsuleDiscriminator(image_size=12, conv1_kernel=9, primary_kernel=7)


TINY = {"conv1_channels": 2, "primary_channels": 2, "primary_dim": 2, "n_caps": 2, "caps_dim": 2, "dense": 2,
        "g_widths": [2, 2, 2], "d_widths": [2, 2, 2, 2], "latent_dim": 4}


@pytest.fixture
def one_thread():
    """Tiny forwards: one thread each is ~500x faster than two threads fighting over a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("disc", ["capsule", "conv"])
def test_config_refuses_exactly_the_shapes_the_models_cannot_build(disc, one_thread):
    """Every size x kernel combination: either a ConfigError naming the keys, or both models build and run.

    And the config is not stricter than the layers: whatever it refuses, the capsule D also refuses.
    """
    refused = 0
    for size in range(8, 33, 4):  # the generator needs a multiple of 4, >= 8
        for k1 in (1, 3, 5, 9, 13, 17, 29):
            for kp in (1, 3, 7, 9, 17):
                try:  # the dataclasses run the same checks as load_config, without OmegaConf's overhead
                    cfg = Config(data=DataConfig(image_size=size), model=ModelConfig(
                        discriminator=disc, conv1_kernel=k1, primary_kernel=kp, **TINY))
                except ConfigError as e:
                    refused += 1
                    msg = str(e)
                    assert disc == "capsule" and "data.image_size" in msg and "model.conv1_kernel" in msg, msg
                    with pytest.raises(ValueError, match="too small"):
                        CapsuleDiscriminator(size, 1, 2, k1, kp, 2, 2, 2, 2)
                    continue
                G, D = build_generator(cfg), build_discriminator(cfg)
                with torch.no_grad():
                    x = G(torch.randn(2, 4))
                    assert x.shape == (2, 1, size, size) and D(x).shape == (2,)
    assert (refused > 0) == (disc == "capsule")


def test_too_small_image_for_the_capsule_d_names_the_keys_and_a_size_that_works():
    with pytest.raises(ConfigError) as e:
        load_config(DEBUG_CONFIG, ["data.image_size=8"])  # debug kernels 5 and 5 need >= 9, i.e. 12
    assert "data.image_size=8" in str(e.value) and "data.image_size>=12" in str(e.value)
    load_config(DEBUG_CONFIG, ["data.image_size=12"])


def test_count_params():
    assert count_params(nn.Linear(3, 4)) == 3 * 4 + 4
    frozen = nn.Linear(3, 4)
    frozen.bias.requires_grad_(False)
    assert count_params(frozen) == 12


@pytest.mark.parametrize("n_in,n_out", [(7, 5), (100, 64)])
def test_flops_of_one_linear(n_in, n_out):
    assert forward_flops(nn.Linear(n_in, n_out), torch.zeros(4, n_in)) == 2 * n_in * n_out


def test_flops_of_one_conv_per_image():
    # each of the 6x6 outputs x 8 channels is a dot product of length 3*3*2: 2 FLOPs per MAC
    conv = nn.Conv2d(2, 8, 3)
    assert forward_flops(conv, torch.zeros(3, 2, 8, 8)) == 2 * 6 * 6 * 8 * 3 * 3 * 2


def test_model_summary_sane():
    cfg = load_config(None)
    s = model_summary(cfg)
    assert s["params_g"] == count_params(build_generator(cfg))
    assert s["params_d"] == count_params(build_discriminator(cfg))
    # the routed-capsule weights alone are 1568*10*16*8 and a forward uses each one at least twice
    assert s["params_d"] > 1568 * 10 * 16 * 8
    assert s["flops_d"] > 2 * 1568 * 10 * 16 * 8
    assert s["flops_g"] > 2 * 100 * 128 * 7 * 7
    # the paper-size capsule D costs far more than the conv baseline
    conv = model_summary(load_config(None, ["model.discriminator=conv"]))
    assert s["flops_d"] > 5 * conv["flops_d"]


@pytest.mark.parametrize("size,channels", SIZES)
def test_generator_output_depends_on_z_at_init(size, channels):
    """At init, z moves the output about as much as the shared mean image does (not ~50x less).

    With PyTorch's default init the random biases dominate this BatchNorm-free stack: every z gives
    nearly the same image (ratio ~0.01-0.05) and G collapsed to one checkerboard on MNIST.
    """
    z = torch.randn(64, 100, generator=torch.Generator().manual_seed(1))
    for seed in range(5):
        torch.manual_seed(seed)
        G = Generator(image_size=size, channels=channels)
        assert all(not m.bias.any() for m in G.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        with torch.no_grad():
            x = G(z)
        ratio = x.std(0).mean() / x.mean(0).pow(2).mean().sqrt()
        assert ratio > 0.4, f"seed {seed}: across-sample std is only {ratio:.3f} of the mean image"
