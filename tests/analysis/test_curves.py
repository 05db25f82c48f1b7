import pytest

from mimreg.analysis.curves import plot_curves
from mimreg.errors import MimregError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("logy", [False, True])
def test_plot_curves_writes_png(tmp_path, logy):
    series = {
        "mae": ([0, 1, 2, 3], [1.0, 0.5, 0.3, 0.2]),
        "mae+magma": ([0, 1, 2, 3], [1.1, 0.6, 0.0, 0.25]),  # a zero is skipped on a log axis
        "single point": ([5], [0.4]),
    }
    path = plot_curves(series, tmp_path / "curves" / "loss.png", title="loss", xlabel="epoch", ylabel="loss", logy=logy)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]


def test_plot_curves_rejects_bad_series(tmp_path):
    with pytest.raises(MimregError, match="equal lengths"):
        plot_curves({"a": ([0, 1], [1.0])}, tmp_path / "a.png", "t", "x", "y")
    with pytest.raises(MimregError, match="no series"):
        plot_curves({}, tmp_path / "a.png", "t", "x", "y")
