"""`mimreg analyze`: every picture of one encoder, and analysis.json with the numbers behind them."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from mimreg.analysis.attention import plot_attention
from mimreg.analysis.curves import plot_run_curves
from mimreg.analysis.embedding import (TITLES, available, davies_bouldin, embed_2d, embedding_title, plot_embedding,
                                       require)
from mimreg.analysis.evaluations import linear_top1, read_evaluations
from mimreg.analysis.inputs import (TrainedModel, class_sample, load_test_images, load_test_labels, load_trained,
                                    sample_features)
from mimreg.analysis.patch_pca import plot_patch_pca
from mimreg.analysis.reconstruction import plot_reconstructions
from mimreg.analysis.spectrum import effective_rank, plot_spectrum, singular_values
from mimreg.engine.loggers import open_loggers
from mimreg.engine.metrics import read_metrics
from mimreg.engine.rep_monitor import last_values
from mimreg.devices import resolve_device
from mimreg.errors import MimregError
from mimreg.eval import format_table, write_json
from mimreg.io import atomic_write
from mimreg.methods import Method
from mimreg.models import ResNetEncoder
from mimreg.spectra import alpha_req, rankme

PICTURES = ("reconstructions", "attention", "pca", "embeddings", "curves", "spectrum")
VIT_PICTURES = ("attention", "pca")  # read a ViT's attention and patch tokens: skipped, with a note, for a ResNet
DEFAULT_EMBEDDINGS = ("pacmap", "tsne")  # UMAP on request: it adds ~10 s of numba start-up per process
PICTURE_IMAGES = 8  # test images shown in the reconstruction, attention and PCA pictures
SAMPLE_CLASSES, SAMPLE_PER_CLASS = 10, 100  # the embeddings' and DBI's random 10-class sample


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint file (or the folder itself)."""
    path = Path(checkpoint)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def reconstructs(method: Method) -> bool:
    return type(method).predict is not Method.predict


def chosen_embeddings(embeddings) -> tuple[list[str], list[str]]:
    """(to draw, skipped for a missing package): asked-for maps must be installed, default ones may be absent."""
    if embeddings is None:
        return [e for e in DEFAULT_EMBEDDINGS if available(e)], [e for e in DEFAULT_EMBEDDINGS if not available(e)]
    for name in embeddings:
        require(name)
    return list(embeddings), []


class Timer:
    """Seconds spent per picture, in the order they were made."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, make):
        began = time.perf_counter()
        result = make()
        self.seconds[name] = round(time.perf_counter() - began, 3)
        return result


def analyze(checkpoint, *, data=None, data_root=None, test_images=None, device="auto", out_dir=None,
            pictures=PICTURES, embeddings=None, echo=print) -> dict:
    """Write the pictures (PNG, under <run>/analysis/) and analysis.json: effective rank, RankMe,
    alpha-ReQ and spectrum of the cls and mean test features, Davies-Bouldin index of a random
    10-class sample, the representation monitor's last logged values, seconds per picture. `embeddings`: the 2-D maps to draw (default PaCMAP when installed, t-SNE)."""
    unknown = sorted(set(pictures) - set(PICTURES))
    if unknown:
        raise MimregError(f"unknown picture(s) {unknown}; choose from {list(PICTURES)}")
    draw, skipped = chosen_embeddings(embeddings) if "embeddings" in pictures else ([], [])
    device = resolve_device(device)
    model = load_trained(checkpoint)
    model.method.to(device)
    run_dir = Path(out_dir) if out_dir else run_dir_of(checkpoint)
    folder = run_dir / "analysis"
    name = data or model.cfg.data.name
    root = data_root if data is not None or data_root is not None else model.cfg.data.root
    timer = Timer()
    payload = {**model.meta, "checkpoint": str(checkpoint), "data": name, "title": run_title(run_dir, name),
               "pictures": {}}
    payload.update(timer("features", lambda: feature_numbers(model, name, root, test_images)))
    evaluations = read_evaluations(run_dir, model.cfg.data.name)
    payload["linear_top1"] = linear_top1(evaluations)
    payload["monitor_last"] = {k: {"step": step, "value": value} for k, (step, value)
                               in last_values(read_metrics(run_dir / "metrics.jsonl")).items()}
    pictures_of = picture_makers(model, name, root, device, folder, payload, run_dir)
    for picture in pictures:
        if picture == "embeddings":
            for method in draw:
                payload["pictures"][method] = str(timer(method, lambda: pictures_of["embedding"](method)))
        elif picture == "reconstructions" and not reconstructs(model.method):
            continue  # joint-embedding methods predict no pixels
        elif picture == "curves" and not read_metrics(run_dir / "metrics.jsonl"):
            continue  # a checkpoint copied without its run folder has no logged values
        elif picture in VIT_PICTURES and isinstance(model.encoder, ResNetEncoder):
            payload.setdefault("skipped", {})[picture] = f"{model.encoder.arch} has no attention and no patches"
        else:
            payload["pictures"][picture] = str(timer(picture, pictures_of[picture]))
    payload["seconds"] = timer.seconds
    log_pictures(model.cfg, run_dir, payload["pictures"])
    report_to(echo, payload, skipped)  # before writing: a write that fails (disk full) loses no number
    write_json(run_dir / "analysis.json", {k: v for k, v in payload.items() if not k.startswith("_")})
    return payload


