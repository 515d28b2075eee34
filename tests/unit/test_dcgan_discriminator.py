"""Radford et al.'s DCGAN D: shapes at every size, its init, and batch statistics that never mix real and fake."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from capsgan_dist.config import load_config, model_hash
from capsgan_dist.errors import ConfigError
from capsgan_dist.models import ConvDiscriminator, DCGANDiscriminator, build_discriminator, build_generator
from capsgan_dist.steps import d_logits, separate_batches

# (image size, strided convs, map side the last conv covers): 28 -> 14 -> 7 -> 3, 32 -> ... -> 4, ...
STAGES = [(28, 3, 3), (32, 3, 4), (64, 4, 4), (128, 5, 4)]


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size,strided,last_map", STAGES)
def test_dcgan_d_layers_and_logits_at_each_size(size, strided, last_map, channels):
    cfg = load_config(None, ["model.discriminator=dcgan", f"data.image_size={size}", f"data.channels={channels}"])
    D = build_discriminator(cfg)
    assert isinstance(D, DCGANDiscriminator)
    convs = _convs(D)
    assert len(convs) == strided + 1
    for i, conv in enumerate(convs[:-1]):
        assert conv.kernel_size == (4, 4) and conv.stride == (2, 2) and conv.padding == (1, 1)
        assert conv.out_channels == 64 * 2 ** i  # widths double from model.d_base_width
    assert convs[0].in_channels == channels
    assert convs[-1].kernel_size == (last_map, last_map) and convs[-1].out_channels == 1
    assert all(c.bias is None for c in convs)
    # batch norm after every strided conv but the first (Radford et al.)
    kinds = [type(m).__name__ for m in D.net]
    assert kinds[:2] == ["Conv2d", "LeakyReLU"]
    assert kinds.count("BatchNorm2d") == strided - 1
    D.train()
    x = torch.rand(4, channels, size, size) * 2 - 1
    logits = D(x)
    assert logits.shape == (4,)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())


def test_dcgan_init_is_normal_002_with_batchnorm_scales_near_one():
    torch.manual_seed(0)
    D = DCGANDiscriminator(64, 3)
    weights = torch.cat([c.weight.flatten() for c in _convs(D)])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    scales = torch.cat([m.weight for m in D.modules() if isinstance(m, nn.BatchNorm2d)]).detach()
    assert scales.mean().item() == pytest.approx(1.0, abs=0.005)
    assert scales.std().item() == pytest.approx(0.02, rel=0.1)
    # PyTorch's default would give a much wider first layer: the init really ran.
    assert _convs(nn.Conv2d(3, 64, 4))[0].weight.std().item() > 0.05


def test_generator_dcgan_init_option():
    G = build_generator(load_config(None, ["model.g_init=dcgan", "model.g_batchnorm=true"]))
    for m in G.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.15), m
            assert (m.bias == 0).all()
    keras = build_generator(load_config(None, []))
    last = [m for m in keras.modules() if isinstance(m, nn.Conv2d)][-1]  # 3 -> 1 channels: Glorot std 0.24
    assert last.weight.std().item() > 0.1  # the default stays Glorot-uniform


def test_capsule_d_takes_the_dcgan_init_on_its_convs_and_dense_head_not_its_routing_matrices():
    torch.manual_seed(0)
    plain = build_discriminator(load_config(None, []))
    torch.manual_seed(0)
    D = build_discriminator(load_config(None, ["model.d_init=dcgan"]))
    layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 4  # conv1, the primary-capsule conv, Dense(64), Dense(1)
    for m in layers:
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.15), m
        assert (m.bias == 0).all()
    assert plain.conv1.weight.std().item() > 0.05  # PyTorch's default for a 9x9 conv over 1 channel: ~0.064
    torch.testing.assert_close(D.caps.weight, plain.caps.weight)  # same draw, untouched


def _bn_d(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return DCGANDiscriminator(28, 1, base_width=8).train()


def test_separate_forwards_keep_real_and_fake_statistics_apart():
    """With batch norm, D's logits on the reals must not depend on the fakes beside them."""
    real = torch.rand(6, 1, 28, 28) * 2 - 1
    fake_a, fake_b = torch.rand(4, 1, 28, 28) * 2 - 1, -torch.ones(4, 1, 28, 28)
    D = _bn_d()
    ra, _ = d_logits(D, real, fake_a, separate=True)
    rb, _ = d_logits(D, real, fake_b, separate=True)
    assert torch.equal(ra, rb)
    assert torch.allclose(ra, D(real))
    # The same check catches a mixed batch: one forward over both lets the fakes shift the reals' logits.
    ja, _ = d_logits(D, real, fake_a, separate=False)
    jb, _ = d_logits(D, real, fake_b, separate=False)
    assert (ja - jb).abs().max() > 1e-3


