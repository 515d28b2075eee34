"""The three routing kinds against plain float64 loop references written from each paper's equations.

Each reference below loops over samples, capsules and coordinates in Python floats, following the
paper's procedure line by line (with the epsilon guards docs/design.md states), so it shares no
tensor code with the library. Agreement is required to 1e-9 (relative) in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from capsgan_dist.config import ROUTINGS as CONFIG_ROUTINGS
from capsgan_dist.config import load_config, model_hash, to_dict
from capsgan_dist.errors import ConfigError
from capsgan_dist.models import build_discriminator
from capsgan_dist.models.capsules import RoutedCaps, capsule_layers
from capsgan_dist.models.classifiers import CapsNet
from capsgan_dist.models.routing import (
    ROUTINGS,
    AttentionCaps,
    EMCaps,
    PrimaryMatrixCaps,
    attention_routing,
    dynamic_routing,
    em_routing,
    routed_capsules,
)
from capsgan_dist.models.routing.em import MASS_EPS, VAR_EPS
from capsgan_dist.models.routing.squashing import EPS

TIGHT = 1e-9


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def rms_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (2-norm), in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


# ---------------------------------------------------------------------------------------------
# Plain references (lists of floats, one capsule and one coordinate at a time)


def _norm(s: list[float]) -> float:
    return math.sqrt(sum(x * x for x in s) + EPS)  # |s| with the documented guard


def ref_dynamic(u_hat: torch.Tensor, iterations: int) -> torch.Tensor:
    """Sabour et al. 2017, Procedure 1: b = 0; c_i = softmax_j(b_i); s_j = sum_i c_ij u_j|i; v_j = squash(s_j)."""
    B, n_in, n_out, d = u_hat.shape
    u = u_hat.tolist()
    out = []
    for b in range(B):
        logit = [[0.0] * n_out for _ in range(n_in)]
        for r in range(iterations):
            c = []
            for i in range(n_in):
                e = [math.exp(x) for x in logit[i]]
                c.append([x / sum(e) for x in e])
            v = []
            for j in range(n_out):
                s = [sum(c[i][j] * u[b][i][j][k] for i in range(n_in)) for k in range(d)]
                q = sum(x * x for x in s)  # eq. 1 as docs/design.md computes it: |s|^2/|s| = sqrt(|s|^2 + eps)
                v.append([x * math.sqrt(q + EPS) / (1 + q) for x in s])
            if r < iterations - 1:
                for i in range(n_in):
                    for j in range(n_out):
                        logit[i][j] += sum(u[b][i][j][k] * v[j][k] for k in range(d))
        out.append(v)
    return torch.tensor(out, dtype=torch.float64)


def ref_em(votes: torch.Tensor, a_in: torch.Tensor, beta_u: torch.Tensor, beta_a: torch.Tensor,
           iterations: int, schedule: str = "ramp") -> tuple[torch.Tensor, torch.Tensor]:
    """Hinton et al. 2018, Procedure 1 (M-step, E-step). ramp: lambda_t = (t+1)/T and the cost scaled by
    n_out/n_in; authors (their code): lambda_t = 0.01 (1 - 0.95^(t+1)) and the cost scaled by 100/n_in."""
    B, n_in, n_out, H = votes.shape
    V, A, bu, ba = votes.tolist(), a_in.tolist(), beta_u.tolist(), beta_a.tolist()
    kappa = 100 / n_in if schedule == "authors" else n_out / n_in
    mus, acts = [], []
    for b in range(B):
        R = [[1.0 / n_out] * n_out for _ in range(n_in)]
        for t in range(iterations):
            lam = 0.01 * (1 - 0.95 ** (t + 1)) if schedule == "authors" else (t + 1) / iterations
            # M-step, for each output capsule j
            mu, sig2, a = [], [], []
            for j in range(n_out):
                r = [R[i][j] * A[b][i] for i in range(n_in)]  # R_ij <- R_ij a_i
                m = sum(r) + MASS_EPS
                mu_j = [sum(r[i] * V[b][i][j][h] for i in range(n_in)) / m for h in range(H)]
                s2_j = [sum(r[i] * (V[b][i][j][h] - mu_j[h]) ** 2 for i in range(n_in)) / m + VAR_EPS
                        for h in range(H)]
                cost = [(bu[j] + math.log(math.sqrt(s2_j[h]))) * kappa * m for h in range(H)]
                a.append(1.0 / (1.0 + math.exp(-lam * (ba[j] - sum(cost)))))  # logistic
                mu.append(mu_j)
                sig2.append(s2_j)
            if t == iterations - 1:
                break
            # E-step, for each input capsule i
            for i in range(n_in):
                p = []
                for j in range(n_out):
                    norm = 1.0 / math.sqrt(math.prod(2 * math.pi * s for s in sig2[j]))
                    p.append(norm * math.exp(-sum((V[b][i][j][h] - mu[j][h]) ** 2 / (2 * sig2[j][h])
                                                  for h in range(H))))
                z = sum(a[k] * p[k] for k in range(n_out))
                R[i] = [a[j] * p[j] / z for j in range(n_out)]
        mus.append(mu)
        acts.append(a)
    return torch.tensor(mus, dtype=torch.float64), torch.tensor(acts, dtype=torch.float64)


def ref_votes(poses: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """V_ij = M_i W_ij, 4x4 matrix products written out: (B, n_in, 16), (n_in, n_out, 4, 4) -> (B, n_in, n_out, 16)."""
    B, n_in, _ = poses.shape
    n_out = weight.shape[1]
    M, W = poses.tolist(), weight.tolist()
    out = [[[[sum(M[b][i][4 * x + y] * W[i][j][y][z] for y in range(4)) for x in range(4) for z in range(4)]
             for j in range(n_out)] for i in range(n_in)] for b in range(B)]
    return torch.tensor(out, dtype=torch.float64)


def ref_attention(u_hat: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Mazzia et al. 2021: A_j = U_j U_j^T / sqrt(d); C_j = softmax over j of sum_k A_j[:, k];
    s_j = U_j^T (C_j + B_j); v_j = (1 - 1/e^|s_j|) s_j / |s_j|. A_j is formed whole here."""
    B, n_in, n_out, d = u_hat.shape
    u, prior = u_hat.tolist(), log_prior.tolist()
    out = []
    for b in range(B):
        row_sums = [[0.0] * n_out for _ in range(n_in)]
        for j in range(n_out):
            A = [[sum(u[b][i][j][z] * u[b][k][j][z] for z in range(d)) / math.sqrt(d) for k in range(n_in)]
                 for i in range(n_in)]
            for i in range(n_in):
                row_sums[i][j] = sum(A[i])
        c = []
        for i in range(n_in):
            e = [math.exp(x) for x in row_sums[i]]
            c.append([x / sum(e) for x in e])
        v = []
        for j in range(n_out):
            s = [sum(u[b][i][j][z] * (c[i][j] + prior[i][j]) for i in range(n_in)) for z in range(d)]
            n = _norm(s)
            v.append([(1 - 1 / math.exp(n)) * x / n for x in s])
        out.append(v)
    return torch.tensor(out, dtype=torch.float64)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _em_inputs(B: int, n_in: int, n_out: int, seed: int, scale: float = 1.0):
    g = _gen(seed)
    votes = scale * torch.randn(B, n_in, n_out, 16, dtype=torch.float64, generator=g)
    a_in = torch.rand(B, n_in, dtype=torch.float64, generator=g)
    beta_u = 0.3 * torch.randn(n_out, dtype=torch.float64, generator=g)
    beta_a = 0.3 * torch.randn(n_out, dtype=torch.float64, generator=g)
    return votes, a_in, beta_u, beta_a


