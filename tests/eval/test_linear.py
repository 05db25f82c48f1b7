import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimreg.errors import MimregError
from mimreg.eval.linear import linear_probe


def blobs(num_classes=6, per_class=100, dim=16, spread=0.5, seed=0):
    """Gaussian blobs around 4 * e_c: linearly separable with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    centers = 4.0 * torch.eye(num_classes, dim)
    return centers[labels] + spread * torch.randn(labels.numel(), dim, generator=g), labels


@pytest.fixture(scope="module")
def split():
    train_x, train_y = blobs(seed=0)
    test_x, test_y = blobs(per_class=50, seed=1)
    return train_x, train_y, test_x, test_y


@pytest.mark.parametrize("protocol", ["magma", "mae"])
def test_separable_blobs_are_classified_perfectly(split, protocol):
    result = linear_probe(*split, protocol=protocol, epochs=10, batch_size=64, milestones=(6, 8))
    assert result["top1"] == pytest.approx(100.0)
    assert result["top5"] == pytest.approx(100.0)
    assert result["train_top1"] == pytest.approx(100.0)
    assert result["protocol"] == protocol and result["epochs"] == 10 and result["num_classes"] == 6


def test_same_seed_gives_identical_results(split):
    first = linear_probe(*split, epochs=3, batch_size=32, seed=7)
    second = linear_probe(*split, epochs=3, batch_size=32, seed=7)
    assert first == second


def test_top5_is_omitted_with_fewer_than_five_classes():
    x, y = blobs(num_classes=3, per_class=20, dim=4)
    result = linear_probe(x, y, x, y, epochs=2)
    assert "top5" not in result and result["num_classes"] == 3


def _reference_run(
    train_x, train_y, *, protocol, epochs, lr, momentum, milestones, gamma, batch_size, weight_decay, seed
):
    """The same recipe written with nn modules, autograd and torch.optim."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(train_y.max()) + 1
    linear = nn.Linear(train_x.shape[1], num_classes)
    with torch.no_grad():
        nn.init.trunc_normal_(linear.weight, std=0.01, generator=generator)
        linear.bias.zero_()
    head = linear
    if protocol == "mae":
        head = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False, eps=1e-6), linear)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    n = train_x.shape[0]
    for _ in range(epochs):
        head.train()
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
        scheduler.step()
    head.eval()
    with torch.no_grad():
        accuracy = 100.0 * (head(train_x).argmax(1) == train_y).float().mean().item()
    return total / n, accuracy


@pytest.mark.parametrize("protocol", ["magma", "mae"])
def test_matches_autograd_and_torch_optim_reference(protocol):
    # Overlapping blobs so the loss stays far from zero and differences would show.
    x, y = blobs(num_classes=5, per_class=40, dim=8, spread=3.0, seed=3)
    recipe = dict(
        protocol=protocol, epochs=4, lr=0.05, momentum=0.9, milestones=(1, 3), gamma=0.5,
        batch_size=48, weight_decay=1e-3, seed=11,
    )
    ours = linear_probe(x, y, x, y, **recipe)
    ref_loss, ref_accuracy = _reference_run(x, y, **recipe)
    assert ours["train_loss"] == pytest.approx(ref_loss, rel=1e-4)
    # fp32 rounding in another order may move a point that lies on a decision boundary: one sample
    assert ours["train_top1"] == pytest.approx(ref_accuracy, abs=100 / len(y) + 1e-9)


def test_bad_inputs_raise_mimreg_errors(split):
    train_x, train_y, test_x, test_y = split
    with pytest.raises(MimregError, match="protocol"):
        linear_probe(*split, protocol="dino")
    with pytest.raises(MimregError, match="feature dims"):
        linear_probe(train_x, train_y, test_x[:, :8], test_y)
    with pytest.raises(MimregError, match="test_y contains class 9"):
        linear_probe(train_x, train_y, test_x, torch.full_like(test_y, 9))
    with pytest.raises(MimregError, match="integer class indices"):
        linear_probe(train_x, train_y.float(), test_x, test_y)
    with pytest.raises(MimregError, match="NaN"):
        linear_probe(train_x.clone().fill_(float("nan")), train_y, test_x, test_y)
