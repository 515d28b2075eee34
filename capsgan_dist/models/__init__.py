"""Model builders: the generator and both discriminators, built from a Config."""

from __future__ import annotations

import torch
from torch import nn

from capsgan_dist.config import N_CLASSES, Config
from capsgan_dist.models.capsule_generator import CapsuleGenerator
from capsgan_dist.models.class_discriminators import CapsuleClassDiscriminator, ConvClassDiscriminator
from capsgan_dist.models.dcgan_discriminator import DCGANDiscriminator, dcgan_init
from capsgan_dist.models.discriminators import CapsuleDiscriminator, ConvDiscriminator
from capsgan_dist.models.generators import Generator
from capsgan_dist.shapes import conv1_stride


def build_generator(cfg: Config) -> nn.Module:
    """The DCGAN-style generator, or the capsule generator when model.generator=capsule (model.g_init: its init)."""
    m, d = cfg.model, cfg.data
    if m.generator == "capsule":
        G: nn.Module = CapsuleGenerator(m.latent_dim, d.image_size, d.channels, m.g_top_caps, m.g_top_dim,
                                        m.g_primary_channels, m.g_primary_dim, m.g_routing_iters, m.routing_grad,
                                        tuple(m.g_widths), m.g_batchnorm)
    else:
        G = Generator(m.latent_dim, d.image_size, d.channels, tuple(m.g_widths), m.g_batchnorm)
    if m.g_init == "dcgan":  # in place of the Keras init each generator applies itself
        dcgan_init(G)
    return G


def build_discriminator(cfg: Config) -> nn.Module:
    """The capsule discriminator, Radford et al.'s DCGAN D (model.discriminator=dcgan) or the paper's
    5-layer reading of it (conv).

    Semi-supervised runs (data.labels_per_class > 0) get the same D with N_CLASSES class logits.
    """
    m, d = cfg.model, cfg.data
    if d.labels_per_class and m.discriminator == "conv":
        return ConvClassDiscriminator(d.image_size, d.channels, tuple(m.d_widths), N_CLASSES)
    stride = conv1_stride(d.image_size, m.conv1_kernel, m.primary_kernel, m.caps_max_grid)  # capsule Ds
    if d.labels_per_class:
        return CapsuleClassDiscriminator(d.image_size, d.channels, m.conv1_channels, m.conv1_kernel,
                                         m.primary_kernel, m.primary_channels, m.primary_dim, N_CLASSES,
                                         m.caps_dim, m.routing_iters, m.routing_grad, cfg.perf.routing, stride)
    if m.discriminator == "dcgan":
        return DCGANDiscriminator(d.image_size, d.channels, m.d_base_width, m.d_batchnorm)
    if m.discriminator == "conv":
        return ConvDiscriminator(d.image_size, d.channels, tuple(m.d_widths), m.d_kernel, m.d_bias, m.d_init,
                                 m.conv_batchnorm)
    D = CapsuleDiscriminator(d.image_size, d.channels, m.conv1_channels, m.conv1_kernel,
                             m.primary_kernel, m.primary_channels, m.primary_dim, m.n_caps,
                             m.caps_dim, m.routing_iters, m.routing_grad, m.dense, cfg.perf.routing,
                             m.routing, m.em_schedule, stride)
    if m.d_init == "dcgan":  # the init that helped the conv D, on the capsule D's convs and dense head;
        dcgan_init(D)        # the routing matrices keep their own scaled init (not conv or linear layers)
    return D


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one forward pass per item of `example`'s batch (matmuls, convs, einsums)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example)
    return counter.get_total_flops() // example.shape[0]


def model_summary(cfg: Config) -> dict[str, int]:
    """Parameter counts and forward FLOPs per image of G and D (a training step is ~3x forward)."""
    G, D = build_generator(cfg), build_discriminator(cfg)
    z = torch.randn(2, cfg.model.latent_dim)
    x = torch.zeros(2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    return {"params_g": count_params(G), "params_d": count_params(D),
            "flops_g": forward_flops(G, z), "flops_d": forward_flops(D, x)}


__all__ = ["CapsuleClassDiscriminator", "CapsuleDiscriminator", "CapsuleGenerator", "ConvClassDiscriminator",
           "ConvDiscriminator", "DCGANDiscriminator", "Generator", "build_generator", "build_discriminator",
           "count_params", "forward_flops", "model_summary"]
