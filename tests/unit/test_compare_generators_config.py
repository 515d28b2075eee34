"""configs/compare_generators_mnist.yaml: the four generator x discriminator pairings and the capsule D with
the DCGAN init, nothing else different."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO

from capsgan_dist.compare import _train_config, load_compare_config, variants
from capsgan_dist.config import to_dict
from capsgan_dist.models import CapsuleGenerator, build_generator

PRESET = REPO / "configs" / "compare_generators_mnist.yaml"


def test_preset_pairs_each_generator_with_each_discriminator():
    cc = load_compare_config(PRESET)
    assert [v.name for v in variants(cc)] == ["dcgan", "capsgan", "capsg_capsd", "capsg_convd", "capsgan_init"]
    assert cc.seeds == [0, 1, 2] and cc.steps >= 3000 and not cc.routing_ablation
    cfgs = {name: _train_config(cc, ovs, 0, Path("run")) for name, ovs in cc.models.items()}
    pairs = {name: (c.model.generator, c.model.discriminator) for name, c in cfgs.items()}
    assert pairs == {"dcgan": ("dcgan", "dcgan"), "capsgan": ("dcgan", "capsule"),  # the DCGAN D: the baseline
                     "capsg_capsd": ("capsule", "capsule"), "capsg_convd": ("capsule", "dcgan"),
                     "capsgan_init": ("dcgan", "capsule")}
    inits = {name: c.model.d_init for name, c in cfgs.items()}
    assert inits == {**{n: "torch" for n in pairs}, "capsgan_init": "dcgan"}
    assert isinstance(build_generator(cfgs["capsg_convd"]), CapsuleGenerator)
    # Apart from those keys the runs are configured identically (data, schedule, seed, eval).
    plain = []
    for c in cfgs.values():
        d = to_dict(c)
        del d["model"]["generator"], d["model"]["discriminator"], d["model"]["d_init"]
        plain.append(d)
    assert all(p == plain[0] for p in plain[1:])
    assert cfgs["dcgan"].data.root == "../shared/data/mnist" and cfgs["dcgan"].eval.every == cc.eval_every