# ---------------------------------------------------------------------------------------------
# 1e-9 agreement in float64


def test_routing_names_agree_between_config_and_models():
    assert CONFIG_ROUTINGS == ROUTINGS == ("dynamic", "em", "attention")


@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_dynamic_plain_and_fused_match_reference_to_1e9(iterations):
    g = _gen(iterations)
    u = torch.randn(3, 7, 4, dtype=torch.float64, generator=g)
    w = 0.5 * torch.randn(7, 3, 5, 4, dtype=torch.float64, generator=g)
    u_hat = torch.einsum("ijed,bid->bije", w, u)
    want = ref_dynamic(u_hat, iterations)
    assert rel(dynamic_routing(u_hat, iterations), want) < TIGHT
    assert rel(routed_capsules(u, w, iterations), want) < TIGHT


@pytest.mark.parametrize("iterations", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 6, 3), (1, 9, 2), (3, 4, 5)])
@pytest.mark.parametrize("schedule", ["ramp", "authors"])
def test_em_matches_reference_to_1e9(shape, iterations, schedule):
    votes, a_in, beta_u, beta_a = _em_inputs(*shape, seed=10 * iterations + shape[1])
    mu, a = em_routing(votes, a_in, beta_u, beta_a, iterations, schedule=schedule)
    mu_ref, a_ref = ref_em(votes, a_in, beta_u, beta_a, iterations, schedule)
    assert rel(mu, mu_ref) < TIGHT and rel(a, a_ref) < TIGHT
    if schedule == "authors":  # the two conventions give other activations
        assert rel(a, em_routing(votes, a_in, beta_u, beta_a, iterations)[1]) > 1e-3