def test_every_batch_norm_call_of_a_training_d_step_sees_one_kind_of_image(tmp_path):
    """Hooks on each batch-norm layer during a real D update: only batch_real or batch_fake rows, never both."""
    from capsgan_dist.dist import setup
    from capsgan_dist.loader import DeviceBatches
    from capsgan_dist.steps import EagerSteps

    cfg = load_config(None, ["model.discriminator=dcgan", "model.d_base_width=8", "model.g_widths=[8,8,8,3]",
                             "train.batch_real=6", "train.batch_fake=5", "tracking.backend=none"])
    dist = setup(cfg)
    try:
        G, D = build_generator(cfg), build_discriminator(cfg)
        seen: list[int] = []
        for m in D.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
        opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
        G, opt_g = dist.acc_g.prepare(G, opt_g)
        D, opt_d = dist.acc_d.prepare(D, opt_d)
        batches = DeviceBatches(torch.zeros(32, 1, 28, 28, dtype=torch.uint8), 6, 0, dist.device, 0, 1).stream(0)
        steps = EagerSteps(cfg, dist, G, D, dist.acc_d.unwrap_model(D), opt_g, opt_d, batches, float("inf"))
        assert steps.separate
        stats = steps.d_step(0)
    finally:
        dist.shutdown()
    assert torch.isfinite(stats).all()
    assert sorted(set(seen)) == [5, 6] and 11 not in seen


def test_d_batches_choices_and_refusals():
    assert separate_batches(load_config(None, ["model.discriminator=dcgan"]), DCGANDiscriminator())
    assert not separate_batches(load_config(None, ["model.discriminator=conv"]), ConvDiscriminator())
    assert separate_batches(load_config(None, ["train.d_batches=separate"]), ConvDiscriminator())
    with pytest.raises(ConfigError, match="train.d_batches=joint would mix"):
        load_config(None, ["model.discriminator=dcgan", "train.d_batches=joint"])
    load_config(None, ["model.discriminator=dcgan", "train.d_batches=joint", "model.d_batchnorm=false"])
    with pytest.raises(ConfigError, match="dcgan has no semi-supervised"):
        load_config(None, ["model.discriminator=dcgan", "data.labels_per_class=10"])
    with pytest.raises(ConfigError, match="train.d_batches"):
        load_config(None, ["train.d_batches=mixed"])


def test_conv_d_ablation_knobs():
    base = ["model.discriminator=conv"]
    k4 = build_discriminator(load_config(None, [*base, "model.d_kernel=4"]))
    assert all(c.kernel_size == (4, 4) for c in _convs(k4)[:-1]) and k4(torch.zeros(2, 1, 28, 28)).shape == (2,)
    nobias = build_discriminator(load_config(None, [*base, "model.d_bias=false"]))
    assert all(c.bias is None for c in _convs(nobias))
    three = build_discriminator(load_config(None, [*base, "model.d_widths=[64,128,256]"]))
    assert [c.stride for c in _convs(three)[:-1]] == [(2, 2)] * 3 and _convs(three)[-1].kernel_size == (4, 4)
    init = build_discriminator(load_config(None, [*base, "model.d_init=dcgan"]))
    assert _convs(init)[0].weight.std().item() == pytest.approx(0.02, rel=0.15)
    with pytest.raises(ConfigError, match="model.d_kernel"):
        load_config(None, [*base, "model.d_kernel=5"])
    bn_cfg = load_config(None, [*base, "model.conv_batchnorm=true"])
    bn = build_discriminator(bn_cfg)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3  # after every conv but the first
    assert separate_batches(bn_cfg, bn)  # auto: real and fake forwarded apart
    with pytest.raises(ConfigError, match="mix real and generated images in the conv D's batch norm"):
        load_config(None, [*base, "model.conv_batchnorm=true", "train.d_batches=joint"])


def test_model_hash_ignores_new_keys_at_their_defaults_only():
    default = load_config(None, [])
    assert model_hash(default) == model_hash(load_config(None, ["model.d_kernel=3", "model.g_init=keras"]))
    for ov in ("model.d_kernel=4", "model.g_init=dcgan", "model.d_batchnorm=false", "model.d_base_width=32"):
        assert model_hash(load_config(None, [ov])) != model_hash(default), ov


def test_without_batch_norm_joint_and_separate_forwards_give_the_same_loss_and_gradients():
    """Why the capsule and conv Ds need no separate forwards: without batch norm the two are one function."""
    from capsgan_dist import losses
    from capsgan_dist.config import LossConfig

    torch.manual_seed(0)
    D = ConvDiscriminator(28, 1, (8, 16, 32, 32))
    real, fake = torch.rand(6, 1, 28, 28) * 2 - 1, torch.rand(4, 1, 28, 28) * 2 - 1
    grads = []
    for separate in (False, True):
        D.zero_grad()
        losses.d_loss(*d_logits(D, real, fake, separate), LossConfig()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in D.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
