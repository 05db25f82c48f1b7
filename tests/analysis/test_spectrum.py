import numpy as np
import pytest
import torch

from mimreg.analysis.spectrum import effective_rank, plot_spectrum, singular_values
from mimreg.errors import MimregError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def random_features(n=64, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_k_equal_singular_values_give_erank_k(k):
    # Rows +e_i and -e_i: zero column means, so centring changes nothing; X^T X = 2 I_k.
    eye = torch.eye(k, 10)
    features = torch.cat([eye, -eye])
    assert effective_rank(features) == pytest.approx(k, abs=1e-6)
    assert effective_rank(torch.eye(k), center=False) == pytest.approx(k, abs=1e-6)


def test_erank_from_singular_values_matches_hand_computation():
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, erank = 2 ** 1.5.
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(2**1.5, abs=1e-9)
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 0.0])) == pytest.approx(3.0, abs=1e-9)


def test_rank_one_matrix_gives_one():
    u = torch.tensor([1.0, -2.0, 0.5, 0.5])  # zero mean, so still rank 1 after centring
    v = torch.randn(9, generator=torch.Generator().manual_seed(0))
    assert effective_rank(torch.outer(u, v)) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.outer(u + 3.0, v), center=False) == pytest.approx(1.0, abs=1e-6)


def test_invariant_to_scale_and_row_order():
    x = random_features()
    reference = effective_rank(x)
    assert 1.0 < reference < 16.0
    assert effective_rank(1e3 * x) == pytest.approx(reference, rel=1e-9)
    assert effective_rank(x[torch.randperm(64, generator=torch.Generator().manual_seed(1))]) == pytest.approx(
        reference, rel=1e-9
    )


def test_centring_removes_a_constant_offset():
    x = random_features()
    x = x - x.mean(dim=0)
    shifted = x + 5.0 * torch.randn(16, generator=torch.Generator().manual_seed(2))
    assert effective_rank(shifted) == pytest.approx(effective_rank(x), rel=1e-6)
    # Without centring the offset adds a dominant direction and lowers the effective rank.
    assert effective_rank(shifted, center=False) < effective_rank(x) - 1.0


def test_collapsed_or_empty_spread_gives_zero():
    assert effective_rank(torch.zeros(5, 3)) == 0.0
    assert effective_rank(torch.randn(1, 8)) == 0.0  # a single row is all offset
    assert effective_rank(torch.full((6, 4), 0.1)) == 0.0  # identical rows: centring leaves only round-off
    assert torch.all(singular_values(torch.full((6, 4), 0.1)) == 0)


def test_singular_values_are_float64_descending_and_centred():
    x = random_features(n=20, d=5) + 2.0
    values = singular_values(x)
    assert values.dtype == torch.float64 and values.shape == (5,)
    assert torch.all(values[:-1] >= values[1:])
    centred = x.double().numpy() - x.double().numpy().mean(axis=0)
    np.testing.assert_allclose(values.numpy(), np.linalg.svd(centred, compute_uv=False), rtol=1e-10)
    assert not torch.allclose(singular_values(x, center=False), values)


def test_bad_shapes_raise():
    with pytest.raises(MimregError):
        effective_rank(torch.zeros(2, 3, 4))
    with pytest.raises(MimregError):
        effective_rank(torch.tensor([1.0, -1.0]))


def test_plot_spectrum_writes_png(tmp_path, monkeypatch):
    from PIL import Image

    from mimreg.analysis import spectrum

    figures = []
    save = spectrum.save_png
    monkeypatch.setattr(spectrum, "save_png", lambda figure, path: (figures.append(figure), save(figure, path))[1])
    x = random_features()
    low_rank = x[:, :2] @ torch.randn(2, 16, generator=torch.Generator().manual_seed(3))
    path = plot_spectrum(
        {"full": singular_values(x), "low rank": singular_values(low_rank), "from features": x},
        tmp_path / "plots" / "spectrum.png",
        title="spectra",
    )
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and Image.open(path).size == (768, 528)  # the 6.4 x 4.4 inch figure
    (axes,) = figures[0].axes
    assert axes.get_title() == "spectra" and axes.get_yscale() == "log"
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert list(lines) == ["full", "low rank", "from features"]
    full = singular_values(x).numpy()
    for label in ("full", "from features"):  # features are drawn as their centred spectrum
        np.testing.assert_array_equal(lines[label].get_xdata(), np.arange(1, 17))
        np.testing.assert_allclose(lines[label].get_ydata(), full / full[0], rtol=1e-6)
    low = lines["low rank"].get_ydata()
    assert low[0] == 1 and low[1] > 1e-3 and low[2:].max() < 1e-5  # rank 2: two values, then rounding


def test_plot_spectrum_rejects_empty_input(tmp_path):
    with pytest.raises(MimregError):
        plot_spectrum({}, tmp_path / "x.png")