def test_em_activations_not_saturated_in_the_reference_check():
    """The 1e-9 check above proves little if every activation is 0 or 1: they must spread."""
    votes, a_in, beta_u, beta_a = _em_inputs(3, 4, 5, seed=43)
    _, a_ref = ref_em(votes, a_in, beta_u, beta_a, 3)
    assert a_ref.min() < 0.9 and a_ref.max() > 0.1 and a_ref.std() > 0.05


def test_em_layer_votes_are_pose_times_transform():
    torch.manual_seed(0)
    layer = EMCaps(n_in=5, n_out=3, iterations=2).double()
    x = torch.randn(2, 5, 17, dtype=torch.float64)
    x[..., 16] = torch.rand(2, 5, dtype=torch.float64)  # activations are in (0, 1)
    want = ref_votes(x[..., :16], layer.weight.detach())
    assert rel(layer.votes(x), want) < TIGHT
    # ...and the layer routes them with the input activations (the 17th number)
    out = layer(x)
    mu_ref, a_ref = ref_em(want, x[..., 16], layer.beta_u.detach(), layer.beta_a.detach(), 2)
    assert rel(out[..., :16], mu_ref) < TIGHT and rel(out[..., 16], a_ref) < TIGHT


@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (1, 9, 2, 16), (3, 4, 5, 8)])
def test_attention_matches_reference_to_1e9(shape):
    g = _gen(sum(shape))
    u_hat = torch.randn(*shape, dtype=torch.float64, generator=g)
    prior = 0.2 * torch.randn(shape[1], shape[2], dtype=torch.float64, generator=g)
    assert rel(attention_routing(u_hat, prior), ref_attention(u_hat, prior)) < TIGHT


def test_attention_layer_matches_reference():
    torch.manual_seed(1)
    layer = AttentionCaps(n_in=6, d_in=3, n_out=4, d_out=5).double()
    with torch.no_grad():
        layer.log_prior.normal_(0, 0.1)  # not the all-zero init, so the prior's place is checked
    u = torch.randn(2, 6, 3, dtype=torch.float64)
    u_hat = torch.zeros(2, 6, 4, 5, dtype=torch.float64)
    for b in range(2):
        for i in range(6):
            for j in range(4):
                u_hat[b, i, j] = layer.weight[i, j].detach() @ u[b, i]
    assert rel(layer(u), ref_attention(u_hat, layer.log_prior.detach())) < TIGHT


def test_attention_couples_over_outputs_and_sums_agreement_over_inputs():
    """Equal predictions for every output: agreement cannot prefer one, so c_ij = 1/n_out and
    s_j = sum_i u_hat_i / n_out (a softmax over inputs would give 1/n_in instead)."""
    u = torch.randn(2, 7, 1, 4, dtype=torch.float64).expand(2, 7, 3, 4)
    v = attention_routing(u, torch.zeros(7, 3, dtype=torch.float64))
    s = u.sum(1) / 3
    n = torch.sqrt((s * s).sum(-1, keepdim=True) + EPS)
    assert rel(v, s * (1 - torch.exp(-n)) / n) < TIGHT


# ---------------------------------------------------------------------------------------------
# Gradients: gradcheck in float64 through each routed layer and each routing function


