"""Run configuration: frozen dataclasses, loaded from YAML with dotted overrides.

Precedence: command-line overrides > YAML file > dataclass defaults. OmegaConf's structured
configs reject unknown keys and wrong types; `__post_init__` checks ranges and choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from capsgan_dist.errors import ConfigError
from capsgan_dist.shapes import conv1_stride, min_capsule_image, primary_grid

DATASETS = ("synthetic", "mnist", "fashion_mnist", "cifar10", "celeba", "stl10", "idx", "folder")
GENERATORS = ("dcgan", "capsule")
DISCRIMINATORS = ("capsule", "dcgan", "conv")
# Model keys added after checkpoints existed: left out of model_hash at their defaults (see there).
LATER_MODEL_KEYS = {"conv_batchnorm": False, "caps_max_grid": 12, "em_schedule": "ramp", "g_init": "keras",
                    "d_kernel": 3, "d_bias": True, "d_init": "torch", "d_base_width": 64, "d_batchnorm": True}
# Keys that shape only the capsule generator: left out of model_hash for dcgan (see there).
CAPSULE_G_KEYS = ("generator", "g_top_caps", "g_top_dim", "g_primary_channels", "g_primary_dim", "g_routing_iters")
# Names the metric registry (capsgan_dist.metrics) may register; listed here so that validating a
# config imports no metric code (the metrics import this module, not the other way round).
METRIC_NAMES = ("fid", "kid", "is", "pr")
N_CLASSES = 10  # classes of every registered dataset (synthetic images get 10 too); idx data is checked on load
# The values of model.routing; the same tuple as capsgan_dist.models.routing.ROUTINGS (kept here so that
# reading a config does not import torch).
ROUTINGS = ("dynamic", "em", "attention")
EM_POSE = 16  # em's 4x4 pose matrices


def _choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{section}.{name}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}"
        )


def _positive(section: str, name: str, value: float, minimum: float = 0.0, strict: bool = True) -> None:
    bad = value <= minimum if strict else value < minimum
    if bad:
        op = ">" if strict else ">="
        raise ConfigError(f"{section}.{name}={value!r} is out of range; it must be {op} {minimum}")


@dataclass(frozen=True)
class DataConfig:
    name: str = "synthetic"
    """Dataset: synthetic | mnist | fashion_mnist | cifar10 | celeba | stl10 (torchvision; they download only
    online) | idx (a folder of IDX .gz files) | folder (your own PNG/JPEG/WebP/BMP/GIF images under data.root,
    converted by one rule: docs/data.md; celeba and stl10 go through the same rule)."""
    root: Optional[str] = None
    """Folder holding the data (torchvision root, the IDX folder for `idx`, the image folder for `folder`)."""
    labels: str = "none"
    """folder: none (unlabeled) | subfolders (an image's class is its first-level folder under data.root)."""
    background: str = "white"
    """folder: colour that transparent pixels are composited on: white | black | #rrggbb."""
    upscale: bool = False
    """folder: accept images whose shorter side is below half of data.image_size (they are enlarged)."""
    cache: bool = True
    """folder and idx: train from a prepared uint8 array file that every rank memory-maps (data/cache.py),
    decoded once and prepared again when the source changes; false reads the source into memory each run."""
    cache_dir: str = "data/cache"
    """Where prepared caches live (one folder per source and conversion settings)."""
    split: str = "auto"
    """train | test | auto (train if present, else test; MNIST here has only the test images)."""
    image_size: int = 28
    """Height and width the models are built for; the dataset must match it."""
    channels: int = 1
    """Image channels the models are built for (1 for MNIST, 3 for CIFAR-10)."""
    synthetic_size: int = 2048
    """Number of images in the synthetic dataset."""
    num_workers: int = 0
    """Unused: training batches are cut from memory by tensor indexing (loader.py); kept so older run configs load."""
    labels_per_class: int = 0
    """Semi-supervised mode when > 0: this many labeled training images per class (a seeded, class-balanced
    subset drawn with the run's `seed`); the rest of the training split is unlabeled (docs/semisup.md)."""
    test_size: int = 2000
    """Semi-supervised: images held out as the test split when the data has one split (MNIST here: the
    8,000/2,000 split the classifiers use); data with an official test split (Fashion-MNIST) uses that."""
    split_seed: int = 0
    """Semi-supervised: seed of that held-out split, the same for every run (0: the classifiers' split)."""

    def __post_init__(self) -> None:
        _choice("data", "name", self.name, DATASETS)
        _choice("data", "split", self.split, ("train", "test", "auto"))
        _positive("data", "image_size", self.image_size, 8, strict=False)
        if self.image_size % 4:
            raise ConfigError(
                f"data.image_size={self.image_size} must be divisible by 4 (the generator upsamples twice)"
            )
        _choice("data", "channels", self.channels, (1, 3))
        _positive("data", "synthetic_size", self.synthetic_size, 1, strict=False)
        _positive("data", "num_workers", self.num_workers, 0, strict=False)
        _positive("data", "labels_per_class", self.labels_per_class, 0, strict=False)
        _positive("data", "test_size", self.test_size, 1, strict=False)
        if self.name == "idx" and not self.root:
            raise ConfigError("data.name=idx needs data.root=<folder with *-images-idx3-ubyte.gz>")
        if self.name == "folder" and not self.root:
            raise ConfigError("data.name=folder needs data.root=<folder of images (PNG, JPEG, WebP, BMP, GIF)>")
        _choice("data", "labels", self.labels, ("none", "subfolders"))
        if not re.fullmatch(r"white|black|#[0-9a-fA-F]{6}", self.background):
            raise ConfigError(f"data.background={self.background!r}: use white, black or #rrggbb")


@dataclass(frozen=True)
class ModelConfig:
    discriminator: str = "capsule"
    """capsule (CapsuleGAN) | dcgan (Radford et al.'s DCGAN D: 4x4 stride-2 convs, batch norm, N(0, 0.02)
    init; the baseline) | conv (the paper's 5-layer reading of the DCGAN D: 3x3 convs, no batch norm)."""
    latent_dim: int = 100
    """Size of the generator's N(0, 1) latent vector."""
    g_widths: list[int] = field(default_factory=lambda: [128, 64, 32, 3])
    """Generator conv widths before the final conv to `data.channels` (paper: 128, 64, 32, 3, 1). The first is
    the start, the next k are the x2 upsamplings (k from the size: 2 at 28 px, 3 at 32, 4 at 64, 5 at 128);
    a list shorter than 1 + k gets doubled widths in front (64 px: 256, 128, 64, 32, 3)."""
    g_batchnorm: bool = False
    """BatchNorm in the generator (the paper trains without it)."""
    g_init: str = "keras"
    """Generator init: keras (Glorot-uniform weights, zero biases, as the paper's Keras code) | dcgan
    (Radford et al.: N(0, 0.02) weights, batch-norm scales N(1, 0.02))."""
    conv1_channels: int = 256
    """Kernels of the capsule D's first conv (paper: 256)."""
    conv1_kernel: int = 9
    """Kernel size of that conv (paper silent; Sabour et al.: 9)."""
    primary_kernel: int = 7
    """Kernel of the PrimaryCaps conv, stride 2 (paper: 7x7)."""
    primary_channels: int = 32
    """Capsule channels in PrimaryCaps."""
    primary_dim: int = 8
    """Dimension of each primary capsule."""
    n_caps: int = 10
    """Routed (DigitCaps-like) capsules; at least 2 or routing is a no-op."""
    caps_dim: int = 16
    """Dimension of each routed capsule."""
    routing: str = "dynamic"
    """Routing between primary and routed capsules: dynamic (Sabour et al. 2017) | em (matrix capsules,
    Hinton et al. 2018; needs primary_dim=16 and caps_dim=16) | attention (Efficient-CapsNet self-attention)."""
    em_schedule: str = "ramp"
    """em only: inverse temperatures and cost scale, ramp (this project's: lambda_t = (t + 1) / T, cost
    relative to uniform routing) | authors (Hinton et al.'s code: lambda_t = 0.01 (1 - 0.95^(t + 1)),
    cost x 100 / n_in); models/routing/em.py and docs/design.md."""
    routing_iters: int = 3
    """Routing iterations: dynamic-routing iterations (Sabour et al.: 3), EM iterations for em (Hinton
    et al.: 3); not used by attention, which routes in one pass."""
    routing_grad: str = "all"
    """all: backprop through every routing iteration | last: detach the earlier iterations (em: hold the
    last M-step's assignments fixed); attention has no iterations and takes only all."""
    dense: int = 64
    """Width of the dense layer between the flattened capsules and the logit."""
    caps_max_grid: int = 12
    """Capsule D: the largest primary-capsule grid side; a larger image strides conv1 (2, 4, ...) to stay within
    it, so routing's cost stays bounded (28 px: grid 7, 32 px: 9, stride 1 as in the paper); 0: never stride."""
    d_widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    """conv D: widths of its strided convs (strides 2, 2, 2, 1; 3 widths drop the stride-1 conv); a last
    conv over the remaining map gives the logit."""
    d_kernel: int = 3
    """conv D: kernel of its convs, 3 (the paper's reading) | 4 (as Radford et al.)."""
    d_bias: bool = True
    """conv D: biases in its convs (Radford et al.'s D has none)."""
    d_init: str = "torch"
    """conv D and capsule D: init, torch (PyTorch's default) | dcgan (N(0, 0.02) conv and dense weights,
    zero biases; the capsule D's routing matrices keep their own init)."""
    conv_batchnorm: bool = False
    """conv D: batch norm after every conv but the first (its real and generated images forwarded apart)."""
    d_base_width: int = 64
    """dcgan D: width of its first conv; each further strided conv doubles it (Radford et al.: 64)."""
    d_batchnorm: bool = True
    """dcgan D: batch norm after every strided conv but the first (Radford et al.); false for the ablation."""
    generator: str = "dcgan"
    """dcgan (the paper's conv generator) | capsule (z -> routed capsules -> the same conv stack)."""
    g_top_caps: int = 10
    """Capsule G: top capsules made from z; >= 2 or routing is a no-op (10: as D's routed capsules)."""
    g_top_dim: int = 16
    """Capsule G: dimension of each top capsule (16: Sabour et al.'s DigitCaps)."""
    g_primary_channels: int = 32
    """Capsule G: channels of the routed primary-capsule grid, image_size/4 square (32: Sabour's PrimaryCaps)."""
    g_primary_dim: int = 8
    """Capsule G: dimension of each primary capsule (8: Sabour's PrimaryCaps; the convs see 32 x 8 channels)."""
    g_routing_iters: int = 3
    """Capsule G: routing iterations from the top capsules to the grid (3: Sabour et al.)."""

    def __post_init__(self) -> None:
        _choice("model", "discriminator", self.discriminator, DISCRIMINATORS)
        _choice("model", "g_init", self.g_init, ("keras", "dcgan"))
        _choice("model", "d_kernel", self.d_kernel, (3, 4))
        _choice("model", "d_init", self.d_init, ("torch", "dcgan"))
        _choice("model", "generator", self.generator, GENERATORS)
        if self.g_top_caps < 2:
            raise ConfigError(
                f"model.g_top_caps={self.g_top_caps}: with fewer than 2 top capsules the capsule generator's "
                "softmax over parents is always 1 and routing would be a no-op; use model.g_top_caps>=2 (default 10)"
            )
        _choice("model", "routing", self.routing, ROUTINGS)
        _choice("model", "em_schedule", self.em_schedule, ("ramp", "authors"))
        _choice("model", "routing_grad", self.routing_grad, ("all", "last"))
        _positive("model", "routing_iters", self.routing_iters, 1, strict=False)
        if self.n_caps < 2:
            raise ConfigError(
                f"model.n_caps={self.n_caps}: with fewer than 2 routed capsules the softmax over output "
                "capsules is always 1 and routing would be a no-op; use model.n_caps>=2 (paper: 10)"
            )
        for name in ("latent_dim", "conv1_channels", "conv1_kernel", "primary_kernel",
                     "primary_channels", "primary_dim", "caps_dim", "dense", "g_top_dim", "d_base_width",
                     "g_primary_channels", "g_primary_dim", "g_routing_iters"):
            _positive("model", name, getattr(self, name), 1, strict=False)
        self._check_routing()
        if len(self.g_widths) < 3 or min(self.g_widths) < 1:
            raise ConfigError("model.g_widths must list at least 3 positive widths (paper: 128, 64, 32, 3)")
        _positive("model", "caps_max_grid", self.caps_max_grid, 0, strict=False)
        if len(self.d_widths) not in (3, 4) or min(self.d_widths) < 1:
            raise ConfigError("model.d_widths must list 3 or 4 positive widths (a last conv gives the logit)")

    def _check_routing(self) -> None:
        """Combinations the routing kinds cannot run (checked for the capsule D only)."""
        if self.discriminator != "capsule":
            return
        if self.routing == "em":  # every key to change in one message
            bad = [f"model.{n}={getattr(self, n)}" for n in ("primary_dim", "caps_dim") if getattr(self, n) != EM_POSE]
            if bad:
                fix = " ".join(f"{b.split('=')[0]}={EM_POSE}" for b in bad)
                raise ConfigError(f"{' and '.join(bad)} {'do' if len(bad) > 1 else 'does'} not fit model.routing=em, "
                                  f"whose capsules are 4x4 pose matrices; set {fix}")
        if self.routing == "attention" and self.routing_grad != "all":
            raise ConfigError(f"model.routing_grad={self.routing_grad} does not fit model.routing=attention, "
                              "which routes in one pass with nothing to detach; use model.routing_grad=all")


@dataclass(frozen=True)
class LossConfig:
    gan: str = "bce"
    """bce (the paper) | margin (capsule margin loss on D's probability)."""
    generator: str = "nonsaturating"
    """nonsaturating (-log D(G(z))) | minimax (the paper's log(1 - D(G(z)))) | feature_matching
    (semi-supervised only: match D's mean features on real and generated images, Salimans et al. 2016)."""
    supervised: str = "ce"
    """Semi-supervised loss on labeled images: ce (cross-entropy over D's K class logits) | margin
    (Sabour et al.'s margin loss on the class lengths sigmoid(l_k), the capsule lengths for the capsule D)."""
    unsup_weight: float = 1.0
    """Semi-supervised: weight of the real/fake loss next to the supervised one; 0 trains D on the labeled
    images alone (no GAN: the supervised-only baseline, G untouched)."""
    m_pos: float = 0.9
    """Margin loss m+ (Sabour et al.)."""
    m_neg: float = 0.1
    """Margin loss m-."""
    lam: float = 0.5
    """Margin loss down-weighting of absent targets."""

    def __post_init__(self) -> None:
        _choice("loss", "gan", self.gan, ("bce", "margin"))
        _choice("loss", "generator", self.generator, ("nonsaturating", "minimax", "feature_matching"))
        _choice("loss", "supervised", self.supervised, ("ce", "margin"))
        _positive("loss", "unsup_weight", self.unsup_weight, 0, strict=False)
        if not 0.0 <= self.m_neg < self.m_pos <= 1.0:
            raise ConfigError("loss.m_neg and loss.m_pos must satisfy 0 <= m_neg < m_pos <= 1")


@dataclass(frozen=True)
class OptimConfig:
    lr_d: float = 2e-4
    """Adam learning rate of D (paper: 2e-4)."""
    lr_g: float = 2e-4
    """Adam learning rate of G (paper: 2e-4)."""
    beta1: float = 0.5
    """Adam beta1 (DCGAN's 0.5)."""
    beta2: float = 0.999
    """Adam beta2."""
    scale_lr: str = "none"
    """Scale both learning rates with world size: none | linear | sqrt."""
    grad_clip: float = 0.0
    """Clip gradient norm to this value; 0 disables (also passed to DeepSpeed)."""

    def __post_init__(self) -> None:
        _positive("optim", "lr_d", self.lr_d)
        _positive("optim", "lr_g", self.lr_g)
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise ConfigError("optim.beta1 and optim.beta2 must be in [0, 1)")
        _choice("optim", "scale_lr", self.scale_lr, ("none", "linear", "sqrt"))
        _positive("optim", "grad_clip", self.grad_clip, 0, strict=False)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10000
    """Total updates. Alternate schedule: one step = one D or one G update (paper: 10,000)."""
    batch_real: int = 16
    """Real images per device in a D batch (paper: 16)."""
    batch_fake: int = 16
    """Generated images per device in a D batch (paper: 16); a G step uses real+fake noise."""
    batch_labeled: int = 16
    """Semi-supervised: labeled images per device in a D batch (next to batch_real unlabeled ones)."""
    schedule: str = "alternate"
    """alternate (paper: D on even steps, G on odd) | both (D then G every step)."""
    d_batches: str = "auto"
    """How a D update sees real and generated images: joint (one forward of both; the same loss for a D
    without batch norm) | separate (one forward each, so batch statistics never mix) | auto (separate
    for a D with batch norm, joint otherwise)."""
    mixed_precision: str = "no"
    """no | bf16 | fp16 (fp16 uses loss scaling)."""
    log_every: int = 10
    """Steps between metric rows (reduced across ranks)."""
    sample_every: int = 500
    """Steps between fixed-noise sample grids."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 3
    """Keep the newest K checkpoints."""
    keep_steps: list[int] = field(default_factory=list)
    """Steps that always get a checkpoint, never pruned (e.g. comparison points reloaded later)."""
    n_samples: int = 64
    """Images in the fixed-noise grid."""
    out_dir: str = "runs"
    """Parent folder of run folders."""
    run_dir: Optional[str] = None
    """Exact run folder; default `<out_dir>/<name>-<time>`."""
    max_nonfinite: int = 10
    """Stop after this many non-finite steps in a row (each one is skipped; checked once per log window)."""
    stop_check_every: int = 10
    """Steps between the ranks' agreement on a preemption signal (a collective); 1 process: every step."""
    progress: bool = True
    """Progress on the main process's stderr: a bar on a terminal, else a line every progress_every_s."""
    progress_every_s: float = 30.0
    """Seconds between progress lines when stderr is not a terminal (a log file, a batch job)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_real", "batch_fake", "batch_labeled", "log_every", "sample_every",
                     "checkpoint_every", "keep_checkpoints", "n_samples", "max_nonfinite", "stop_check_every"):
            _positive("train", name, getattr(self, name), 1, strict=False)
        _positive("train", "progress_every_s", self.progress_every_s, 0, strict=False)
        _choice("train", "schedule", self.schedule, ("alternate", "both"))
        _choice("train", "d_batches", self.d_batches, ("auto", "joint", "separate"))
        if any(s < 1 for s in self.keep_steps):
            raise ConfigError(f"train.keep_steps must hold steps >= 1, got {self.keep_steps}")
        if self.mixed_precision in ("False", "false"):  # YAML 1.1 reads a bare `no` as false
            object.__setattr__(self, "mixed_precision", "no")
        _choice("train", "mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))


@dataclass(frozen=True)
class TrackingConfig:
    backend: str = "wandb"
    """wandb | local | none (metrics.jsonl and curves.png are written in every case)."""
    mode: str = "offline"
    """W&B mode: offline | online (online needs a key; without one we fall back to offline)."""
    project: str = "capsgan-dist"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user)."""
    group: Optional[str] = None
    """W&B group (sweeps put all their trials in one group)."""
    tags: list[str] = field(default_factory=list)
    """W&B tags."""
    notes: Optional[str] = None
    """W&B notes."""
    grid_every: int = 500
    """Steps between per-rank sample grids gathered from all ranks."""
    wandb_console: bool = False
    """W&B's own console output (banner, run links, history sparklines); off: the run's closing line
    says where the W&B run is and how to upload it."""

    def __post_init__(self) -> None:
        _choice("tracking", "backend", self.backend, ("wandb", "local", "none"))
        _choice("tracking", "mode", self.mode, ("offline", "online"))
        _positive("tracking", "grid_every", self.grid_every, 1, strict=False)


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0
    """Steps between sample-quality evaluations in the training loop; 0 turns them off."""
    n: int = 10000
    """Generated images per evaluation (split over ranks, gathered on the main process)."""
    classifier: Optional[str] = None
    """Classifier file from `capsgan classifier train` whose feature space FID/KID/IS/PR use."""
    inception_weights: Optional[str] = None
    """Instead of a classifier: the FID Inception-v3 weights file (torch-fidelity's or pytorch-fid's
    .pth, never downloaded), the feature space of published FIDs. Needs torch-fidelity."""
    metrics: list[str] = field(default_factory=lambda: ["fid", "kid", "is", "pr"])
    """Metrics by registered name (capsgan_dist.metrics): fid | kid | is | pr."""
    batch: int = 500
    """Images per generator / classifier forward during evaluation."""
    kid_subsets: int = 100
    """KID: random subsets averaged (Binkowski et al.: 100)."""
    kid_subset_size: int = 1000
    """KID: images per subset (capped at the number of images)."""
    pr_k: int = 3
    """Precision/recall: k of the k-NN radius (Kynkaanniemi et al.: 3)."""

    def __post_init__(self) -> None:
        for name in ("n", "batch", "kid_subsets", "kid_subset_size", "pr_k"):
            _positive("eval", name, getattr(self, name), 1, strict=False)
        _positive("eval", "every", self.every, 0, strict=False)
        if self.classifier and self.inception_weights:
            raise ConfigError("eval.classifier and eval.inception_weights both name a feature network; "
                              "set one of them to null")
        if self.n <= max(1, self.pr_k):
            raise ConfigError(f"eval.n={self.n} is too small: FID needs 2 images and precision/recall more "
                              f"than eval.pr_k={self.pr_k}; use eval.n>={max(2, self.pr_k + 1)}")
        for m in self.metrics:
            _choice("eval", "metrics", m, METRIC_NAMES)

    @property
    def feature_network(self) -> Optional[str]:
        """The file whose features the metrics use (classifier or Inception), None if neither is set."""
        return self.classifier or self.inception_weights


@dataclass(frozen=True)
class PerfConfig:
    routing: str = "fused"
    """fused (hand-written routing backward, the default) | einsum (plain autograd; needed for double backward).
    Applies to model.routing=dynamic; em and attention have one plain autograd form (double backward works)."""
    compile: bool = False
    """torch.compile G and D in place; off is the safe choice (minutes of compiling, rounding-level changes)."""
    cuda_graphs: bool = False
    """Replay the D and G steps as captured CUDA graphs (1 CUDA process); off is the safe choice (unmeasured)."""

    cpu_threads: int = 0
    """torch's intra-op CPU threads per process; 0: the CPUs this process may use (affinity, cgroup quota,
    SLURM_CPUS_PER_TASK) divided among the node's local processes, capped by OMP_NUM_THREADS (threads.py)."""

    def __post_init__(self) -> None:
        _choice("perf", "routing", self.routing, ("fused", "einsum"))
        _positive("perf", "cpu_threads", self.cpu_threads, 0, strict=False)


@dataclass(frozen=True)
class Config:
    name: str = "capsgan"
    """Run name (prefix of the run folder, W&B run name)."""
    seed: int = 0
    """Seed for weights, data order and noise."""
    resume: str = "none"
    """none | auto (continue from the newest valid checkpoint in train.run_dir)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)

    def __post_init__(self) -> None:
        _choice("", "resume", self.resume, ("none", "auto"))
        semisup = self.data.labels_per_class > 0
        if self.eval.every and not (self.eval.feature_network or semisup):  # semi-supervised runs score D alone
            raise ConfigError("eval.every>0 needs eval.classifier=<file from `capsgan classifier train`> "
                              "(or eval.inception_weights=<FID Inception .pth>)")
        if self.loss.generator == "feature_matching" and not semisup:
            raise ConfigError("loss.generator=feature_matching is a semi-supervised option; set "
                              "data.labels_per_class=N or choose loss.generator=nonsaturating")
        if semisup and self.model.discriminator == "capsule" and self.model.n_caps != N_CLASSES:
            raise ConfigError(f"model.n_caps={self.model.n_caps}: semi-supervised training reads one routed "
                              f"capsule per class and the data has {N_CLASSES}; set model.n_caps={N_CLASSES}")
        if semisup and self.model.discriminator == "capsule" and self.model.routing != "dynamic":
            raise ConfigError(f"model.routing={self.model.routing}: the semi-supervised capsule D reads class "
                              "capsule lengths and routes dynamically; set model.routing=dynamic")
        if semisup and self.model.discriminator == "dcgan":
            raise ConfigError("model.discriminator=dcgan has no semi-supervised (class-output) form; "
                              "use model.discriminator=conv or capsule")
        bn = self.model.d_batchnorm if self.model.discriminator == "dcgan" else self.model.conv_batchnorm
        if self.model.discriminator in ("dcgan", "conv") and bn and self.train.d_batches == "joint":
            raise ConfigError(f"train.d_batches=joint would mix real and generated images in the "
                              f"{self.model.discriminator} D's batch norm, so D could tell them apart by batch "
                              "statistics; use train.d_batches=auto (or separate), or turn its batch norm off")
        if semisup and self.perf.cuda_graphs:
            raise ConfigError("perf.cuda_graphs=true does not capture the semi-supervised steps; "
                              "set perf.cuda_graphs=false")
        _check_model_shapes(self.data, self.model)


def _check_model_shapes(data: DataConfig, model: ModelConfig) -> None:
    """Sizes the layers cannot take, before any work (the generator's are checked in DataConfig).

    The conv baseline D pads its strided convs and ends in a conv over whatever map is left, so
    it takes any size; the capsule D needs at least one primary capsule after its two convs.
    """
    if model.discriminator != "capsule":
        return
    size, k1, kp = data.image_size, model.conv1_kernel, model.primary_kernel
    if primary_grid(size, k1, kp, conv1_stride(size, k1, kp, model.caps_max_grid)) < 1:
        smallest = -(-min_capsule_image(k1, kp) // 4) * 4  # the generator also needs a multiple of 4
        raise ConfigError(
            f"data.image_size={size} is too small for the capsule discriminator's model.conv1_kernel={k1} and "
            f"model.primary_kernel={kp} (no primary capsules left); use data.image_size>={smallest}, "
            f"or kernels with model.conv1_kernel + model.primary_kernel <= {size + 1}")


def _known_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, typ in typing.get_type_hints(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(typ):
            keys += _known_keys(typ, f"{prefix}{name}.")
    return keys


def _field_type(key: str) -> str | None:
    """The declared type of a dotted config key, e.g. 'int' for 'train.steps' (None if unknown)."""
    cls: Any = Config
    for part in key.split(".") if key else []:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return None
        cls = hints[part]
    if not key or dataclasses.is_dataclass(cls):
        return None
    return str(cls).replace("typing.", "") if typing.get_origin(cls) else cls.__name__


def _explain(err: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) or "not in" in str(err):
        near = difflib.get_close_matches(key, _known_keys(Config), n=1, cutoff=0.6)
        hint = f"; did you mean '{near[0]}'?" if near else "; run with --dry-run to list the keys"
        return ConfigError(f"unknown config key '{key}' in {where}{hint}")
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0].rstrip(".")
        want = _field_type(key)
        fix = f"; give a value of type {want}" if want else ""
        return ConfigError(f"wrong type for '{key}' in {where}: {msg}{fix}")
    return ConfigError(f"invalid config in {where}: {str(err).splitlines()[0]}")


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; presets are in configs/")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"YAML syntax error in {path}{line}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    return data


def _check_sections(layer: Any, where: str) -> None:
    """A section (data, model, ...) given a plain value: name it (OmegaConf's error has no key)."""
    sections = {n for n, t in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(t)}
    for name in sections & set(layer.keys()):
        if not OmegaConf.is_dict(layer[name]) and layer[name] is not None:
            raise ConfigError(f"'{name}' in {where} is a section, not a value; set its keys instead, "
                              f"e.g. {name}.<key>=<value> (run with --dry-run to list them)")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from defaults, an optional YAML file and dotted overrides."""
    base = OmegaConf.structured(Config)
    layers: list[tuple[Any, str]] = []
    if path is not None:
        layers.append((OmegaConf.create(_read_yaml(Path(path))), str(path)))
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' must look like key=value, e.g. optim.lr_d=1e-4")
        key, _, value = ov.partition("=")
        if value.startswith("#"):  # YAML would read a bare #rrggbb as a comment, i.e. no value
            ov = f'{key}="{value}"'
        try:
            layers.append((OmegaConf.from_dotlist([ov]), f"override '{ov}'"))
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot parse override '{ov}': {str(e).splitlines()[0]}") from None
    for layer, where in layers:
        _check_sections(layer, where)
        try:
            base = OmegaConf.merge(base, layer)
        except OmegaConfBaseException as e:
            raise _explain(e, where) from None
    try:
        return OmegaConf.to_object(base)
    except OmegaConfBaseException as e:
        raise _explain(e, "the merged config") from None


def run_name(name: str, overrides: list[str] | tuple[str, ...]) -> str:
    """`name` plus the overrides that define the model, short: debug + model.routing=em -> debug-routing=em.

    Lists become x-joined (model.d_widths=[64,128] -> d_widths=64x128); other keys stay out of the name.
    """
    parts = []
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key.startswith("model."):
            value = re.sub(r"[^A-Za-z0-9.+_-]+", "x", value.strip().strip("[]").replace(" ", ""))
            parts.append(f"{key[len('model.'):]}={value}")
    return "-".join([name, *parts])


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts (for YAML, W&B and hashing)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    """The config as YAML text that `load_config` reads back."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def model_hash(cfg: Config) -> str:
    """Hash of everything that decides parameter shapes; checkpoints must match it."""
    model = to_dict(cfg)["model"]
    if cfg.model.generator == "dcgan":  # so checkpoints written before these keys existed still match
        for key in CAPSULE_G_KEYS:
            del model[key]
    for key, default in LATER_MODEL_KEYS.items():
        if model[key] == default:
            del model[key]
    if model["routing"] == "dynamic":  # the only kind before model.routing existed: older checkpoints still match
        del model["routing"]
    shape_keys = {"model": model, "image_size": cfg.data.image_size,
                  "channels": cfg.data.channels}
    if cfg.data.labels_per_class:  # K-output D (semi-supervised); absent otherwise, so older hashes hold
        shape_keys["classes"] = N_CLASSES
    return hashlib.sha256(json.dumps(shape_keys, sort_keys=True).encode()).hexdigest()[:16]


def replace(cfg: Config, **sections: dict) -> Config:
    """Copy `cfg` with some fields of some sections changed, e.g. replace(cfg, train={"steps": 5})."""
    changes = {}
    for name, values in sections.items():
        current = getattr(cfg, name)
        changes[name] = dataclasses.replace(current, **values) if dataclasses.is_dataclass(current) else values
    return dataclasses.replace(cfg, **changes)
