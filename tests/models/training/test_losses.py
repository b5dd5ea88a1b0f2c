"""Distances, the triplet loss, the reducer and the margin heads against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.training.distances import CosineSimilarity, SquaredL2Distance, get_distance
from models.training.index_utils import all_triplets, negative_mask, positive_mask
from models.training.losses import ArcFaceLoss, CosFaceLoss, TripletMarginLoss
from models.training.reducers import MeanOverActiveReducer, MeanReducer


def unit(*angles_deg: float) -> torch.Tensor:
    """Unit vectors in the plane at the given angles (degrees)."""
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def test_squared_l2_on_unit_vectors_is_two_minus_two_cos() -> None:
    x = unit(0, 90, 180, 60)
    d = SquaredL2Distance().matrix(x)
    # 0°-90°: ‖(1,0)-(0,1)‖² = 2; 0°-180°: 4; 0°-60°: 2 - 2·0.5 = 1.
    assert d[0, 1].item() == pytest.approx(2.0)
    assert d[0, 2].item() == pytest.approx(4.0)
    assert d[0, 3].item() == pytest.approx(1.0)
    assert torch.allclose(d.diagonal(), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    cos = CosineSimilarity().matrix(x)
    assert torch.allclose(d, 2 - 2 * cos, atol=1e-12)


def test_squared_l2_normalises_unless_told_not_to() -> None:
    x = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 4.0]], dtype=torch.float64)
    assert SquaredL2Distance().pairwise(x, y).item() == pytest.approx(2.0)
    assert SquaredL2Distance(normalize_embeddings=False).pairwise(x, y).item() == pytest.approx(25)
    assert SquaredL2Distance(normalize_embeddings=False).matrix(x, y).item() == pytest.approx(25)


def test_get_distance_names() -> None:
    assert isinstance(get_distance("squared-l2"), SquaredL2Distance)
    assert isinstance(get_distance("cosine"), CosineSimilarity)
    with pytest.raises(ValueError, match="unknown distance"):
        get_distance("manhattan")


def test_index_masks_and_all_triplets() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    pos = positive_mask(labels)
    assert pos.sum() == 4 and not pos.diagonal().any()
    assert negative_mask(labels).sum() == 25 - 9
    a, p, n = all_triplets(labels)
    # 4 ordered positive pairs x 3 negatives each.
    assert len(a) == 12
    assert (labels[a] == labels[p]).all() and (a != p).all() and (labels[a] != labels[n]).all()
    assert len(all_triplets(torch.tensor([0, 1, 2]))[0]) == 0


def test_triplet_loss_hand_computed_with_squared_distance_and_margin() -> None:
    # a at 0°, p at 60° (d_ap = 2 - 2cos60° = 1), n1 at 90° (d_an = 2), n2 at 50°
    # (d_an = 2 - 2cos50° = 0.7144).
    x = unit(0, 60, 90, 50).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 2])
    trip = (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([2, 3]))
    loss_fn = TripletMarginLoss(margin=0.2)
    per = loss_fn.per_triplet(x, trip)
    d_an2 = 2 - 2 * math.cos(math.radians(50))
    assert per[0].item() == 0.0  # 1 - 2 + 0.2 < 0: the margin is met
    assert per[1].item() == pytest.approx(1 - d_an2 + 0.2)  # = 0.4856: active
    assert per[1].item() == pytest.approx(0.48558, abs=1e-5)
    out = loss_fn(x, labels, trip)
    assert out.loss.item() == pytest.approx(1 - d_an2 + 0.2)  # mean over the one active
    assert out.stats["triplets"] == 2 and out.stats["active"] == 1
    assert out.active_fraction == pytest.approx(0.5)
    # With a larger margin both are active and the mean covers both.
    out = TripletMarginLoss(margin=1.5)(x, labels, trip)
    assert out.loss.item() == pytest.approx(((1 - 2 + 1.5) + (1 - d_an2 + 1.5)) / 2)
    assert out.active_fraction == 1.0
    # The gradient pulls p towards a and pushes the active negative away.
    out.loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_triplet_loss_is_the_squared_not_the_plain_distance() -> None:
    # a=0°, p=90° (d²=2, d=1.414), n=180° (d²=4, d=2): squared gives 2-4+α, plain 1.414-2+α.
    x = unit(0, 90, 180)
    out = TripletMarginLoss(margin=2.5)(
        x, torch.tensor([0, 0, 1]), (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    )
    assert out.loss.item() == pytest.approx(2 - 4 + 2.5)


def test_triplet_loss_with_cosine_similarity() -> None:
    x = unit(0, 60, 70)  # cos_ap = 0.5, cos_an = cos 70° = 0.342
    trip = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    loss = TripletMarginLoss(margin=0.3, distance=CosineSimilarity())
    out = loss(x, torch.tensor([0, 0, 1]), trip)
    assert out.loss.item() == pytest.approx(math.cos(math.radians(70)) - 0.5 + 0.3)


def test_triplet_loss_without_miner_uses_all_triplets() -> None:
    x = unit(0, 10, 90, 100)
    out = TripletMarginLoss(margin=0.2)(x, torch.tensor([0, 0, 1, 1]))
    assert out.stats["triplets"] == 8  # 4 ordered positive pairs x 2 negatives
    assert out.loss.item() == 0.0 and out.active_fraction == 0.0


def test_reducers() -> None:
    losses = torch.tensor([0.0, 0.5, 0.0, 1.5], requires_grad=True)
    out = MeanOverActiveReducer()(losses)
    assert out.loss.item() == pytest.approx(1.0)
    assert out.stats == {"items": 4.0, "active": 2.0, "active_fraction": 0.5}
    out.loss.backward()
    assert losses.grad.tolist() == [0.0, 0.5, 0.0, 0.5]
    assert MeanReducer()(torch.tensor([0.0, 0.5, 0.0, 1.5])).loss.item() == pytest.approx(0.5)
    empty = MeanOverActiveReducer()(torch.zeros(0, requires_grad=True))
    assert empty.loss.item() == 0.0 and empty.loss.requires_grad and empty.active_fraction == 0.0


def test_triplet_loss_gradcheck() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    trip = all_triplets(labels)
    for distance in (SquaredL2Distance(), CosineSimilarity()):
        # A large margin keeps every triplet away from the hinge's kink.
        loss = TripletMarginLoss(margin=5.0, distance=distance)
        assert torch.autograd.gradcheck(lambda e, f=loss: f(e, labels, trip).loss, (x,))


@pytest.mark.parametrize("head_cls", [CosFaceLoss, ArcFaceLoss])
def test_margin_heads_gradcheck(head_cls: type) -> None:
    """Gradients with respect to both the embeddings and the class-weight matrix."""
    torch.manual_seed(0)
    head = head_cls(embedding_size=4, num_classes=3, scale=4.0).double()
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    w = head.weight.detach().clone().requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0, 1])

    def loss(e: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(head, {"weight": weight}, (e, labels)).loss

    assert torch.autograd.gradcheck(loss, (x, w))


def test_cosface_hand_computed() -> None:
    head = CosFaceLoss(embedding_size=2, num_classes=2, scale=10.0, margin=0.35).double()
    with torch.no_grad():
        head.weight.copy_(unit(0, 90))
    x = unit(30)  # cos to class 0 = 0.866, to class 1 = 0.5
    out = head(x, torch.tensor([0]))
    logits = torch.tensor([10 * (math.cos(math.radians(30)) - 0.35), 10 * 0.5], dtype=torch.float64)
    expected = -torch.log_softmax(logits, 0)[0].item()
    assert out.loss.item() == pytest.approx(expected)
    assert out.stats["train_accuracy"] == 1.0
    assert out.stats["active"] == 0.0  # 8.66 - 3.5 = 5.16 > 5: the margin is met


def test_arcface_hand_computed_and_monotone_past_pi_minus_m() -> None:
    head = ArcFaceLoss(embedding_size=2, num_classes=2, scale=10.0, margin=0.5).double()
    with torch.no_grad():
        head.weight.copy_(unit(0, 90))
    x = unit(40)  # cos to class 0 = 0.766, to class 1 = cos 50° = 0.643
    out = head(x, torch.tensor([0]))
    target = math.cos(math.radians(40) + 0.5)  # 0.365
    logits = torch.tensor([10 * target, 10 * math.cos(math.radians(50))], dtype=torch.float64)
    assert out.loss.item() == pytest.approx(-torch.log_softmax(logits, 0)[0].item())
    assert out.stats["train_accuracy"] == 1.0  # plain cosine picks class 0 ...
    assert out.stats["active"] == 1.0  # ... but not by the angular margin
    # The target logit keeps falling as the angle grows, also beyond π − m.
    angles = torch.linspace(0.01, math.pi - 0.01, 200, dtype=torch.float64)
    t = head.target_logits(torch.cos(angles))
    assert (t[1:] < t[:-1]).all()


def test_margin_heads_need_two_classes() -> None:
    with pytest.raises(ValueError, match="two training identities"):
        CosFaceLoss(embedding_size=4, num_classes=1)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    margin=st.floats(0.0, 2.0),
)
def test_triplet_loss_properties(seed: int, margin: float) -> None:
    """Non-negative, zero iff every triplet meets the margin, and equal to the brute force."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = TripletMarginLoss(margin=margin)(x, labels)
    u = torch.nn.functional.normalize(x, dim=1)
    brute = []
    for a, p, n in zip(*all_triplets(labels), strict=True):
        brute.append(max(((u[a] - u[p]) ** 2).sum() - ((u[a] - u[n]) ** 2).sum() + margin, 0.0))
    brute_t = torch.tensor([float(b) for b in brute], dtype=torch.float64)
    active = brute_t[brute_t > 0]
    assert out.loss.item() >= 0
    expected = active.mean().item() if len(active) else 0.0
    assert out.loss.item() == pytest.approx(expected, abs=1e-9)
    assert out.active_fraction == pytest.approx(len(active) / len(brute_t))