def test_em_routing_gradcheck():
    votes, a_in, beta_u, beta_a = _em_inputs(2, 5, 3, seed=3)
    args = tuple(t.clone().requires_grad_() for t in (votes, a_in, beta_u, beta_a))
    assert torch.autograd.gradcheck(lambda *x: em_routing(*x, 3), args)


def test_attention_routing_gradcheck():
    g = _gen(4)
    u_hat = torch.randn(2, 5, 3, 4, dtype=torch.float64, generator=g).requires_grad_()
    prior = (0.1 * torch.randn(5, 3, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(attention_routing, (u_hat, prior))


@pytest.mark.parametrize("routing", ROUTINGS)
def test_routed_layer_gradcheck_through_inputs_and_parameters(routing):
    torch.manual_seed(5)
    d = 16 if routing == "em" else 3
    primary, layer = capsule_layers(routing, 2, 1, d, 3, n_in=4, n_out=3, caps_dim=16 if routing == "em" else 4,
                                    iterations=3, impl="einsum")
    layer = layer.double()
    x = primary.double()(torch.randn(2, 2, 5, 5, dtype=torch.float64)).detach().requires_grad_()  # 2x2 pixels
    assert x.shape == (2, 4, 17 if routing == "em" else d)
    names = [n for n, _ in layer.named_parameters()]

    def f(x_, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x_,))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().clone().requires_grad_() for p in layer.parameters()]))


def test_em_grad_last_holds_assignments_fixed():
    """grad='last': same forward; the gradient is that of the last M-step with R held constant."""
    votes, a_in, beta_u, beta_a = _em_inputs(2, 6, 3, seed=8)

    def grads(mode):
        v = votes.clone().requires_grad_()
        mu, a = em_routing(v, a_in, beta_u, beta_a, 3, mode)
        (g,) = torch.autograd.grad((mu * torch.linspace(-1, 1, mu.numel()).view_as(mu).double()).sum() + a.sum(), v)
        return mu.detach(), a.detach(), g

    mu_all, a_all, g_all = grads("all")
    mu_last, a_last, g_last = grads("last")
    assert torch.equal(mu_all, mu_last) and torch.equal(a_all, a_last)
    assert (g_all - g_last).abs().max() > 1e-4
    mu1_all, a1_all = em_routing(votes, a_in, beta_u, beta_a, 1)
    mu1_last, a1_last = em_routing(votes, a_in, beta_u, beta_a, 1, "last")
    assert torch.equal(mu1_all, mu1_last) and torch.equal(a1_all, a1_last)


# ---------------------------------------------------------------------------------------------
# Behaviour: per-sample routing, what iterations mean, bad arguments


@pytest.mark.parametrize("routing", ["em", "attention"])
def test_each_sample_routes_alone(routing):
    torch.manual_seed(2)
    _, layer = capsule_layers(routing, 2, 2, 16, 3, n_in=9, n_out=4, caps_dim=16, iterations=3)
    layer = layer.double()
    x = torch.randn(5, 9, 17 if routing == "em" else 16, dtype=torch.float64)
    if routing == "em":
        x[..., 16] = torch.rand(5, 9, dtype=torch.float64)
    x[2] *= 6.0  # one very different sample would dominate any statistic shared over the batch
    batched = layer(x)
    alone = torch.cat([layer(x[i:i + 1]) for i in range(5)])
    assert rel(batched, alone) < 1e-12


def test_em_iterations_change_the_output_and_attention_has_none():
    def d_out(routing, iters):
        extra = ["model.primary_dim=16"] if routing == "em" else []
        cfg = load_config(None, ["model.conv1_channels=8", "model.primary_channels=2", f"model.routing={routing}",
                                 f"model.routing_iters={iters}", *extra])
        torch.manual_seed(0)
        return build_discriminator(cfg)(torch.randn(3, 1, 28, 28, generator=_gen(1)))

    assert (d_out("em", 1) - d_out("em", 3)).abs().max() > 1e-4
    assert torch.equal(d_out("attention", 1), d_out("attention", 5))  # routing_iters is not used


