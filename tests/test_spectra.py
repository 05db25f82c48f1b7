"""RankMe and alpha-ReQ on spectra known by construction (effective rank: tests/analysis/test_spectrum.py)."""

import math

import numpy as np
import pytest
import torch

from mimreg.errors import MimregError
from mimreg.spectra import RANKME_EPS, alpha_req, effective_rank, rankme


def with_singular_values(sigma: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """An (n, len(sigma)) float64 matrix Q diag(sigma), Q with orthonormal columns orthogonal to the
    ones vector: its columns have zero mean, so centring leaves it (and its singular values) as is."""
    g = torch.Generator().manual_seed(seed)
    a = torch.cat([torch.ones(n, 1, dtype=torch.float64), torch.randn(n, len(sigma), generator=g, dtype=torch.float64)], 1)
    q = torch.linalg.qr(a).Q[:, 1:]  # the first column spans the ones vector; the others are orthogonal to it
    return q * sigma


def test_rankme_of_the_identity_is_d_up_to_eps():
    d = 64
    p = 1 / d + RANKME_EPS  # every p_k
    assert rankme(torch.eye(d)) == pytest.approx(math.exp(-d * p * math.log(p)), rel=1e-12)
    assert rankme(torch.eye(d)) == pytest.approx(d, rel=1e-4)  # eps adds d * eps * (log d - 1) relative
    assert rankme(torch.eye(d), eps=0.0) == pytest.approx(d, rel=1e-12)


def test_rankme_does_not_centre_and_gives_each_zero_singular_value_eps():
    # identical rows v: uncentred rank 1 (s = (|v| sqrt(N), 0, ..., 0)); centred, the zero matrix
    rows = torch.tensor([1.0, 2.0, -2.0]).repeat(10, 1)
    expected = math.exp(-(1 + RANKME_EPS) * math.log(1 + RANKME_EPS) - 2 * RANKME_EPS * math.log(RANKME_EPS))
    assert rankme(rows) == pytest.approx(expected, rel=1e-12)
    assert effective_rank(rows) == 0.0 and effective_rank(rows, center=False) == pytest.approx(1.0, abs=1e-12)
    assert rankme(torch.zeros(5, 3)) == 0.0


def test_rankme_without_eps_is_the_uncentred_effective_rank():
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(1)) + 3.0  # far from centred
    assert rankme(x, eps=0.0) == pytest.approx(effective_rank(x, center=False), rel=1e-12)
    assert rankme(x) != pytest.approx(effective_rank(x), rel=1e-3)  # centring matters here


@pytest.mark.parametrize("a", [0.5, 1.0])
def test_alpha_of_singular_values_k_to_the_minus_a_is_2a(a):
    # lambda_k = s_k^2 / (N - 1) = k^(-2a) / (N - 1): log lambda_k = -2a log k + const, fitted exactly
    d = 150
    k = torch.arange(1, d + 1, dtype=torch.float64)
    assert alpha_req(with_singular_values(k**-a, n=400)) == pytest.approx(2 * a, abs=1e-9)
    # only ranks 6..100 count: a different head (ranks 1-5) and tail (101-150) change nothing
    bent = torch.where(k < 6, 10 * k**-a, torch.where(k <= 100, k**-a, 100**-a * (k / 100) ** -3))  # still descending
    assert alpha_req(with_singular_values(bent, n=400)) == pytest.approx(2 * a, abs=1e-9)
    assert abs(alpha_req(with_singular_values(bent, n=400), ranks=(1, 150)) - 2 * a) > 0.1
    # fewer than 100 dimensions: ranks 6..D
    assert alpha_req(with_singular_values(k[:40] ** -a, n=100)) == pytest.approx(2 * a, abs=1e-9)


def test_alpha_is_a_least_squares_fit_weighted_by_one_over_k():
    s = torch.tensor([1.0, 0.6, 0.5, 0.2, 0.15], dtype=torch.float64)  # not a power law: residuals
    k = np.arange(1, 6)
    # np.polyfit's w multiplies the residuals: w = sqrt(1/k) weights their squares by 1/k
    slope = np.polyfit(np.log(k), 2 * np.log(s.numpy()), 1, w=np.sqrt(1 / k))[0]
    assert alpha_req(with_singular_values(s, n=20), ranks=(1, 5)) == pytest.approx(-slope, abs=1e-9)
    unweighted = np.polyfit(np.log(k), 2 * np.log(s.numpy()), 1)[0]
    assert abs(unweighted - slope) > 1e-3  # the weighting is visible on this spectrum


def test_alpha_is_nan_below_two_fitted_ranks_and_refuses_bad_ranks():
    collapsed = with_singular_values(torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64), n=30)
    assert math.isnan(alpha_req(collapsed))  # rank 6: only rank 6 in 6..100
    with pytest.raises(MimregError, match=r"alpha_req ranks must be 1 <= first < last, got \(5, 5\)"):
        alpha_req(collapsed, ranks=(5, 5))
