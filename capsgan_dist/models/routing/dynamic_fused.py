"""Fast routed capsules: u_hat = W u and dynamic routing as one autograd Function (perf.routing=fused).

Same math as `RoutedCaps` with `routing.dynamic.dynamic_routing` (Sabour et al. 2017, Procedure 1),
written for speed and memory:

- u_hat lives in the layout the routing reads, (B, n_out, n_in, d_out): for each (b, j) the
  (n_in, d_out) block is one contiguous matrix, so every routing product is a plain batched
  matrix-vector product, in fp32 and in bf16 alike (oneDNN copies strided bf16 operands whole).
  It is built by batched matmuls over blocks of input capsules, each block copied into place
  while it is still in cache (CPU) or in a few large blocks (GPU).
- Iteration 0 needs no logits: c = softmax(0) = 1/n_out, so s_0 is a plain sum over inputs.
- s_j = sum_i c_ij u_hat_j|i and the agreement u_hat_j|i . v_j are batched matrix-vector
  products over (b, j): they read u_hat and write only (B, n_out, n_in) or (B, n_out, d_out).
- The backward is written by hand. It reads u_hat for the few matrix-vector products it needs,
  then writes dL/du_hat = sum_t M_t[b,j,i] y_t[b,j,:] (the stacked rank-1 terms of every routing
  iteration) with ONE batched matmul straight into u_hat's own buffer, which is dead by then.
  The weight and input gradients then read it back in blocks. Autograd through the einsum form
  instead makes one full-size gradient per use of u_hat (five for three iterations) and sums them.

Memory per image (fp32, MNIST sizes n_in=1568, n_out=10, d_out=16: one u_hat is 1.0 MB): one
u_hat-sized tensor exists from the forward to the end of the backward, plus a block in flight
(~1 MB in all on CPU, a quarter of u_hat on GPU); everything else is at most (B, n_out, n_in),
1/16 of it. A fresh u_hat-sized tensor also costs page faults on CPU (glibc maps allocations above
32 MB afresh), often more than the arithmetic done on it.
Under bf16 autocast u_hat and the big products run in bf16; the routing logits, coefficients and
capsule vectors stay in fp32.

The backward is not itself differentiable: double backward (e.g. an R1 gradient penalty through
D) needs `perf.routing=einsum`.
"""

from __future__ import annotations

import torch