def test_em_inverse_temperature_ramps_to_one():
    from capsgan_dist.models.routing import inverse_temperatures

    assert inverse_temperatures(1) == [1.0]
    assert inverse_temperatures(4) == [0.25, 0.5, 0.75, 1.0]
    # The authors' schedule: 0.01 (1 - 0.95^(t + 1)), rising towards 0.01.
    assert inverse_temperatures(3, "authors") == pytest.approx([0.01 * 0.05, 0.01 * 0.0975, 0.01 * 0.142625])


def test_em_schedule_reaches_the_discriminator_and_the_classifier():
    cfg = load_config(None, ["model.routing=em", "model.primary_dim=16", "model.em_schedule=authors"])
    assert build_discriminator(cfg).caps.schedule == "authors"
    assert CapsNet(routing="em", primary_dim=16, em_schedule="authors").caps.schedule == "authors"
    with pytest.raises(ConfigError, match="model.em_schedule"):
        load_config(None, ["model.em_schedule=fast"])


@pytest.mark.parametrize("cls, args", [(EMCaps, (8, 1)), (AttentionCaps, (8, 4, 1, 4))])
def test_layers_reject_fewer_than_two_outputs(cls, args):
    with pytest.raises(ValueError, match="at least 2 output capsules"):
        cls(*args)


def test_em_layers_need_16_dimensional_capsules_and_bad_kind_is_rejected():
    with pytest.raises(ValueError, match="4x4 pose"):
        capsule_layers("em", 4, 2, 8, 3, n_in=8, n_out=3, caps_dim=16)
    with pytest.raises(ValueError, match="unknown routing"):
        capsule_layers("fuzzy", 4, 2, 8, 3, n_in=8, n_out=3, caps_dim=16)
    with pytest.raises(ValueError, match="iterations"):
        em_routing(*_em_inputs(1, 3, 2, seed=0), 0)


def test_primary_matrix_caps_layout():
    """16 pose entries then a sigmoid activation per capsule, in (channel, row, column) order."""
    torch.manual_seed(0)
    pm = PrimaryMatrixCaps(3, channels=2, kernel=3)
    x = torch.randn(2, 3, 9, 9)
    out = pm(x)  # 9 -> 4 (kernel 3, stride 2): 2 * 4 * 4 = 32 capsules
    assert out.shape == (2, 32, 17)
    raw = pm.conv(x)  # (2, 2*17, 4, 4)
    c, r, col = 1, 2, 3
    idx = c * 16 + r * 4 + col
    assert torch.allclose(out[0, idx, :16], raw[0, c * 16:(c + 1) * 16, r, col])
    assert torch.allclose(out[0, idx, 16], torch.sigmoid(raw[0, 32 + c, r, col]))


# ---------------------------------------------------------------------------------------------
# bf16 autocast against fp32 at the paper's sizes

