"""The frozen-feature evaluation commands: embed a checkpoint's train/test splits, run the
protocols, write one result file per (protocol, variant, dataset, pool, options)."""

from __future__ import annotations

from pathlib import Path

import torch

from mimreg.spectra import effective_rank, singular_values
from mimreg.errors import MimregError
from mimreg.devices import resolve_device
from mimreg.eval.feature_store import STORE_ABOVE
from mimreg.eval.frozen import Split, embed_split, load_encoder
from mimreg.eval.knn import knn_protocols
from mimreg.eval.linear import DEFAULT_EPOCHS, linear_probe
from mimreg.eval.lowshot import lowshot_logistic
from mimreg.eval.report import format_table
from mimreg.eval.results import save_head, save_result

PROTOCOLS = ("linear", "knn", "erank", "lowshot")
DEFAULT_LINEAR_EPOCHS = DEFAULT_EPOCHS["sweep"]


def run_dir_of(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def embed_train_test(checkpoint, *, data=None, data_root=None, pools=("cls",), train_images=None,
                     test_images=None, device="auto", need_train=True, skip_bad_images=False, subset=None,
                     feature_store=None) -> tuple[dict, Split | None, Split]:
    """Meta (checkpoint, step, epoch, recipe, latest, data, image counts) and the features of the
    eval-transformed train (when needed; only the `subset`'s images when given) and test splits.
    Features go to disk, in `feature_store` when given, else in RUN/features for a split of more
    than STORE_ABOVE images (see eval/feature_store.py); smaller splits stay in memory."""
    encoder, cfg, meta = load_encoder(checkpoint)
    name = data or cfg.data.name
    root = data_root if data is not None or data_root is not None else cfg.data.root
    common = dict(img_size=cfg.img_size, pools=tuple(pools), device=resolve_device(device), seed=cfg.train.seed,
                  skip_bad_images=skip_bad_images, store=Path(feature_store or Path(run_dir_of(checkpoint), "features")),
                  store_above=0 if feature_store else STORE_ABOVE, columns=cfg.data.hf_columns())
    train = (embed_split(encoder, name, "train", root, max_images=train_images, subset=subset, **common)
             if need_train else None)
    test = embed_split(encoder, name, "test", root, max_images=test_images, **common)
    meta = {**meta, "checkpoint": str(checkpoint), "data": name, "train_images": len(train.labels) if train else 0,
            "test_images": len(test.labels)}
    return meta, train, test


def _one(protocol: str, pool: str, train: Split | None, test: Split, *, linear_protocol: str,
         linear_epochs: int | None, device: torch.device, subset: str | None = None) -> dict:
    if protocol == "linear":
        return linear_probe(train.features[pool], train.labels, test.features[pool], test.labels,
                            protocol=linear_protocol, epochs=linear_epochs, device=device, stream=train.on_disk,
                            keep_head=True)
    if protocol == "knn":
        return knn_protocols(train.features[pool], train.labels, test.features[pool], test.labels, device=device)
    if protocol == "lowshot" and subset is not None:
        # MSN's logistic_eval with a subset file: one fit on every image the list names.
        fit = lowshot_logistic(train.features[pool], train.labels, test.features[pool], test.labels, shots=(),
                               fractions=(1.0,), seeds=(0,))
        return {"subset": fit["100pct"]}
    if protocol == "lowshot":
        return lowshot_logistic(train.features[pool], train.labels, test.features[pool], test.labels)
    spectrum = singular_values(test.features[pool])
    return {"effective_rank": effective_rank(spectrum, center=False), "dim": int(test.features[pool].shape[1]),
            "singular_values": spectrum.tolist()}


def evaluate(checkpoint, protocols=("linear", "knn"), *, data=None, data_root=None, pools=("cls",),
             train_images=None, test_images=None, linear_protocol="sweep", linear_epochs=None,
             device="auto", out_dir=None, skip_bad_images=False, subset=None, feature_store=None, echo=print) -> dict:
    """Run the protocols on frozen features; write RUN/evals/<protocol>[-variant]_<data>_<pool>[...].json
    each. `linear_epochs`: default the linear protocol's (DEFAULT_EPOCHS); `subset`, `feature_store`:
    see embed_train_test. Returns meta, results (protocol -> pool -> result) and the files written."""
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise MimregError(f"unknown evaluation {sorted(unknown)}; choose from {list(PROTOCOLS)}")
    dev = resolve_device(device)
    meta, train, test = embed_train_test(checkpoint, data=data, data_root=data_root, pools=pools,
                                         train_images=train_images, test_images=test_images, device=dev,
                                         need_train=any(p != "erank" for p in protocols),
                                         skip_bad_images=skip_bad_images, subset=subset,
                                         feature_store=feature_store)
    out_dir = Path(out_dir) if out_dir else run_dir_of(checkpoint)
    results = {protocol: {pool: _one(protocol, pool, train, test, linear_protocol=linear_protocol,
                                     linear_epochs=linear_epochs, device=dev, subset=subset) for pool in pools}
               for protocol in protocols}
    heads = {pool: result.pop("head") for pool, result in results.get("linear", {}).items()}
    rows = [{"pool": pool, **summary_row(results, pool)} for pool in pools]
    echo(format_table(rows, list(rows[0])))  # before writing: a write that fails (disk full) loses no result
    files = []
    for protocol in protocols:
        variant = linear_protocol if protocol == "linear" else None
        options = {"train": train_images if protocol != "erank" else None, "test": test_images,
                   "subset": Path(subset).stem if subset and protocol != "erank" else None}
        if protocol == "linear" and linear_epochs not in (None, DEFAULT_EPOCHS[linear_protocol]):
            options["epochs"] = linear_epochs
        for pool, result in results[protocol].items():
            files.append(save_result(out_dir, meta, protocol=protocol, variant=variant, pool=pool, options=options,
                                     result=result))
            if protocol == "linear":  # for `mimreg export --format hf`, which folds it into timm's head
                save_head(files[-1], heads[pool])
    return {**{k: v for k, v in meta.items() if k != "latest"}, "results": results, "files": [str(f) for f in files]}


def summary_row(results: dict, pool: str) -> dict:
    row = {}
    if "linear" in results:
        row["linear top1"] = results["linear"][pool]["top1"]
        if "train_top1" in results["linear"][pool]:
            row["linear train top1"] = results["linear"][pool]["train_top1"]
    if "knn" in results:
        row["knn10 euclid"] = results["knn"][pool]["knn10_euclidean"]
        row["knn20 weighted"] = results["knn"][pool]["knn20_euclidean_weighted"]
        row["knn20 cosine"] = results["knn"][pool]["knn20_cosine"]
    if "lowshot" in results:
        row.update({f"lowshot {k}": v["mean"] for k, v in results["lowshot"][pool].items()})
    if "erank" in results:
        row["erank"] = results["erank"][pool]["effective_rank"]
    return row


def robustness(checkpoint, *, ratios=(0.15, 0.3, 0.5, 0.7, 0.9), train_mask_ratio=0.7, data=None, data_root=None,
               pool="cls", train_images=None, test_images=None, device="auto", out_dir=None, skip_bad_images=False,
               echo=print) -> dict:
    """MSN's masking robustness: cosine similarity of the features of masked and unmasked test
    images per mask ratio, and low-shot accuracy with masked training / unmasked test images."""
    encoder, cfg, meta = load_encoder(checkpoint)
    name = data or cfg.data.name
    root = data_root if data is not None or data_root is not None else cfg.data.root
    common = dict(img_size=cfg.img_size, pools=(pool,), device=resolve_device(device), seed=cfg.train.seed,
                  skip_bad_images=skip_bad_images, columns=cfg.data.hf_columns())
    clean = embed_split(encoder, name, "test", root, max_images=test_images, **common)
    similarity = {}
    for ratio in ratios:
        masked = embed_split(encoder, name, "test", root, max_images=test_images, mask_ratio=ratio, **common)
        cos = torch.nn.functional.cosine_similarity(masked.features[pool], clean.features[pool], dim=1)
        similarity[str(ratio)] = {"mean": float(cos.mean()), "std": float(cos.std()) if len(cos) > 1 else 0.0}
    train = embed_split(encoder, name, "train", root, max_images=train_images, mask_ratio=train_mask_ratio, **common)
    lowshot = lowshot_logistic(train.features[pool], train.labels, clean.features[pool], clean.labels)
    out_dir = Path(out_dir) if out_dir else run_dir_of(checkpoint)
    result = {"cosine_similarity": similarity, "train_mask_ratio": train_mask_ratio, "lowshot_masked_train": lowshot}
    meta = {**meta, "checkpoint": str(checkpoint), "data": name, "train_images": len(train.labels),
            "test_images": len(clean.labels)}
    echo(format_table([{"mask ratio": r, "cosine": v["mean"]} for r, v in similarity.items()], ["mask ratio", "cosine"]))
    echo(format_table([{"split": k, "top1": v["mean"]} for k, v in lowshot.items()], ["split", "top1"]))
    path = save_result(out_dir, meta, protocol="robustness", variant=None, pool=pool,
                       options={"train": train_images, "test": test_images}, result=result)
    return {**{k: v for k, v in meta.items() if k != "latest"}, **result, "file": str(path)}
