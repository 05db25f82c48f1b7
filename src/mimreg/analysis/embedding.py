"""2-D maps of the test features (PaCMAP, t-SNE, UMAP) and the Davies-Bouldin index."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import torch

from mimreg.analysis._plotting import new_figure, save_png
from mimreg.errors import MimregError

EMBEDDINGS = ("pacmap", "tsne", "umap")
TITLES = {"pacmap": "PaCMAP", "tsne": "t-SNE", "umap": "UMAP"}
# the module each map needs and the package that brings it (pacmap and umap-learn pull in numba)
PACKAGES = {"pacmap": ("pacmap", "pacmap"), "umap": ("umap", "umap-learn"), "tsne": ("sklearn", "scikit-learn")}


def _features(features) -> np.ndarray:
    x = torch.as_tensor(features).detach().double().cpu().numpy()
    if x.ndim != 2 or len(x) == 0:
        raise MimregError(f"features must be a non-empty (N, D) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise MimregError("features contain NaN or inf; check the encoder output")
    return x


def davies_bouldin(features, labels) -> float:
    """Davies-Bouldin index (Davies & Bouldin, 1979; lower = tighter, better separated classes)
    of (N, D) features grouped by their (N,) labels, in float64 (scikit-learn's)."""
    from sklearn.metrics import davies_bouldin_score

    labels = np.asarray(torch.as_tensor(labels).cpu())
    if len(np.unique(labels)) < 2:
        raise MimregError("the Davies-Bouldin index needs at least two classes")
    return float(davies_bouldin_score(_features(features), labels))


def available(name: str) -> bool:
    """Whether the package behind the 2-D map `name` is installed."""
    import importlib.util

    return importlib.util.find_spec(PACKAGES[name][0]) is not None


def require(name: str) -> None:
    """Raise a clear error when the package behind the 2-D map `name` is missing."""
    if name not in EMBEDDINGS:
        raise MimregError(f"unknown embedding {name!r}; choose from {list(EMBEDDINGS)}")
    if not available(name):
        raise MimregError(f"{TITLES[name]} needs the {PACKAGES[name][1]} package: "
                          f"pip install 'mimreg[viz]' (t-SNE works without it)")


def embed_2d(features, method: str = "pacmap", seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) coordinates by PaCMAP (Wang et al., JMLR 2021), t-SNE
    (scikit-learn) or UMAP (umap-learn), seeded."""
    require(method)
    x = _features(features).astype(np.float32)
    neighbours = max(2, min(10, len(x) - 1))
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
    with contextlib.redirect_stdout(io.StringIO()), quiet_logger("pacmap"), torch_threads_kept():  # both warn about the seed
        if method == "pacmap":
            import pacmap

            return pacmap.PaCMAP(n_components=2, n_neighbors=neighbours, random_state=seed).fit_transform(x)
        import umap

        with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": seeded on purpose
            warnings.filterwarnings("ignore", message=".*random_state.*")
            return umap.UMAP(n_components=2, n_neighbors=max(neighbours, 5), random_state=seed).fit_transform(x)


@contextlib.contextmanager
def torch_threads_kept():
    """PaCMAP (through numba) leaves torch on one thread: every later training step in the process
    (the demo's next recipe) then ran 1.6x slower. Put torch's thread count back."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def quiet_logger(name: str):
    """Hold back a library logger's warnings (PaCMAP warns that the seed it was given is set)."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def draw_embedding(ax, coords: np.ndarray, labels, class_names: list[str], title: str) -> None:
    """Scatter of 2-D points coloured by class on `ax` (10 classes: tab10 colours)."""
    from matplotlib import colormaps

    labels = np.asarray(torch.as_tensor(labels).cpu())
    classes = np.unique(labels)
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, c in enumerate(classes):
        chosen = labels == c
        name = class_names[c] if 0 <= c < len(class_names) else str(c)
        ax.scatter(coords[chosen, 0], coords[chosen, 1], s=6, alpha=0.75, color=palette(i % palette.N),
                   label=name, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def embedding_title(method: str, dbi: float | None, linear_top1: float | None, label: str = "") -> str:
    """'LABEL: PaCMAP' over 'DBI 5.61, linear 69.0%' (each number when known)."""
    known = ([f"DBI {dbi:.2f}"] if dbi is not None else []) + \
            ([f"linear {linear_top1:.1f}%"] if linear_top1 is not None else [])
    return f"{label}{': ' if label else ''}{TITLES[method]}\n{', '.join(known)}".strip()


def plot_embedding(coords: np.ndarray, labels, class_names: list[str], path, title: str):
    """PNG: the 2-D map coloured by class, with a legend of the class names."""
    figure, ax = new_figure(4.6, 3.8)
    draw_embedding(ax, coords, labels, class_names, title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, frameon=False)
    return save_png(figure, path)


def plot_embedding_panels(panels: list[tuple[np.ndarray, np.ndarray, str]], class_names: list[str], path,
                          columns: int = 4):
    """PNG of several 2-D maps side by side (MAGMA Fig. 4): panels are (coords, labels, title),
    coloured alike, with one legend for all."""
    if not panels:
        raise MimregError("plot_embedding_panels got no panels")
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = new_figure(3.0 * columns, 2.9 * rows + 0.5, rows=rows, columns=columns)
    for ax, (coords, labels, title) in zip(axes.flat, panels):
        draw_embedding(ax, coords, labels, class_names, title)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    handles, names = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside lower center", ncols=min(len(names), 5), fontsize=8,
                  markerscale=2, frameon=False)
    return save_png(figure, path)