# Relative 2-norm errors under bf16 autocast against fp32, same weights and batch (paper-size D,
# batch 8; the routed layer fed the fp32 primary capsules and a random upstream gradient), measured
# over seeds 0-3: routed-layer output 3.9e-3 (dynamic), 1.6e-3 (em), 3.4e-3 (attention); input and
# weight gradients 4.1e-3 (dynamic, attention) and 2.0e-2 (em, whose bf16 votes feed fp32 Gaussian
# statistics); D logits up to 9.8e-3. The bounds leave about 2x.
BF16_OUT = 1e-2
BF16_GRAD = {"dynamic": 1e-2, "em": 4e-2, "attention": 1e-2}
BF16_LOGITS = 2e-2


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_autocast_agrees_with_fp32(routing, seed):
    extra = ["model.primary_dim=16"] if routing == "em" else []
    cfg = load_config(None, [f"model.routing={routing}", *extra])
    torch.manual_seed(seed)
    D = build_discriminator(cfg)
    x = torch.rand(8, 1, 28, 28, generator=_gen(seed)) * 2 - 1
    with torch.no_grad():
        u = D.primary(D.act1(D.conv1(x)))
        logits32 = D(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits16 = D(x)
    assert rms_rel(logits16, logits32) < BF16_LOGITS

    g = torch.randn(8, cfg.model.n_caps, D.caps.out_dim, generator=_gen(9))

    def run(bf16: bool):
        D.caps.zero_grad(set_to_none=True)
        uu = u.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            v = D.caps(uu)
        (v.float() * g).sum().backward()
        return v.detach().float(), uu.grad, torch.cat([p.grad.flatten() for p in D.caps.parameters()])

    v32, gu32, gw32 = run(False)
    v16, gu16, gw16 = run(True)
    assert not torch.equal(v16, v32)  # bf16 really ran
    assert rms_rel(v16, v32) < BF16_OUT
    assert rms_rel(gu16, gu32) < BF16_GRAD[routing] and rms_rel(gw16, gw32) < BF16_GRAD[routing]


# ---------------------------------------------------------------------------------------------
# Models and configs


@pytest.mark.parametrize("routing", ROUTINGS)
def test_discriminator_and_capsnet_build_and_train_for_each_routing(routing):
    extra = ["model.primary_dim=16"] if routing == "em" else []
    cfg = load_config(None, [f"model.routing={routing}", "model.conv1_channels=16", "model.primary_channels=4",
                             *extra])
    torch.manual_seed(0)
    D = build_discriminator(cfg)
    width = 17 if routing == "em" else 16
    assert D.head[1].in_features == cfg.model.n_caps * width  # em: poses and activations
    logits = D(torch.randn(4, 1, 28, 28))
    assert logits.shape == (4,)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())

    net = CapsNet(routing=routing, conv1_channels=16, primary_channels=4, primary_dim=16 if routing == "em" else 8)
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
    loss, lg = net.training_loss(x, y)
    assert lg.shape == (4, 10) and torch.isfinite(loss)
    feats, lg2 = net.features_and_logits(x)
    assert feats.shape == (4, net.num_features) and torch.allclose(lg, lg2)
    if routing == "em":  # class probabilities are the activations
        torch.testing.assert_close(net(x).exp(), net.capsules(x)[..., 16])


def test_dynamic_is_the_default_and_keeps_the_layer_and_hash():
    cfg = load_config(None)
    assert cfg.model.routing == "dynamic"
    torch.manual_seed(0)
    assert isinstance(build_discriminator(cfg).caps, RoutedCaps)
    # Checkpoints written before model.routing existed must still match: dynamic hashes without the key.
    import hashlib
    import json

    from capsgan_dist.config import CAPSULE_G_KEYS, LATER_MODEL_KEYS

    model = to_dict(cfg)["model"]
    for key in ("routing", *CAPSULE_G_KEYS, *LATER_MODEL_KEYS):  # keys that came later; omitted at these values
        del model[key]
    old = hashlib.sha256(json.dumps({"model": model, "image_size": 28, "channels": 1}, sort_keys=True)
                         .encode()).hexdigest()[:16]
    assert model_hash(cfg) == old
    assert model_hash(load_config(None, ["model.routing=attention"])) != old


@pytest.mark.parametrize("overrides, needle", [
    (["model.routing=em"], "model.primary_dim=8 does not fit model.routing=em"),
    (["model.routing=em", "model.primary_dim=16", "model.caps_dim=8"], "set model.caps_dim=16"),
    (["model.routing=attention", "model.routing_grad=last"], "model.routing_grad=all"),
    (["model.routing=fuzzy"], "choose one of dynamic, em, attention"),
])
def test_invalid_routing_combinations_are_one_line_config_errors(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_em_with_the_conv_discriminator_is_not_checked():
    """The DCGAN baseline has no capsules: em's capsule sizes do not apply to it."""
    assert load_config(None, ["model.discriminator=conv", "model.routing=em"]).model.routing == "em"


def test_squash_module_and_function_have_different_names(monkeypatch):
    """`import ...routing.squashing as sq` is the module, so setting sq.EPS reaches squash()."""
    import importlib

    import capsgan_dist.models.routing as routing
    import capsgan_dist.models.routing.squashing as sq

    assert callable(routing.squash) and not callable(sq)
    assert importlib.import_module("capsgan_dist.models.routing.squashing") is sq
    zero = torch.zeros(1, 3)
    s = torch.tensor([[1e-3, 0.0, 0.0]])
    before = routing.squash(s)
    monkeypatch.setattr(sq, "EPS", 1.0)
    assert not torch.equal(routing.squash(s), before)
    assert torch.equal(routing.squash(zero), zero)
