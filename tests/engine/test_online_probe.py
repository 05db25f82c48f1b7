"""The online probe reads batch-normalised features (MAE's probe head), so a common offset and
scale of the features, which a ViT's LayerNorm'd cls token mostly is, do not hide what separates
the classes; a batch of one uses the running statistics."""

from __future__ import annotations

import pytest
import torch

from mimreg.engine.build import build_trainee

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def trainee(tiny_config):
    torch.manual_seed(0)
    return build_trainee(tiny_config("mae"), 10).train()


def test_a_common_offset_and_scale_of_the_features_change_nothing(trainee):
    features = torch.randn(32, trainee.probe.in_features, dtype=torch.float64).float()
    labels = torch.arange(32) % 10
    ce, acc = trainee.probe_loss(features, labels)
    shifted_ce, shifted_acc = trainee.probe_loss(5.0 + 0.1 * features, labels)
    assert shifted_ce.detach().item() == pytest.approx(ce.detach().item(), rel=1e-4) and float(shifted_acc) == float(acc)


def test_it_learns_a_small_signal_under_a_large_common_vector(trainee):
    generator = torch.Generator().manual_seed(0)
    dim = trainee.probe.in_features
    common = torch.randn(dim, generator=generator)
    directions = torch.randn(10, dim, generator=generator)
    optimizer = torch.optim.AdamW(trainee.probe.parameters(), lr=1e-3)
    for _ in range(60):
        labels = torch.randint(0, 10, (64,), generator=generator)
        features = common + 0.05 * directions[labels] + 0.01 * torch.randn(64, dim, generator=generator)
        ce, acc = trainee.probe_loss(features, labels)
        optimizer.zero_grad()
        ce.backward()
        optimizer.step()
    assert float(acc) > 90  # on raw features (no normalisation) the same 60 steps stay near 10%


def test_a_batch_of_one_uses_the_running_statistics(trainee):
    ce, acc = trainee.probe_loss(torch.randn(1, trainee.probe.in_features), torch.tensor([3]))
    assert torch.isfinite(ce) and float(acc) in (0.0, 100.0)
    assert int(trainee.probe_norm.num_batches_tracked) == 0
