"""The singular-value spectrum of a feature matrix, drawn (the numbers: mimreg/spectra.py)."""

from __future__ import annotations

import torch

from mimreg.analysis._plotting import new_figure, save_png
from mimreg.errors import MimregError
from mimreg.spectra import effective_rank, singular_values

__all__ = ["effective_rank", "plot_spectrum", "singular_values"]


def plot_spectrum(spectra: dict, path, title: str | None = None):
    """PNG of normalised singular values (s_i / s_1, log scale) against index, one line per label.

    Values may be 1-D singular values or (N, D) feature matrices (their centred spectrum is
    used). Zero singular values cannot be drawn on a log axis and are left out.
    """
    if not spectra:
        raise MimregError("plot_spectrum got no spectra; pass {label: singular values or features}")
    figure, axes = new_figure()
    for label, values in spectra.items():
        values = torch.as_tensor(values)
        values = singular_values(values) if values.ndim == 2 else values.detach().to(torch.float64).flatten()
        values = values.sort(descending=True).values
        if values.numel() == 0 or not values[0] > 0:
            raise MimregError(f"spectrum {label!r} has no positive singular value; nothing to plot")
        normalised = values / values[0]
        index = torch.arange(1, values.numel() + 1)
        keep = normalised > 0
        axes.plot(index[keep].numpy(), normalised[keep].numpy(), label=str(label), linewidth=1.5)
    axes.set_yscale("log")
    axes.set_xlabel("singular value index")
    axes.set_ylabel("singular value / largest")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend()
    if title:
        axes.set_title(title)
    return save_png(figure, path)