def log_pictures(cfg, run_dir: Path, pictures: dict[str, str]) -> None:
    """The pictures to the run's loggers of train.loggers (its W&B / MLflow run continued)."""
    for logger in open_loggers(cfg.train.loggers_in_force(), run_dir, wandb_mode=cfg.train.wandb_mode):
        for name, path in pictures.items():
            logger.log_image(f"analysis/{name}", Path(path))
        logger.close()


def run_title(run_dir: Path, data: str) -> str:
    """What the pictures call a run: its folder and the data they show ("tin-mae (tiny-imagenet)"),
    not its preset's recipe, which many runs on other data share."""
    return f"{Path(run_dir).resolve().name} ({data})"


def feature_numbers(model: TrainedModel, name, root, test_images) -> dict:
    """Effective rank, RankMe, alpha-ReQ + singular values of the test features, DBI of the 10-class sample."""
    img_size = model.cfg.img_size
    labels = load_test_labels(name, root, model.cfg.data.hf_columns())
    count = len(labels) if test_images is None else min(test_images, len(labels))
    every = np.sort(np.random.default_rng(model.cfg.train.seed).choice(len(labels), count, replace=False))
    sample = class_sample(labels, SAMPLE_CLASSES, SAMPLE_PER_CLASS, seed=0)  # the same images for every run
    union = np.union1d(every, sample)  # each image encoded once (on small test splits the two coincide)
    features, union_labels, class_names, kept = sample_features(model.encoder, name, root, img_size, union,
                                                                  columns=model.cfg.data.hf_columns())
    rows = {"every": torch.from_numpy(np.isin(kept, every)), "sample": torch.from_numpy(np.isin(kept, sample))}
    spectra = {pool: singular_values(x[rows["every"]]) for pool, x in features.items()}
    chosen = {pool: x[rows["sample"]] for pool, x in features.items()}
    chosen_labels = union_labels[rows["sample"]]
    alphas = {pool: alpha_req(x[rows["every"]]) for pool, x in features.items()}
    return {"effective_rank": {p: effective_rank(s, center=False) for p, s in spectra.items()},
            "rankme": {pool: rankme(x[rows["every"]]) for pool, x in features.items()},
            "alpha_req": {p: None if math.isnan(a) else a for p, a in alphas.items()},  # NaN: too few ranks
            "singular_values": {p: s.tolist() for p, s in spectra.items()},
            "davies_bouldin": {p: davies_bouldin(x, chosen_labels) if len(chosen_labels.unique()) > 1 else None
                               for p, x in chosen.items()},
            "sample": {"images": int(rows["sample"].sum()), "classes": [class_names[c] for c in np.unique(chosen_labels)],
                       "seed": 0},
            "_sample": (chosen["cls"], chosen_labels, class_names), "_spectra": spectra}


def picture_makers(model: TrainedModel, name, root, device, folder: Path, payload: dict, run_dir: Path) -> dict:
    """name -> a function that draws that picture and returns its path."""
    recipe = payload["title"]
    shown = load_test_images(name, root, model.cfg.img_size, count=PICTURE_IMAGES, seed=0,
                             columns=model.cfg.data.hf_columns())
    shown.images = shown.images.to(device)
    features, labels, class_names = payload["_sample"]

    def embedding(method: str) -> Path:
        coords = embed_2d(features, method, seed=0)
        # kept for the report's side-by-side panels of several runs
        atomic_write(folder / f"{method}.npz", lambda handle: np.savez(
            handle, coords=coords, labels=labels.numpy(), class_names=np.array(class_names)))
        title = embedding_title(method, payload["davies_bouldin"]["cls"], payload["linear_top1"], recipe)
        return plot_embedding(coords, labels, class_names, folder / f"{method}.png", title)

    return {
        "reconstructions": lambda: plot_reconstructions(model.method, shown, folder / "reconstructions.png",
                                                        title=f"{recipe}: reconstructions (test images)"),
        "attention": lambda: plot_attention(model.encoder, shown, folder / "attention.png",
                                            title=f"{recipe}: cls attention, last block"),
        "pca": lambda: plot_patch_pca(model.encoder, shown, folder / "pca.png", title=f"{recipe}: patch features"),
        "embedding": embedding,
        "curves": lambda: plot_run_curves({recipe: read_metrics(run_dir / "metrics.jsonl")}, folder / "curves.png",
                                          title=f"{recipe}: training curves"),
        "spectrum": lambda: plot_spectrum(
            {f"{pool} (erank {payload['effective_rank'][pool]:.1f})": s for pool, s in payload["_spectra"].items()},
            folder / "spectrum.png", title=f"singular values: {recipe}"),
    }


def report_to(echo, payload: dict, skipped: list[str]) -> None:
    rows = [{"pool": p, "erank": payload["effective_rank"][p], "RankMe": payload["rankme"][p],
             "alpha-ReQ": payload["alpha_req"][p], "DBI": payload["davies_bouldin"][p]} for p in payload["effective_rank"]]
    echo(format_table(rows, ["pool", "erank", "RankMe", "alpha-ReQ", "DBI"]))
    logged = payload["monitor_last"]
    if logged:  # where the representation monitor's curves end (on its held-out batch, not these images)
        echo("last logged during pretraining: " + ", ".join(f"{k} {v['value']:.3g} (step {v['step']})"
                                                             for k, v in logged.items()))
    for picture, path in payload["pictures"].items():
        echo(f"{picture}: {path} ({payload['seconds'][picture]:.1f} s)")
    for method in skipped:
        echo(f"{TITLES[method]} skipped: pip install 'mimreg[viz]' to draw it")
    for picture, why in payload.get("skipped", {}).items():
        echo(f"{picture} skipped: {why}")
