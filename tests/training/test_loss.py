"""training.loss.InstanceColoringLoss against a literal per-instance evaluation of the loss in
docs/design.md ("Instance-colouring loss")."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training.loss import InstanceColoringLoss, instance_coloring_loss_loop, target_keys  # noqa: E402


def voronoi_labels(h: int, w: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """H×W int64 labels 0..k-1: every pixel belongs to its nearest of k random seeds (compact, touching regions)."""
    seeds = torch.rand(k, 2, generator=generator) * torch.tensor([h, w])
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    d2 = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    return d2.argmin(-1)


def color_targets(labels: torch.Tensor, generator: torch.Generator, background: bool = True) -> torch.Tensor:
    """B×H×W labels → B×3×H×W distinct integer colours; label 0 is black when ``background``."""
    out = []
    for lab in labels:
        k = int(lab.max()) + 1
        colors = torch.randperm(255**3 - 1, generator=generator)[:k] + 1  # distinct, never black
        colors = torch.stack([colors // 65536 % 256, colors // 256 % 256, colors % 256], 1).float()
        if background:
            colors[0] = 0
        out.append(colors[lab].permute(2, 0, 1))
    return torch.stack(out)


def scene(b: int, h: int, w: int, k: int, seed: int = 0, background: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([voronoi_labels(h, w, k, g) for _ in range(b)])
    # Predictions near their instance colour plus noise, so all kernels (near and far) matter.
    target = color_targets(labels, g, background)
    prediction = (target * 0.5 + torch.rand(b, 3, h, w, generator=g) * 120).clamp(0, 255)
    return prediction, target


def assert_close(fast: torch.Tensor, slow: torch.Tensor, rel: float = 1e-4) -> None:
    fast, slow = fast.detach(), slow.detach()
    assert torch.isfinite(fast)
    assert abs(float(fast) - float(slow)) <= rel * abs(float(slow)), (float(fast), float(slow))


@pytest.mark.parametrize("case", [
    dict(b=2, h=24, w=32, k=9, no_bg=[False, True]),
    dict(b=3, h=20, w=20, k=30, no_bg=[True, False, False], term_cap=10),
    dict(b=1, h=30, w=40, k=12, no_bg=[False], separation_weight=30.0),
    dict(b=2, h=16, w=24, k=6, no_bg=[False, False], background=False),
])
def test_equals_literal_formula(case: dict) -> None:
    kw = {k: case.pop(k) for k in ("term_cap", "separation_weight") if k in case}
    no_bg = case.pop("no_bg")
    prediction, target = scene(**case)
    # Small tiles so that several tiles per instance and per pixel block are exercised.
    fast = InstanceColoringLoss(chunk_elements=97, **kw)(prediction, target, no_bg)
    slow = instance_coloring_loss_loop(prediction.double(), target.double(), no_bg, **kw)
    assert_close(fast, slow)


def test_gradients_match_the_literal_formula_and_gradcheck() -> None:
    prediction, target = scene(2, 12, 10, 5, seed=3)
    p1 = prediction.clone().requires_grad_()
    p2 = prediction.double().requires_grad_()
    InstanceColoringLoss(chunk_elements=13)(p1, target, [False, True]).backward()
    instance_coloring_loss_loop(p2, target.double(), [False, True]).backward()
    assert torch.isfinite(p1.grad).all()
    torch.testing.assert_close(p1.grad.double(), p2.grad, rtol=1e-4, atol=1e-4 * float(p2.grad.abs().max()))

    small = (prediction[:, :, :4, :3] * 0.2).double().requires_grad_()
    loss = InstanceColoringLoss(chunk_elements=7)
    assert torch.autograd.gradcheck(lambda p: loss(p, target[:, :, :4, :3], [False, True]), (small,))


def test_label_targets_equal_color_targets() -> None:
    g = torch.Generator().manual_seed(5)
    labels = torch.stack([voronoi_labels(20, 24, 7, g) for _ in range(2)])
    # Colours increasing with the label keep the sorted order (and so what a cap drops) the same.
    palette = torch.tensor([[0, 0, 0]] + [[10 * i, 200 - i, 3 * i] for i in range(1, 7)], dtype=torch.float32)
    colors = palette[labels].permute(0, 3, 1, 2)
    prediction = torch.rand(2, 3, 20, 24, generator=g) * 255
    for cap in (1250, 3):
        loss = InstanceColoringLoss(term_cap=cap)
        torch.testing.assert_close(loss(prediction, labels, [False, True]), loss(prediction, colors, [False, True]))


def test_no_instances() -> None:
    prediction = (torch.rand(2, 3, 8, 8) * 255).requires_grad_()
    target = torch.zeros(2, 3, 8, 8)
    loss = InstanceColoringLoss()
    with torch.no_grad():
        terms = loss.terms(prediction, target, [False, True])
    assert terms.terms.tolist() == [1, 0] and terms.instances.tolist() == [0, 0]
    # Background pushed to black; an ignored background leaves nothing.
    assert float(terms.per_sample[0]) > 0 and float(terms.per_sample[1]) == 0
    assert_close(loss(prediction, target, [False, True]), instance_coloring_loss_loop(prediction, target, [False, True]))
    loss(prediction, target, [True, True]).backward()
    assert torch.equal(prediction.grad, torch.zeros_like(prediction))


def test_one_instance() -> None:
    g = torch.Generator().manual_seed(1)
    prediction = torch.rand(1, 3, 10, 12, generator=g) * 255
    whole = torch.full((1, 3, 10, 12), 77.0)  # one instance covering the frame: no T_k, no separation, no pairs
    terms = InstanceColoringLoss().terms(prediction, whole)
    assert terms.terms.tolist() == [1] and float(terms.separation[0]) == 0 and float(terms.mean_repulsion[0]) == 0
    assert_close(terms.per_sample.mean(), instance_coloring_loss_loop(prediction, whole))
    half = whole.clone()
    half[:, :, :5] = 0  # the instance and the background: separation and one pair of means
    terms = InstanceColoringLoss().terms(prediction, half)
    assert terms.terms.tolist() == [2] and float(terms.separation[0]) > 0 and float(terms.mean_repulsion[0]) > 0
    assert_close(terms.per_sample.mean(), instance_coloring_loss_loop(prediction, half))
    # A perfect colouring: no variance, and repulsion only from the black-vs-colour pair, which is tiny.
    assert float(InstanceColoringLoss().terms(half, half).variance[0]) == 0


def test_many_instances_and_the_cap() -> None:
    prediction, target = scene(1, 48, 64, 400, seed=7)
    for cap in (1250, 150):
        fast = InstanceColoringLoss(term_cap=cap, chunk_elements=4096)
        terms = fast.terms(prediction, target)
        assert int(terms.terms[0]) == min(int(target.reshape(3, -1).unique(dim=1).shape[1]), cap + 1)
        assert_close(terms.per_sample.mean(), instance_coloring_loss_loop(prediction.double(), target.double(), term_cap=cap))


def test_reduced_precision_input_and_bad_targets() -> None:
    prediction, target = scene(1, 16, 16, 4)
    loss = InstanceColoringLoss()
    assert_close(loss(prediction.bfloat16(), target), instance_coloring_loss_loop(prediction.bfloat16().float(), target))
    with pytest.raises(ValueError, match="integer-valued"):
        loss(prediction, target + 0.5)
    with pytest.raises(ValueError, match="does not match"):
        loss(prediction, target[:, :, :8])
    with pytest.raises(ValueError, match="no_bg"):
        loss(prediction, target, [True, False])
    assert target_keys(torch.tensor([[[[1]], [[2]], [[3]]]])).tolist() == [[65536 + 512 + 3]]
