"""The seed papers' table rows that mimreg's recipes reproduce: which command, the paper's number, the
protocol that number used, and the cost of the pretraining (recipes/cost.py). `mimreg recipes
--papers` prints `papers_table()`; the README holds the same table.

A row's `recipe` is PRESET/RECIPE, its `sets` the --set items on top (an ablation's weight, another
backbone), `gpus` the processes the preset's per-GPU batch assumes (global batch = batch x gpus).
Its `evals` are `mimreg eval` protocols (`linear --linear-protocol magma`, `knn`, `lowshot`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

# pretraining images of each dataset (stl10: train + unlabelled), for the cost without the data
TRAIN_IMAGES = {"imagenet": 1_281_167, "imagenet100": 126_689, "stl10": 105_000, "tiny-imagenet": 100_000,
                "cifar10": 50_000, "cifar100": 50_000}


@dataclass(frozen=True)
class PaperRow:
    paper: str
    table: str
    row: str
    recipe: str  # PRESET/RECIPE
    number: str  # as the paper prints it
    evals: tuple[str, ...]  # mimreg eval protocols, in the order of `number`'s values
    setting: str = ""  # what else the protocol fixes (label fraction, transfer target)
    sets: tuple[str, ...] = ()
    gpus: int = 1


# ---------------------------------------------------------------- MAGMA (Dondera et al., WACV 2025)
MAGMA_LIN_KNN = ("linear --linear-protocol magma", "knn")  # §5: SGD lr 0.1 (x0.1 at 60, 80), 100 ep; 10-NN Euclidean
MAGMA_PRESETS = {"C100": "magma-c100-vitt4", "STL10": "magma-stl10-vitt8", "TIN": "magma-tin-vitt8",
                 "IN100": "magma-in100-vitb16"}
# Tab. 1, linear / kNN: method -> one "lin/kNN" per dataset, in MAGMA_PRESETS' order
MAGMA_TAB1 = {"mae": ("38.2/36.6", "66.5/62.0", "17.8/17.7", "58.0/47.5"),
              "m-mae": ("43.3/40.7", "71.0/65.9", "20.9/20.5", "69.0/49.8"),
              "u-mae": ("45.3/45.9", "74.9/72.1", "21.5/19.0", "69.5/56.8"),
              "mu-mae": ("46.4/46.4", "75.6/73.0", "25.2/23.9", "73.4/60.1"),
              "simclr": ("62.8/58.7", "90.4/86.9", "50.9/43.5", "67.8/65.3"),
              "m-simclr": ("63.2/59.4", "90.5/86.9", "51.0/44.6", "68.7/65.6"),
              "vicreg": ("63.6/60.8", "87.4/84.5", "45.2/40.5", "68.4/62.1"),
              "m-vicreg": ("64.7/61.9", "87.4/84.5", "45.8/40.5", "70.4/65.1")}
# Tab. 4 (IN-100 linear): (lambda, e_st, e_dur) -> accuracy; (1, 10, 100) is Tab. 1's M-MAE row
MAGMA_TAB4 = {(0.1, 10, 100): "60.0", (0.01, 10, 100): "54.6", (10, 10, 100): "67.9", (1, 0, 100): "68.2",
              (1, 2, 100): "69.0", (1, 20, 100): "65.5", (1, 50, 100): "62.7", (1, 10, 10): "68.5",
              (1, 10, 50): "68.8", (1, 10, 200): "69.0", (1, 10, 390): "68.5"}
# Tab. 5 (IN-100 linear by backbone; ViT-B is Tab. 1's): method -> (ViT-S, ViT-L)
MAGMA_TAB5 = {"mae": ("46.8", "60.6"), "m-mae": ("61.2", "73.9"), "u-mae": ("57.6", "78.2"),
              "mu-mae": ("62.0", "78.4")}
# Tab. 3 (IN-1k linear on 1/5/10/100% of the labels)
MAGMA_TAB3 = {"mae": "0.5/2.7/4.3/50.5", "m-mae": "1.6/8.8/13.2/51.0", "u-mae": "2.9/15.4/25.6/55.3",
              "mu-mae": "4.9/20.1/29.6/57.4"}


def magma_rows() -> list[PaperRow]:
    rows = [PaperRow("MAGMA", "Tab. 1", f"{method} {data}", f"{preset}/{method}", numbers[i], MAGMA_LIN_KNN)
            for method, numbers in MAGMA_TAB1.items() for i, (data, preset) in enumerate(MAGMA_PRESETS.items())]
    rows += [PaperRow("MAGMA", "Tab. 2", f"{method} IN100 -> C100/STL10/TIN/IN100", f"magma-in100-vitb16/{method}",
                      number, ("linear --linear-protocol magma", "finetune"),
                      "transfer: probe / fine-tune on each target")
             for method, number in (("mae", "31.5/76.9, 67.8/82.2, 27.8/63.1, 58.0/79.8"),
                                    ("m-mae", "51.6/75.6, 84.8/85.5, 43.1/63.1, 69.0/80.6"))]
    rows += [PaperRow("MAGMA", "Tab. 3", f"{method} IN1k", f"magma-in1k-vitb16/{method}", number,
                      ("linear --linear-protocol magma",), "1/5/10/100% of the labels, per class", gpus=8)
             for method, number in MAGMA_TAB3.items()]
    rows += [PaperRow("MAGMA", "Tab. 4", f"m-mae lambda={w:g} e_st={start} e_dur={dur}", "magma-in100-vitb16/m-mae",
                      number, ("linear --linear-protocol magma",),
                      sets=tuple(f"regularizers.magma.{key}={value:g}"
                                 for key, value, default in (("weight", w, 1), ("start_epoch", start, 10),
                                                             ("duration", dur, 100)) if value != default))
             for (w, start, dur), number in MAGMA_TAB4.items()]
    rows += [PaperRow("MAGMA", "Tab. 5", f"{method} {arch}", f"magma-in100-vitb16/{method}", number,
                      ("linear --linear-protocol magma",), sets=(f"model.arch={arch}",))
             for method, numbers in MAGMA_TAB5.items() for arch, number in zip(("vit_small", "vit_large"), numbers)]
    return rows


# ---------------------------------------------------------------- U-MAE (Zhang et al., NeurIPS 2022)
MAE_LIN_FT = ("linear --linear-protocol lars", "finetune")  # MAE's protocols (LARS probe: issue 16 §2)


def umae_rows() -> list[PaperRow]:
    rows = []
    for data, preset, arch, gpus, (mae, umae) in (
            ("C10", "umae-c10-vitt4", "vit_tiny", 8, ("59.6/89.6", "68.9/89.4")),
            ("C10", "umae-c10-vitt4", "vit_base", 8, ("61.7/90.7", "70.2/90.8")),
            ("IN100", "umae-in100-vitb16", "vit_base", 8, ("61.2/86.9", "67.5/86.8")),
            ("IN100", "umae-in100-vitb16", "vit_large", 8, ("64.4/87.3", "72.8/87.3")),
            ("IN1k", "umae-in1k-vitb16", "vit_base", 8, ("55.4/82.9", "58.5/83.0")),
            ("IN1k", "umae-in1k-vitb16", "vit_large", 8, ("62.2/83.3", "65.8/83.2"))):
        preset_arch = "vit_tiny" if data == "C10" else "vit_base"
        sets = () if arch == preset_arch else (f"model.arch={arch}",)
        rows += [PaperRow("U-MAE", "Tab. 1", f"{method} {data} {arch}", f"{preset}/{method}", number, MAE_LIN_FT,
                          sets=sets, gpus=gpus) for method, number in (("mae", mae), ("u-mae", umae))]
    rows += [PaperRow("U-MAE", "Tab. 2", f"{method} IN100", f"umae-in100-vitb16/{method}", number,
                      ("linear --linear-protocol lars",), "batch 128", sets=("optim.batch_size=16",), gpus=8)
             for method, number in (("simmim", "54.3"), ("u-simmim", "61.1"))]
    rows += [PaperRow("U-MAE", "Tab. 3", f"u-mae lambda={w}", "umae-in100-vitb16/u-mae", number,
                      ("linear --linear-protocol lars",), sets=(f"regularizers.uniformity.weight={w}",), gpus=8)
             for w, number in (("0.001", "65.9"), ("0.1", "45.1"), ("1", "47.0"))]
    return rows


# ---------------------------------------------------------------- MSN (Assran et al., ECCV 2022), appendix
def msn_rows() -> list[PaperRow]:
    base, large = ("model.arch=vit_base", "method.mask_ratio=0.3"), \
        ("model.arch=vit_large", "model.patch_size=7", "method.mask_ratio=0.7", "train.epochs=200")
    return [
        PaperRow("MSN", "Tab. 11", "ViT-S/16 Sinkhorn, ME-MAX 1", "msn-in1k-vits16/msn", "66.4", ("lowshot",),
                 "1% of IN-1k labels (official subset), logistic regression", gpus=16),
        PaperRow("MSN", "Tab. 11", "ViT-S/16 no Sinkhorn, ME-MAX 5", "msn-in1k-vits16/msn", "67.2", ("lowshot",),
                 "1% of IN-1k labels", sets=("method.use_sinkhorn=false", "method.memax_weight=5"), gpus=16),
        PaperRow("MSN", "Tab. 12", "ViT-B/16 mask 0.3, 1024 prototypes", "msn-in1k-vits16/msn", "69.5",
                 ("lowshot",), "1% of IN-1k labels; epochs: our choice (ViT-S's 800)", sets=base, gpus=16),
        PaperRow("MSN", "Tab. 10", "ViT-L/7 mask 0.7", "msn-in1k-vits16/msn", "57.1/66.4/72.1", ("lowshot",),
                 "1/2/5 images per class (official subsets), mean of 3", sets=large, gpus=16),
    ]


# ---------------------------------------------------------------- MI-MAE (Huang et al., ICLR 2025)
def mimae_rows() -> list[PaperRow]:
    evals = ("finetune", "linear --linear-protocol lars", "finetune")
    setting = "FT / LIN / FT on 1% of the labels"
    return [
        PaperRow("MI-MAE", "Tab. 1", "MI-MAE ViT-B 200 ep", "mimae-in1k-vitb16/mi-mae", "83.9/67.9/48.2", evals,
                 setting, gpus=8),
        PaperRow("MI-MAE", "Tab. 1", "MI-MAE ViT-B 400 ep", "mimae-in1k-vitb16/mi-mae", "84.1/69.3/52.3", evals,
                 setting, sets=("train.epochs=400",), gpus=8),
        PaperRow("MI-MAE", "Tab. 1", "MI-SimMIM ViT-B 400 ep", "mimae-in1k-vitb16/mi-simmim", "84.1/59.1/49.1",
                 evals, setting + "; the paper's SimMIM backbone may differ", sets=("train.epochs=400",), gpus=8),
        PaperRow("MI-MAE", "Tab. 2", "MI-MAE ViT-S", "mimae-in1k-vitb16/mi-mae", "79.8/53.1", evals[:2],
                 "FT / LIN", sets=("model.arch=vit_small",), gpus=8),
    ]


# ---------------------------------------------------------------- T-REGS (Mordacq et al., NeurIPS 2025), slides
TREGS = {"byol": ("89.5", "63.7", "80.3", "66.5"), "byol+t-regs": ("90.4", "65.7", "80.8", "67.2"),
         "barlow": ("91.2", "68.2", "80.2", "67.7"), "barlow+t-regs": ("91.8", "68.5", "80.9", "67.8"),
         "mse+t-regs": ("91.3", "67.4", "80.3", "68.8")}
TREGS_PRESETS = ("tregs-c10-r18", "tregs-c100-r18", "tregs-in100-r18", "tregs-in1k-r50")
TREGS_IN1K_BATCH = {"byol": 128, "byol+t-regs": 128, "barlow": 256, "barlow+t-regs": 256, "mse+t-regs": 64}  # x 8 GPUs


def tregs_rows() -> list[PaperRow]:
    rows = []
    for method, numbers in TREGS.items():
        for preset, number, table in zip(TREGS_PRESETS, numbers, ("Tab. 1", "Tab. 1", "Tab. 2", "Tab. 3")):
            in1k = preset.endswith("in1k-r50")
            batch = TREGS_IN1K_BATCH[method]
            sets = (f"optim.batch_size={batch}",) if in1k and batch != 128 else ()
            rows.append(PaperRow("T-REGS", table, f"{method} {preset.split('-')[1]}", f"{preset}/{method}", number,
                                 ("linear",), f"global batch {batch * 8}" if in1k else "", sets, 8 if in1k else 1))
    return rows


def paper_rows() -> list[PaperRow]:
    return magma_rows() + umae_rows() + msn_rows() + mimae_rows() + tregs_rows()


# ---------------------------------------------------------------- the table
COLUMNS = ("paper", "table", "row", "command", "GPUs", "paper's number", "protocol", "images seen",
           "GFLOP/img", "GPU-h*")


def row_cells(row: PaperRow) -> list[str]:
    from mimreg.config import load_config
    from mimreg.recipes.cost import gflop_per_image, gpu_hours

    cfg = load_config(row.recipe, list(row.sets), world=row.gpus)
    images = cfg.train.epochs * TRAIN_IMAGES[cfg.data.name]
    gflop = gflop_per_image(cfg)
    command = " ".join([row.recipe, *(f"--set {s}" for s in row.sets)])
    protocol = " + ".join(row.evals) + (f" ({row.setting})" if row.setting else "")
    return [row.paper, row.table, row.row, command, str(row.gpus), row.number, protocol, f"{images / 1e6:.1f}M",
            f"{gflop:.1f}", _hours(gpu_hours(images * gflop))]


def papers_table() -> str:
    """The rows as a Markdown table, with a note on the assumed throughput."""
    from mimreg.recipes.cost import ASSUMED_GPU, ASSUMED_TFLOPS

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(row)) + " |" for row in paper_rows()]
    note = (f"* GPU-hours of pretraining at an ASSUMED {ASSUMED_TFLOPS:g} TFLOP/s sustained per {ASSUMED_GPU} "
            "(18% of its dense bf16 peak: ViT-B/16 MAE at ~3,000 img/s; not measured: no GPU was lent). GFLOP/img: forward + backward of "
            "every view and mask of one image (recipes/cost.py); images seen: epochs x pretraining images.")
    return "\n".join(lines + ["", note])


def _hours(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 10 else f"{hours:.1f}"
