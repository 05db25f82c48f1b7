"""What the CLI commands do, as plain functions: evaluate, analyze, export."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mimreg.analysis import effective_rank, singular_values
from mimreg.analysis.analyze import analyze  # noqa: F401  (mimreg analyze; lives with its pictures)
from mimreg.errors import MimregError
from mimreg.eval import format_table, knn_protocols, linear_probe, lowshot_logistic, write_json
from mimreg.eval.frozen import Split, embed_split, load_encoder

PROTOCOLS = ("linear", "knn", "erank", "lowshot")


def run_dir_of(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def embed_train_test(checkpoint, *, data=None, data_root=None, pools=("cls",), train_images=None,
                     test_images=None, device="cpu", need_train=True) -> tuple[dict, Split | None, Split]:
    encoder, cfg, meta = load_encoder(checkpoint)
    name = data or cfg.data.name
    root = data_root if data is not None or data_root is not None else cfg.data.root
    common = dict(img_size=cfg.img_size, pools=tuple(pools), device=device, seed=cfg.train.seed)
    train = embed_split(encoder, name, "train", root, max_images=train_images, **common) if need_train else None
    test = embed_split(encoder, name, "test", root, max_images=test_images, **common)
    meta = {**meta, "checkpoint": str(checkpoint), "data": name, "train_images": len(train.labels) if train else 0,
            "test_images": len(test.labels)}
    return meta, train, test


def evaluate(checkpoint, protocols=("linear", "knn"), *, data=None, data_root=None, pools=("cls",),
             train_images=None, test_images=None, linear_protocol="magma", linear_epochs=100, device="cpu",
             out_dir=None, echo=print) -> dict:
    """Run the evaluation protocols on frozen features; write eval_<protocol>.json per protocol."""
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise MimregError(f"unknown evaluation {sorted(unknown)}; choose from {list(PROTOCOLS)}")
    meta, train, test = embed_train_test(checkpoint, data=data, data_root=data_root, pools=pools,
                                         train_images=train_images, test_images=test_images, device=device,
                                         need_train=any(p != "erank" for p in protocols))
    out_dir = Path(out_dir) if out_dir else run_dir_of(checkpoint)
    results: dict[str, dict] = {}
    for protocol in protocols:
        per_pool = {}
        for pool in pools:
            if protocol == "linear":
                per_pool[pool] = linear_probe(train.features[pool], train.labels, test.features[pool], test.labels,
                                              protocol=linear_protocol, epochs=linear_epochs, device=device)
            elif protocol == "knn":
                per_pool[pool] = knn_protocols(train.features[pool], train.labels, test.features[pool], test.labels)
            elif protocol == "lowshot":
                per_pool[pool] = lowshot_logistic(train.features[pool], train.labels, test.features[pool],
                                                  test.labels)
            else:
                spectrum = singular_values(test.features[pool])
                per_pool[pool] = {"effective_rank": effective_rank(spectrum, center=False),
                                  "dim": int(test.features[pool].shape[1]), "singular_values": spectrum.tolist()}
        results[protocol] = per_pool
        write_json(out_dir / f"eval_{protocol}.json", {**meta, "protocol": protocol, "results": per_pool})
    rows = [{"pool": pool, **summary_row(results, pool)} for pool in pools]
    echo(format_table(rows, list(rows[0])))
    return {**meta, "results": results}


def summary_row(results: dict, pool: str) -> dict:
    row = {}
    if "linear" in results:
        row["linear top1"] = results["linear"][pool]["top1"]
    if "knn" in results:
        row["knn10 euclid"] = results["knn"][pool]["knn10_euclidean"]
        row["knn20 cosine"] = results["knn"][pool]["knn20_cosine"]
    if "lowshot" in results:
        row.update({f"lowshot {k}": v["mean"] for k, v in results["lowshot"][pool].items()})
    if "erank" in results:
        row["erank"] = results["erank"][pool]["effective_rank"]
    return row


def robustness(checkpoint, *, ratios=(0.15, 0.3, 0.5, 0.7, 0.9), train_mask_ratio=0.7, data=None, data_root=None,
               train_images=None, test_images=None, device="cpu", out_dir=None, echo=print) -> dict:
    """MSN's masking robustness: cosine similarity of the cls features of masked and unmasked test
    images per mask ratio, and low-shot accuracy with masked training / unmasked test images."""
    encoder, cfg, meta = load_encoder(checkpoint)
    name = data or cfg.data.name
    root = data_root if data is not None or data_root is not None else cfg.data.root
    common = dict(img_size=cfg.img_size, pools=("cls",), device=device, seed=cfg.train.seed)
    clean = embed_split(encoder, name, "test", root, max_images=test_images, **common)
    similarity = {}
    for ratio in ratios:
        masked = embed_split(encoder, name, "test", root, max_images=test_images, mask_ratio=ratio, **common)
        cos = torch.nn.functional.cosine_similarity(masked.features["cls"], clean.features["cls"], dim=1)
        similarity[str(ratio)] = {"mean": float(cos.mean()), "std": float(cos.std()) if len(cos) > 1 else 0.0}
    train = embed_split(encoder, name, "train", root, max_images=train_images, mask_ratio=train_mask_ratio, **common)
    lowshot = lowshot_logistic(train.features["cls"], train.labels, clean.features["cls"], clean.labels)
    out_dir = Path(out_dir) if out_dir else run_dir_of(checkpoint)
    payload = {**meta, "checkpoint": str(checkpoint), "data": name, "cosine_similarity": similarity,
               "train_mask_ratio": train_mask_ratio, "lowshot_masked_train": lowshot}
    write_json(out_dir / "eval_robustness.json", payload)
    echo(format_table([{"mask ratio": r, "cosine": v["mean"]} for r, v in similarity.items()], ["mask ratio", "cosine"]))
    echo(format_table([{"split": k, "top1": v["mean"]} for k, v in lowshot.items()], ["split", "top1"]))
    return payload


def timm_model_kwargs(encoder) -> dict:
    """Arguments for `timm.create_model('vit_base_patch16_224', **kwargs)` giving our architecture."""
    return {"img_size": encoder.img_size, "patch_size": encoder.patch_size, "embed_dim": encoder.embed_dim,
            "depth": encoder.depth, "num_heads": encoder.num_heads, "num_classes": 0}


def export_timm(checkpoint, out: str | Path) -> dict:
    """Save the encoder as a timm VisionTransformer state dict, plus a JSON of create_model args."""
    encoder, cfg, meta = load_encoder(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(encoder.vit.state_dict(), out)
    kwargs = timm_model_kwargs(encoder)
    info = {"timm_model": "vit_base_patch16_224", "kwargs": kwargs, "recipe": meta["recipe"],
            "usage": f"timm.create_model('vit_base_patch16_224', pretrained=False, "
                     f"{', '.join(f'{k}={v}' for k, v in kwargs.items())}).load_state_dict(torch.load(PATH))"}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return info