from capsgan_dist.models.routing.squashing import EPS as _EPS  # sqrt(|s|^2 + eps): finite gradient at 0


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the small routing tensors: fp32 for 16-bit inputs, else the input dtype."""
    return torch.promote_types(dtype, torch.float32)


def _squash32(s: torch.Tensor) -> torch.Tensor:
    """squash over the last dim, in at least fp32 (s: (..., d))."""
    s = s.to(_acc(s.dtype))
    q = (s * s).sum(-1, keepdim=True)
    return s * (torch.sqrt(q + _EPS) / (1.0 + q))


def _squash_backward(s: torch.Tensor, g_v: torch.Tensor) -> torch.Tensor:
    """dL/ds for v = s * f(q), f(q) = sqrt(q + eps) / (1 + q), q = |s|^2 (fp32)."""
    q = (s * s).sum(-1, keepdim=True)
    r = torch.sqrt(q + _EPS)
    f = r / (1.0 + q)
    df = (0.5 / r - f) / (1.0 + q)  # f'(q)
    return f * g_v + (2.0 * df * (s * g_v).sum(-1, keepdim=True)) * s


def _agreement(u_hat_p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """u_hat_j|i . y_j for every (b, j, i): (P, n_in, d) x (P, d) -> (P, 1, n_in).

    Written as a row vector times the transposed block: BLAS streams each 16-float row once,
    about 2x faster on CPU in fp32 than the column form bmm(u_hat_p, y[..., None]).
    """
    return torch.bmm(y.to(u_hat_p.dtype).unsqueeze(1), u_hat_p.transpose(1, 2))


def _chunk(n_in: int, row_bytes: int, device: torch.device) -> int:
    """Input capsules per block of a layout change: ~1 MB (cache-sized) on CPU, a quarter on GPUs."""
    if device.type != "cpu":
        return -(-n_in // 4)  # few launches; the block temporary is 1/4 of u_hat
    return max(1, min(n_in, (1 << 20) // max(1, row_bytes)))


def _predictions(u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """u_hat_j|i = W_ij u_i (Sabour eq. 2) as (B, n_out, n_in, d_out), contiguous.

    Batched matmuls over blocks of input capsules, (ch, B, d_in) @ (ch, d_in, n_out*d_out), each
    copied at once into the routing's layout; on CPU a block stays in cache between the two.
    """
    B, n_in, d_in = u.shape
    _, n_out, d_out, _ = weight.shape
    out = u.new_empty(B, n_out, n_in, d_out)
    u_t, w_t = u.transpose(0, 1), weight.view(n_in, n_out * d_out, d_in).transpose(1, 2)  # views, no copies
    ch = _chunk(n_in, B * n_out * d_out * u.element_size(), u.device)
    for i in range(0, n_in, ch):
        part = torch.bmm(u_t[i:i + ch], w_t[i:i + ch])  # (ch, B, n_out*d_out)
        out[:, :, i:i + ch].copy_(part.view(-1, B, n_out, d_out).permute(1, 2, 0, 3))
    return out


class _RoutedCapsFn(torch.autograd.Function):
    """v = dynamic_routing(einsum('ijed,bid->bije', W, u)) with a hand-written backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, weight: torch.Tensor, iterations: int, grad_all: bool) -> torch.Tensor:
        B, n_in, d_in = u.shape
        _, n_out, d_out, _ = weight.shape
        P, acc = B * n_out, _acc(u.dtype)
        u_hat = _predictions(u, weight)  # (B, n_out, n_in, d_out)
        u_hat_p = u_hat.view(P, n_in, d_out)
        # Iteration 0: c = softmax(0) = 1/n_out, so s_0 is the plain sum over inputs / n_out (a bmm
        # with ones: 16-bit sums then accumulate in fp32 without an upcast copy of u_hat).
        s = torch.bmm(u_hat.new_ones(P, 1, n_in), u_hat_p).view(P, d_out).to(acc) / n_out
        ss, cs = [s], []
        b = None
        for _ in range(1, iterations):
            v = _squash32(s)  # (P, d_out)
            a = _agreement(u_hat_p, v).view(B, n_out, n_in).to(acc)
            b = a if b is None else b.add_(a)  # logits, Procedure 1 line 7
            c = torch.softmax(b, dim=1)  # (B, n_out, n_in): each input distributes over outputs
            s = torch.bmm(c.view(P, 1, n_in).to(u_hat.dtype), u_hat_p).view(P, d_out).to(acc)
            ss.append(s)
            cs.append(c)
        ctx.save_for_backward(u, weight, *ss, *cs)
        ctx.u_hat = u_hat  # an attribute, not saved: the backward overwrites it (no version check)
        ctx.iterations, ctx.grad_all, ctx.consumed = iterations, grad_all, False
        return _squash32(s).view(B, n_out, d_out).to(u_hat.dtype)

    @staticmethod
    def backward(ctx, g_out: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph=True: the caller wants to differentiate this
            raise RuntimeError(
                "the fused capsule routing has no double backward (e.g. for a gradient penalty "
                "through D); set perf.routing=einsum")
        R = ctx.iterations
        u, weight, *rest = ctx.saved_tensors
        ss, cs = rest[:R], rest[R:]
        B, n_in, d_in = u.shape
        _, n_out, d_out, _ = weight.shape
        # A second backward (retain_graph=True) finds u_hat overwritten by the first: recompute it.
        u_hat = _predictions(u, weight) if ctx.consumed else ctx.u_hat
        P, dt, acc = B * n_out, u_hat.dtype, _acc(u_hat.dtype)
        u_hat_p = u_hat.view(P, n_in, d_out)

        # dL/du_hat = sum_t M_t[p, i] * y_t[p, :]: collect the (M, y) pairs, iteration by iteration.
        Ms: list[torch.Tensor] = []
        Ys: list[torch.Tensor] = []
        g_v = g_out.reshape(P, d_out).to(acc)
        G_b = None  # dL/db_r summed over later iterations = dL/da_{r-1}
        for r in range(R - 1, -1, -1):
            g_s = _squash_backward(ss[r], g_v)  # (P, d_out)
            if r == 0:  # c_0 = 1/n_out, folded into y (1/10 is not exact in bf16, 1 is)
                Ms.append(torch.ones(P, n_in, device=u.device, dtype=acc))
                Ys.append(g_s / n_out)
                break
            c = cs[r - 1]  # (B, n_out, n_in)
            Ms.append(c.view(P, n_in))
            Ys.append(g_s)
            if not ctx.grad_all:  # grad="last": earlier iterations see u_hat detached
                break
            # dL/dc_r = u_hat . g_s, then softmax backward over the outputs (dim 1).
            g_c = _agreement(u_hat_p, g_s).view(B, n_out, n_in).to(acc)
            g_b = c * (g_c - (c * g_c).sum(1, keepdim=True))
            G_b = g_b if G_b is None else G_b.add_(g_b)
            # a_{r-1} = u_hat . v_{r-1}: its gradient is G_b, to u_hat and to v_{r-1}.
            Ms.append(G_b.view(P, n_in).clone())
            Ys.append(_squash32(ss[r - 1]))
            g_v = torch.bmm(G_b.view(P, 1, n_in).to(dt), u_hat_p).view(P, d_out).to(acc)

        # dL/du_hat = (P, n_in, T) @ (P, T, d_out), written straight into u_hat's own buffer: u_hat
        # is not read again, and a fresh u_hat-sized tensor costs more in page faults on CPU than
        # the matmul itself. A second backward recomputes u_hat (see above).
        ctx.consumed = True
        m = torch.stack(Ms, 1).to(dt)  # (P, T, n_in): stacking along dim 1 is a cheap concat
        torch.bmm(m.transpose(1, 2), torch.stack(Ys, 1).to(dt), out=u_hat_p)
        g_uhat = u_hat  # (B, n_out, n_in, d_out)

        # dL/du_i = sum_j W_ij^T g_uhat_j|i and dL/dW_ij = sum_b g_uhat_j|i u_i^T: batched matmuls
        # over blocks of inputs, each block first copied to (ch, B, n_out*d_out). Computed
        # transposed, (n_in, d_in, .): BLAS is ~2x faster with d_in=8 as rows.
        need_u, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        E = n_out * d_out
        w_v, u_t = weight.view(n_in, E, d_in), u.permute(1, 2, 0)  # (n_in, E, d_in), (n_in, d_in, B)
        g_u_t = u.new_empty(n_in, d_in, B) if need_u else None
        g_w_t = u.new_empty(n_in, d_in, E) if need_w else None
        ch = _chunk(n_in, B * E * u_hat.element_size(), u.device)
        for i in range(0, n_in, ch):
            g_i = g_uhat[:, :, i:i + ch].permute(2, 0, 1, 3).reshape(-1, B, E)  # (ch, B, E), a copy
            if need_u:
                torch.bmm(w_v[i:i + ch].transpose(1, 2), g_i.transpose(1, 2), out=g_u_t[i:i + ch])
            if need_w:
                torch.bmm(u_t[i:i + ch], g_i, out=g_w_t[i:i + ch])
        g_u = g_u_t.permute(2, 0, 1) if need_u else None  # (B, n_in, d_in)
        g_w = g_w_t.transpose(1, 2).reshape(weight.shape) if need_w else None
        return g_u, g_w, None, None


def routed_capsules(u: torch.Tensor, weight: torch.Tensor, iterations: int, grad: str = "all") -> torch.Tensor:
    """Output capsules v (B, n_out, d_out) of u (B, n_in, d_in) through W (n_in, n_out, d_out, d_in).

    Equal (to float rounding) to dynamic_routing(einsum('ijed,bid->bije', W, u), iterations, grad).
    Under autocast the big products run in the autocast dtype, the routing logits in fp32.
    """
    if iterations < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iterations}")
    if grad not in ("all", "last"):
        raise ValueError(f"grad must be 'all' or 'last', got {grad!r}")
    dev = u.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        u, weight = u.to(dt), weight.to(dt)
        with torch.autocast(dev, enabled=False):
            return _RoutedCapsFn.apply(u, weight, iterations, grad == "all")
    if weight.dtype != u.dtype:
        weight = weight.to(u.dtype)
    return _RoutedCapsFn.apply(u, weight, iterations, grad == "all")


__all__ = ["routed_capsules"]
