"""gen2seg's instance-colouring loss (docs/design.md), vectorised over instances and chunked.

For each sample, with predicted colours p_j (0..255), instances S_k (the pixels of one exact target colour, or one
label id), T_k = all other pixels and μ_k = mean of p over S_k (gradients flow through the mean):

* variance: Huber_δ=1(p_j, μ_k) averaged over the 3·|S_k| values, one counted term per instance;
* separation: w/√|S_k| · mean_{j∈T_k} 300 / (1 + ‖p_j − μ_k‖²), w = 10 (30 was used for SD2, per a comment in the
  official code); not counted;
* background (colour (0,0,0) / label 0), per sample: pushed to black (Huber to 0, one counted term, and a constant
  zero mean joins the mean repulsion), or ignored entirely (``no_bg``: datasets that leave it unlabelled);
  it never gets a separation term of its own, but its pixels are in every T_k;
* mean repulsion: the mean over pairs i < j of 300 / (‖μ_i − μ_j‖² + 1);
* cap: segments are taken in sorted colour (label) order and skipped once more than ``term_cap`` are counted;
* per sample: the sum divided by the number of counted terms; the batch loss is the mean over samples.

The official code loops over instances in Python, with several full-frame masks and copies per instance. Here
means, variance and counts are one scatter over all pixels of the batch, and the K×N separation kernel runs in
tiles of at most ``chunk_elements`` pairs inside a custom autograd function that accumulates its gradients while
it goes, so memory stays O(N + K + tile) however many instances there are. ``instance_coloring_loss_loop`` is the
direct per-instance evaluation of the same formula, kept as the executable specification for the tests and the
benchmark.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["InstanceColoringLoss", "LossTerms", "instance_coloring_loss_loop", "target_keys"]

KERNEL_SCALE = 300.0  # λ of both Cauchy-like repulsion kernels, on the 0..255 colour scale
DEFAULT_TERM_CAP = 1250


def target_keys(target: Tensor) -> Tensor:
    """B×3×H×W colours (integer-valued, 0..255) or B×H×W integer labels → B×N int64 keys, 0 = background.

    Colours map to r·65536 + g·256 + b, so sorting keys sorts colours lexicographically, as ``torch.unique(dim=0)``
    does in the official loss (which decides what the term cap drops).
    """
    if target.ndim == 4 and target.shape[1] == 3:
        t = target.detach()
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise ValueError("colour targets must be integer-valued (resample instance maps with nearest neighbour)")
        t = t.long()
        if t.min() < 0 or t.max() > 255:
            raise ValueError("colour targets must lie in 0..255")
        keys = (t[:, 0] << 16) | (t[:, 1] << 8) | t[:, 2]
        return keys.reshape(keys.shape[0], -1)
    if target.ndim == 3 and not target.is_floating_point():
        if target.numel() and target.min() < 0:
            raise ValueError("label targets must be >= 0 (0 = background)")
        return target.long().reshape(target.shape[0], -1)
    raise ValueError(f"target must be B×3×H×W colours or B×H×W integer labels, got {tuple(target.shape)} {target.dtype}")


def _no_bg_list(no_bg: Tensor | Sequence[bool] | bool | None, batch: int) -> list[bool]:
    if no_bg is None:
        return [False] * batch
    if isinstance(no_bg, bool):
        return [no_bg] * batch
    flags = [bool(v) for v in (no_bg.tolist() if isinstance(no_bg, Tensor) else no_bg)]
    if len(flags) != batch:
        raise ValueError(f"no_bg has {len(flags)} entries for a batch of {batch}")
    return flags


class _SeparationSum(torch.autograd.Function):
    """Σ_k a_k Σ_{j ∉ S_k} 1 / (1 + ‖p_j − μ_k‖²) over one sample's N pixels and K instance means (planar 3×N, 3×K).

    Tiles of at most ``tile`` pairs run over all pairs; each pixel's pair with its own instance (``own_means``,
    ``own_weights``: μ and a of the pixel's instance, weight 0 for pixels of no instance here) is then subtracted,
    which is much cheaper than masking every tile. The weights carry no gradient, so the upstream gradient is one
    scalar: the gradients are accumulated tile by tile in forward (O(N + K) memory) and only scaled in backward,
    instead of recomputing every tile. Differences are taken explicitly: ‖p‖² + ‖μ‖² − 2p·μ as one GEMM would be
    faster but loses up to ~1e-2 of d² at the 0..255 scale, exactly where the kernel is steepest.
    """

    @staticmethod
    def forward(ctx, pixels: Tensor, means: Tensor, weights: Tensor, own_means: Tensor, own_weights: Tensor,  # type: ignore[override]
                tile: int) -> Tensor:
        grads = any(ctx.needs_input_grad[i] for i in (0, 1, 3))
        k_total, n_total = means.shape[1], pixels.shape[1]
        gp, gm = torch.zeros_like(pixels), torch.zeros_like(means)
        total = pixels.new_zeros(())
        kc = max(1, min(k_total, 64, tile))
        nc = max(1, tile // kc)
        # Two tile buffers reused throughout: allocating per tile costs as much as the arithmetic.
        buf_d, buf_t = pixels.new_empty(kc * nc), pixels.new_empty(kc * nc)
        for k0 in range(0, k_total, kc):
            ks = slice(k0, min(k0 + kc, k_total))
            m, a = means[:, ks], weights[ks]
            for n0 in range(0, n_total, nc):
                ns = slice(n0, min(n0 + nc, n_total))
                p = pixels[:, ns]
                size = (ks.stop - ks.start, ns.stop - ns.start)
                kernel = _kernel(p[:, None, :], m[:, :, None], buf_d[: size[0] * size[1]].view(size),
                                 buf_t[: size[0] * size[1]].view(size))
                total += kernel.sum(1) @ a
                if grads:
                    # d/dp 1/(1+d²) = −2(p − μ)/(1+d²)²: c = a·kernel² weighs p − μ in both gradients.
                    c = kernel.square_().mul_(a[:, None])
                    gp[:, ns].add_(m @ c, alpha=2.0).addcmul_(p, c.sum(0), value=-2.0)
                    gm[:, ks].add_(p @ c.T, alpha=2.0).addcmul_(m, c.sum(1), value=-2.0)
        kernel = _kernel(pixels, own_means, torch.empty_like(own_weights), torch.empty_like(own_weights))
        total -= kernel @ own_weights
        g_own = None
        if grads:
            diff = (pixels - own_means) * kernel.square_().mul_(own_weights)
            gp += 2 * diff
            g_own = -2 * diff
        ctx.save_for_backward(gp, gm, g_own)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        gp, gm, g_own = ctx.saved_tensors
        return gp * grad, gm * grad, None, g_own * grad, None, None


def _kernel(p: Tensor, m: Tensor, out: Tensor, scratch: Tensor) -> Tensor:
    """1 / (1 + ‖p − m‖²) over the leading (channel) axis of two broadcastable 3×… tensors, written into ``out``."""
    d2 = torch.sub(p[0], m[0], out=out).square_()
    torch.sub(p[1], m[1], out=scratch)
    d2.addcmul_(scratch, scratch)
    torch.sub(p[2], m[2], out=scratch)
    d2.addcmul_(scratch, scratch)
    return d2.add_(1.0).reciprocal_()


@dataclass
class LossTerms:
    """Per-sample parts of the loss (already divided by the sample's term count), for logging."""

    variance: Tensor  # B, includes the background's pull to black
    separation: Tensor  # B
    mean_repulsion: Tensor  # B
    terms: Tensor  # B, counted terms (the divisor, before max(·, 1))
    instances: Tensor  # B, instances with a variance term (background excluded)

    @property
    def per_sample(self) -> Tensor:
        return self.variance + self.separation + self.mean_repulsion


class InstanceColoringLoss(nn.Module):
    """The instance-colouring loss of §2 on predictions already scaled to 0..255.

    ``forward(prediction, target, no_bg)``: prediction B×3×H×W (computed in float32, or float64 if given), target
    B×3×H×W instance colours (black = background; integer-valued) or B×H×W integer labels (0 = background),
    ``no_bg`` per sample (True: the background is unlabelled and ignored). Returns the scalar batch loss.
    """

    def __init__(self, separation_weight: float = 10.0, term_cap: int = DEFAULT_TERM_CAP,
                 chunk_elements: int | None = None) -> None:
        super().__init__()
        if separation_weight < 0:
            raise ValueError(f"separation_weight must be >= 0, got {separation_weight}")
        if term_cap < 0:
            raise ValueError(f"term_cap must be >= 0, got {term_cap}")
        if chunk_elements is not None and chunk_elements < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
        self.separation_weight = float(separation_weight)
        self.term_cap = int(term_cap)
        self.chunk_elements = chunk_elements

    def _tile(self, device: torch.device) -> int:
        if self.chunk_elements is not None:
            return self.chunk_elements
        # Cache-sized tiles on a CPU; on a GPU, tiles large enough to fill it (16 M pairs ≈ 64 MB per buffer).
        return 1 << 19 if device.type == "cpu" else 1 << 24

    def forward(self, prediction: Tensor, target: Tensor, no_bg: Tensor | Sequence[bool] | bool | None = None) -> Tensor:
        return self.terms(prediction, target, no_bg).per_sample.mean()

    def terms(self, prediction: Tensor, target: Tensor, no_bg: Tensor | Sequence[bool] | bool | None = None) -> LossTerms:
        """The loss's parts per sample (``forward`` is ``terms(...).per_sample.mean()``)."""
        # Kernels of 1/(1 + d²) on a 0..255 scale do not survive fp16, and autocast would reach into the tiles.
        with torch.autocast(prediction.device.type, enabled=False):
            return self._terms(prediction, target, no_bg)

    def _terms(self, prediction: Tensor, target: Tensor, no_bg: Tensor | Sequence[bool] | bool | None) -> LossTerms:
        if prediction.ndim != 4 or prediction.shape[1] != 3:
            raise ValueError(f"prediction must be B×3×H×W, got {tuple(prediction.shape)}")
        b, _, h, w = prediction.shape
        keys = target_keys(target.to(prediction.device))
        if keys.shape != (b, h * w):
            raise ValueError(f"target of shape {tuple(target.shape)} does not match prediction {tuple(prediction.shape)}")
        flags = _no_bg_list(no_bg, b)
        n = h * w
        device = prediction.device
        # float64 stays float64 (gradient checks); everything else is computed in float32.
        dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
        planar = prediction.to(dtype).reshape(b, 3, n)

        # One segment index space for the whole batch: sample i's sorted unique keys at offsets[i].
        inverse, roles, offsets = [], [], [0]
        for i in range(b):
            uniq, inv = torch.unique(keys[i], sorted=True, return_inverse=True)
            role = torch.ones(len(uniq), dtype=torch.long, device=device)  # 1 instance, 0 background, -1 not counted
            if bool(uniq[0] == 0):
                role[0] = -1 if flags[i] else 0
            counted = torch.cumsum((role >= 0).long(), 0)
            role[(role >= 0) & (counted > self.term_cap + 1)] = -1  # the official loop skips once ct > cap
            inverse.append(inv + offsets[-1])
            roles.append(role)
            offsets.append(offsets[-1] + len(uniq))
        seg, role, total_segs = torch.cat(inverse), torch.cat(roles), offsets[-1]
        sample_of_seg = torch.repeat_interleave(torch.arange(b, device=device),
                                                torch.tensor(offsets[1:], device=device) - torch.tensor(offsets[:-1], device=device))
        pixels = planar.transpose(0, 1).reshape(3, b * n)
        count = torch.bincount(seg, minlength=total_segs).to(planar.dtype)
        means = pixels.new_zeros(3, total_segs).index_add_(1, seg, pixels) / count
        is_instance, counted_seg = role == 1, role >= 0

        # Variance: Huber of every pixel to its instance mean, or to black for a counted background.
        own_means = torch.where(is_instance, means, torch.zeros_like(means)).index_select(1, seg)
        huber = F.huber_loss(pixels, own_means, reduction="none", delta=1.0).sum(0)
        per_seg = pixels.new_zeros(total_segs).index_add_(0, seg, huber) / (3 * count)
        per_seg = torch.where(counted_seg, per_seg, torch.zeros_like(per_seg))
        variance = pixels.new_zeros(b).index_add_(0, sample_of_seg, per_seg)

        # Separation weight a_k = w / √|S_k| / |T_k|; an instance covering the whole frame has no T_k and no term.
        outside = n - count
        weight = torch.where(is_instance & (outside > 0), self.separation_weight / count.sqrt() / outside.clamp(min=1),
                             torch.zeros_like(count))
        own_weights = weight.index_select(0, seg)
        zero = pixels.new_zeros(())
        separation, repulsion = [], []
        tile = self._tile(device)
        for i in range(b):
            lo, hi = offsets[i], offsets[i + 1]
            inst = lo + torch.nonzero(is_instance[lo:hi]).flatten()
            mu = means[:, inst]
            sep = zero
            if self.separation_weight > 0 and len(inst):
                px = slice(i * n, (i + 1) * n)
                sep = KERNEL_SCALE * _SeparationSum.apply(planar[i], mu, weight[inst], own_means[:, px],
                                                          own_weights[px], tile)
            separation.append(sep)
            if bool((role[lo:hi] == 0).any()):
                mu = torch.cat([torch.zeros(3, 1, dtype=mu.dtype, device=device), mu], 1)
            rep = zero
            if mu.shape[1] >= 2:
                d2 = (mu[:, :, None] - mu[:, None, :]).square().sum(0)
                off_diagonal = ~torch.eye(mu.shape[1], dtype=torch.bool, device=device)
                # The full matrix holds each pair twice: its off-diagonal mean is the mean over i < j.
                rep = (KERNEL_SCALE / (d2 + 1.0))[off_diagonal].mean()
            repulsion.append(rep)

        terms = torch.zeros(b, dtype=torch.long, device=device).index_add_(0, sample_of_seg, counted_seg.long())
        instances = torch.zeros(b, dtype=torch.long, device=device).index_add_(0, sample_of_seg, is_instance.long())
        divisor = terms.clamp(min=1).to(planar.dtype)
        return LossTerms(variance / divisor, torch.stack(separation) / divisor, torch.stack(repulsion) / divisor,
                         terms, instances)


def instance_coloring_loss_loop(prediction: Tensor, target: Tensor, no_bg: Sequence[bool] | None = None,
                                separation_weight: float = 10.0, term_cap: int = DEFAULT_TERM_CAP) -> Tensor:
    """§2 evaluated literally: a Python loop over samples and instances (colour targets B×3×H×W). Slow: the
    specification ``InstanceColoringLoss`` is tested and benchmarked against."""
    flags = _no_bg_list(no_bg, prediction.shape[0])
    dtype = torch.float64 if prediction.dtype == torch.float64 else torch.float32
    total = prediction.new_zeros((), dtype=dtype)
    for b in range(prediction.shape[0]):
        pred = prediction[b].to(dtype).permute(1, 2, 0)
        gt = target[b].to(dtype)
        loss = prediction.new_zeros((), dtype=dtype)
        ct = 0
        means = []
        for color in torch.unique(gt.permute(1, 2, 0).reshape(-1, 3), dim=0):
            if ct > term_cap:
                continue
            mask = (gt[0] == color[0]) & (gt[1] == color[1]) & (gt[2] == color[2])
            inside = pred[mask]
            if bool(color.sum() == 0):
                if flags[b]:
                    continue
                loss = loss + F.huber_loss(inside, torch.zeros_like(inside))
                ct += 1
                means.append(torch.zeros(3, dtype=inside.dtype, device=inside.device))
                continue
            mu = inside.mean(0)
            loss = loss + F.huber_loss(inside, mu.expand_as(inside))
            ct += 1
            means.append(mu)
            outside = pred[~mask]
            if outside.numel():
                weight = separation_weight / mask.sum().to(dtype).sqrt()
                loss = loss + weight * (KERNEL_SCALE / (1.0 + (outside - mu).square().sum(1))).mean()
        if len(means) > 1:
            mu = torch.stack(means)
            d2 = (mu[:, None] - mu[None]).square().sum(-1)
            i, j = torch.triu_indices(len(mu), len(mu), offset=1)
            loss = loss + (KERNEL_SCALE / (d2[i, j] + 1.0)).mean()
        total = total + loss / max(ct, 1)
    return total / prediction.shape[0]
