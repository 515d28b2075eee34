"""The FID Inception-v3 as the metrics' feature network, read from a weights file the user has.

Published FIDs (CIFAR-10, CelebA, LSUN) are distances between the 2048-D pool features of the
Inception-v3 released with the FID paper (Heusel et al. 2017), converted from TensorFlow. Both
common PyTorch copies of those weights load here: torch-fidelity's (which torchmetrics uses,
`weights-inception-2015-12-05-6726825d.pth`) and pytorch-fid's (`pt_inception-2015-12-05-6726825d.pth`);
they share torchvision's Inception-v3 parameter names. The network itself is torch-fidelity's,
which resizes to 299x299 as the TensorFlow original did. Nothing is ever downloaded: the file is
read weights-only (no pickled code runs) and handed to torch-fidelity from memory.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from capsgan_dist.errors import CheckpointError, UserError

FEATURES = "2048"  # pool features: FID, KID, precision/recall
LOGITS = "logits_unbiased"  # the 1008 class logits without the bias, as torch-fidelity's IS uses them
INCEPTION_CLASSES = 1008
ARCH = "inception-v3-fid"


def _extractor_class() -> type[nn.Module]:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise UserError("--inception-weights needs torch-fidelity: pip install 'torch-fidelity==0.4.0' "
                        "(make install does this)") from None
    return FeatureExtractorInceptionV3


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an FID Inception file, read weights-only; refused with the reason if it is not one."""
    if not path.is_file():
        raise CheckpointError(f"Inception weights {path} not found; pass the FID Inception-v3 file "
                              "(weights-inception-2015-12-05-6726825d.pth or pt_inception-2015-12-05-6726825d.pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, torn, or pickled objects other than tensors
        raise CheckpointError(f"cannot read Inception weights {path}: {type(e).__name__}: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if fc is None or tuple(fc.shape) != (INCEPTION_CLASSES, 2048):
        raise CheckpointError(f"{path} is not the FID Inception-v3 (no {INCEPTION_CLASSES}x2048 fc.weight); pass "
                              "weights-inception-2015-12-05-6726825d.pth or pt_inception-2015-12-05-6726825d.pth")
    return state


class InceptionFeatures(nn.Module):
    """Reads like our classifiers (`features_and_logits`, `num_features`) for the metrics."""

    num_features = 2048

    def __init__(self, weights: str | Path):
        super().__init__()
        path = Path(weights)
        extractor = _extractor_class()
        state = read_weights(path)
        # Files saved before batch norm counted its batches lack these buffers; eval mode never reads them.
        for key in [k for k in state if k.endswith(".running_mean")]:
            state.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        try:
            self.net = extractor("inception-v3-compat", [FEATURES, LOGITS], feature_extractor_weights_path=buffer)
        except RuntimeError as e:  # missing, unexpected or mis-shaped parameters
            reason = " ".join(line.strip() for line in str(e).splitlines()[:2])
            raise CheckpointError(f"{path} does not fit the FID Inception-v3: {reason}") from None

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images float (N, C, H, W) in [-1, 1], C 1 or 3 -> features (N, 2048), logits (N, 1008)."""
        pixels = images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
        if pixels.shape[1] == 1:  # grey: the same value in R, G and B
            pixels = pixels.expand(-1, 3, -1, -1)
        return self.net(pixels.contiguous())

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # always the converted network's inference behaviour


def load_inception(path: str | Path) -> tuple[nn.Module, dict]:
    """The Inception feature network and metadata shaped like a classifier's (see classifier.load_classifier)."""
    net = InceptionFeatures(path)
    meta = {"arch": ARCH, "arch_kwargs": {}, "image_shape": None, "accuracy": None,
            "dataset": {"root": "ImageNet (the FID Inception-v3)"}, "weights": str(path)}
    return net, meta
