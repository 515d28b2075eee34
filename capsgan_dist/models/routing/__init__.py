"""Routing algorithms between capsule layers, one file per kind (`model.routing`).

| kind | file | paper |
|---|---|---|
| dynamic | dynamic.py (plain), dynamic_fused.py (fast) | Sabour, Frosst & Hinton 2017, Procedure 1 |
| em | em.py | Hinton, Sabour & Frosst 2018, Procedure 1 (matrix capsules) |
| attention | attention.py | Mazzia, Salvetti & Chiaberge 2021 (Efficient-CapsNet) |

Each file holds its routing function, written from the paper's equations (docs/design.md), and the
nn.Module of a fully connected capsule layer that routes with it; `capsules.capsule_layers` builds a
primary + routed pair for a kind. The names imported here are the package's public interface.
"""

from __future__ import annotations

from capsgan_dist.models.routing.attention import AttentionCaps, attention_routing
from capsgan_dist.models.routing.dynamic import dynamic_routing
from capsgan_dist.models.routing.dynamic_fused import routed_capsules
from capsgan_dist.models.routing.em import EMCaps, PrimaryMatrixCaps, em_routing, inverse_temperatures
from capsgan_dist.models.routing.squashing import squash, squash_exp

ROUTINGS = ("dynamic", "em", "attention")
"""The values of model.routing, the default first."""

__all__ = ["ROUTINGS", "routed_capsules", "dynamic_routing", "em_routing", "inverse_temperatures",
           "attention_routing", "squash", "squash_exp", "EMCaps", "PrimaryMatrixCaps", "AttentionCaps"]
