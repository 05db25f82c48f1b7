"""Every command line of README.md runs as written, in README order, on tiny data and settings.

The lines are read from the README's bash blocks (continuations joined, `for` loops unrolled); a
line runs with its optional parts `[...]` included, the first of each `a|b` choice, its
placeholders (PATH, N, RUN, ...) bound to tiny stand-ins, and tiny sizes appended (few images, one
epoch, small batches), which change no option the line gives. What a line cannot do here is
replaced by the nearest thing that can, and said below: torchrun runs 2 processes on one node, and
`mimreg submit` hands its job to an in-process executor that runs it at once (no SLURM here).
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mimreg.slurm
from mimreg.cli import build_parser, main
from mimreg.config import load_config
from mimreg.regularizers import REGULARIZERS

pytestmark = pytest.mark.usefixtures("single_thread")

README = Path(__file__).resolve().parents[1] / "README.md"
# put before the options of every pretraining (the demo's too), so a --set the line gives wins
TINY_DEMO = ["data.subset=64", "optim.batch_size=16", "model.arch=vit_micro", "train.device=cpu",
             "train.progress=false", "train.log_every=1", "train.knn_bank=32", "train.knn_queries=16",
             "train.rep_monitor_images=32"]
# a pretraining stops after 2 steps with its checkpoint (as if preempted), so the run length, and
# the warm-up and regularizer windows that follow from it, stay the recipe's
TINY_PRETRAIN = [*TINY_DEMO, "train.halt_after_steps=2"]
TINY_EVAL = ["--train-images", "64", "--test-images", "32"]
TINY_FINETUNE = ["--epochs", "1", "--batch-size", "2", "--test-images", "16"]
CLASSES = 10


# ---------------------------------------------------------------- reading the README
def bash_lines() -> list[tuple[int, str]]:
    """(line number, command) of every command in the README's bash blocks."""
    text = README.read_text()
    out, in_block, pending, loop = [], False, None, None
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.startswith("```"):
            in_block = raw.strip() == "```bash"
            continue
        if not in_block:
            continue
        line = re.sub(r"\s+#\s.*$", "", raw).rstrip()  # a trailing comment
        if pending is not None:
            pending = (pending[0], pending[1] + " " + line.strip().removesuffix("\\").strip())
        elif line.strip():
            pending = (number, line.strip().removesuffix("\\").strip())
        else:
            continue
        if line.endswith("\\") or _next_is_synopsis(text, number):
            continue
        number, command = pending
        pending = None
        if match := re.fullmatch(r"for (\w+) in (.+); do", command):
            loop = (match.group(1), match.group(2).split(), [])
        elif command == "done" and loop:
            name, values, body = loop
            out += [(n, c.replace(f"${name}", v)) for v in values for n, c in body]
            loop = None
        elif loop:
            loop[2].append((number, command))
        else:
            out.append((number, command))
    return out


def _next_is_synopsis(text: str, number: int) -> bool:
    """A synopsis goes on in lines that start with spaces and `[`."""
    lines = text.splitlines()
    return number < len(lines) and re.match(r"\s+\[", lines[number]) is not None


def readme_commands() -> list[tuple[int, str]]:
    lines = bash_lines()
    commands = [(n, c) for n, c in lines if c.split()[0] in ("mimreg", "torchrun")]
    # `make demo`/`make test` are the demo line and this suite; benchmarks run for minutes to hours
    # (device_check.sh --smoke runs in tests/test_device_check.py)
    skipped = [c for _, c in lines if c.split()[0] not in ("mimreg", "torchrun", "make")
               and not c.startswith((".venv/bin/python benchmarks/", "bash benchmarks/"))]
    assert not skipped, f"README commands this test does not know how to run: {skipped}"
    return commands


COMMANDS = readme_commands()


# ---------------------------------------------------------------- tiny stand-ins
def write_cifar10(root: Path, per_class: int, test_per_class: int) -> Path:
    """cifar-10-batches-py in the original pickled layout, images of a per-class pattern."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def images(count):
        labels = np.arange(count) % CLASSES
        pixels = rng.integers(0, 60, (count, 3, 32, 32), dtype=np.uint8)
        pixels[np.arange(count), labels % 3, :, :] += np.uint8(150)  # a class colour to learn
        return pixels.reshape(count, -1), labels.tolist()

    data, labels = images(per_class * CLASSES)
    for b in range(5):
        rows = slice(b * len(labels) // 5, (b + 1) * len(labels) // 5)
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump({b"data": data[rows], b"labels": labels[rows]}, f)
    data, labels = images(test_per_class * CLASSES)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{k}".encode() for k in range(CLASSES)]}, f)
    return root


def write_image_folder(root: Path, per_class: int) -> Path:
    """root/{train,test}/<class>/<i>.png, 32x32."""
    rng = np.random.default_rng(1)
    for split, count in (("train", per_class), ("test", max(2, per_class // 2))):
        for k in range(CLASSES):
            (root / split / f"class{k}").mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                pixels[..., k % 3] += np.uint8(150)
                Image.fromarray(pixels).save(root / split / f"class{k}" / f"{i}.png")
    return root


def write_hf_dataset(folder: Path) -> Path:
    """The image folder's images as a Hugging Face dataset saved to disk (columns img, label)."""
    import datasets  # the `datasets` extra, which make install puts in
    images = write_image_folder(folder.parent / "hf-images", per_class=4)
    splits = {}
    for split in ("train", "test"):
        paths = sorted((images / split).glob("*/*.png"))
        splits[split] = datasets.Dataset.from_dict(
            {"img": [Image.open(p) for p in paths], "label": [int(p.parent.name.removeprefix("class")) for p in paths]},
            features=datasets.Features({"img": datasets.Image(),
                                        "label": datasets.ClassLabel(names=[f"class{k}" for k in range(CLASSES)])}))
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def write_shards(folder: Path) -> Path:
    """The image folder's train images as WebDataset shards (<key>.png + <key>.cls), 20 a shard."""
    images = write_image_folder(folder.parent / "shard-images", per_class=4)
    paths = sorted((images / "train").glob("*/*.png"))
    folder.mkdir(parents=True)
    for start in range(0, len(paths), 20):
        with tarfile.open(folder / f"shard-{start // 20:05d}.tar", "w") as tar:
            for i, path in enumerate(paths[start:start + 20], start=start):
                tar.add(path, arcname=f"{i:06d}.png")
                label = io.BytesIO(path.parent.name.removeprefix("class").encode())
                info = tarfile.TarInfo(f"{i:06d}.cls")
                info.size = len(label.getvalue())
                tar.addfile(info, label)
    return folder


def write_readme_files(folder: Path) -> None:
    """The files the README's commands name (my_config.yaml, my_regularizers.py), from its blocks."""
    for language, block in re.findall(r"```(\w+)\n(.*?)```", README.read_text(), flags=re.S):
        first = block.splitlines()[0]
        if language in ("yaml", "python") and re.fullmatch(r"# [\w.]+\.(yaml|py)", first):
            (folder / first.removeprefix("# ")).write_text(block)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The folder the commands run in, with the data and files they name."""
    folder = tmp_path_factory.mktemp("readme")
    write_readme_files(folder)
    data = {"cifar": write_cifar10(folder / "data" / "cifar10", per_class=20, test_per_class=4),
            "images": write_image_folder(folder / "data" / "images", per_class=4),
            "hf": write_hf_dataset(folder / "data" / "hf"),
            "shards": write_shards(folder / "data" / "shards")}
    yield folder, data
    REGULARIZERS.pop("variance_floor", None)
    sys.modules.pop("my_regularizers", None)


# ---------------------------------------------------------------- from a README line to argv
PLACEHOLDERS = {"PATH": "{images}", "N": "1", "RUN": "runs/mu", "RECIPE": "mae", "G": "1", "P": "debug",
                "MINUTES": "10", "DIR": "runs/submitted", "KEY=VALUE": "train.log_every=1", "T": "1",
                "M": "8", "A": "lab", "Q": "normal", "C": "cpu", "DATA": "{images}"}
PATHS = {"~/data/cifar10": "{cifar}", "~/data/my-hf-dataset": "{hf}", "~/data/my-shards": "{shards}",
         "/shared/cifar10": "{cifar}", "/shared/runs/mu": "runs/shared-mu-L{line}",
         "/shared/runs/mu-ft": "runs/shared-mu-ft-L{line}",
         "...": "{cifar}", "PATH": "{images}"}  # data.root=PATH: the image folder


def concrete(command: str, data: dict) -> list[str]:
    """The README line as an argv: optional parts kept, first choices taken, placeholders bound."""
    command = re.sub(r"\[(--[^\[\]]*)\]", r"\1", command)  # [--pool cls --pool mean] -> its content
    words = []
    for word in shlex.split(command):
        if word == "...":
            continue  # "--blocks 2 ..." : and so on
        if "|" in word and not word.startswith("'"):
            word = word.split("|")[0]
        key, _, value = word.partition("=")
        if value in PATHS:
            word = f"{key}={PATHS[value]}"
        word = PATHS.get(word, PLACEHOLDERS.get(word, word))
        for name, value in data.items():
            word = word.replace(f"{{{name}}}", str(value))
        words.append(word)
    unknown = [w for w in words if re.fullmatch(r"[A-Z][A-Z_=]*", w)]
    assert not unknown, f"placeholders this test cannot bind: {unknown} in {command!r}"
    return words


def with_tiny_sizes(argv: list[str]) -> list[str]:
    """argv with tiny sizes that leave every option the line gives in force."""
    if argv[0] == "torchrun":
        start = argv.index("-m") + 1  # torchrun ... -m mimreg.cli <a mimreg command line>
        return (argv[:start + 1]
                + with_tiny_sizes(["mimreg", *argv[start + 1:]])[1:])
    command = argv[1]
    if argv[1:3] == ["submit", "finetune"]:  # its --set keys are fine-tuning settings: the tiny ones last win
        flags = dict(zip(TINY_FINETUNE[::2], TINY_FINETUNE[1::2]))
        return argv + [x for flag, value in flags.items()
                       for x in ("--set", f"{flag.removeprefix('--').replace('-', '_')}={value}")] + [
            "--set", "fraction=0.05"]
    if command in ("pretrain", "submit", "demo", "study"):
        position = 3 if command != "demo" else 2  # after `mimreg pretrain CONFIG`
        # a study's runs end (the study counts a halted run as unfinished), as the demo's
        sets = [x for s in (TINY_DEMO if command in ("demo", "study") else TINY_PRETRAIN) for x in ("--set", s)]
        if command == "demo":
            sets += ["--out", "runs/demo"] if "--out" not in argv else []
        return argv[:position] + sets + argv[position:]
    if argv[1:3] == ["eval", "finetune"]:  # a fine-tuning runs on its dataset's whole train split: 5% of it
        return argv + TINY_FINETUNE + ([] if "--fraction" in argv else ["--fraction", "0.05"])
    if command == "analyze" or argv[2:3] in (["lowshot"], ["robustness"]):  # low-shot draws its shots from all
        return argv + TINY_EVAL[2:]
    if command == "eval":
        return argv + TINY_EVAL
    return argv


# ---------------------------------------------------------------- running them
class RunAtOnce:
    """A submitit executor stand-in: `submit(job)` runs the job's training here, now (what each task
    runs, without submitit's transport and environment)."""

    def __init__(self, folder: Path):
        self.folder = folder

    cluster = "slurm"

    def submit(self, job):
        return FinishedJob(self.folder, job.train())

    def submit_array(self, jobs):
        return [self.submit(job) for job in jobs]

    def update_parameters(self, **kwargs):
        pass


class FinishedJob:
    job_id = "local-0"

    def __init__(self, folder: Path, result: dict):
        self.paths = type("Paths", (), {"folder": folder})
        self._result = result

    def results(self) -> list[dict]:
        return [self._result]

    def result(self) -> dict:
        return self._result


def run_readme_line(argv: list[str], folder: Path, monkeypatch, capsys, torchrun) -> str:
    """Run the line; what it printed on stdout."""
    if argv[0] == "torchrun":
        return torchrun(argv[argv.index("-m"):], cwd=folder).stdout  # conftest's: 2 processes here, one thread each
    monkeypatch.setattr(mimreg.slurm, "build_executor", lambda log, res, cluster, name: RunAtOnce(log))
    code = main(argv[1:])
    printed = capsys.readouterr()
    assert code == 0, f"{shlex.join(argv)} exited {code}: {printed.err[-2000:]}"
    return printed.out


def file_times(folder: Path) -> dict[Path, int]:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def written_since(folder: Path, before: dict[Path, int]) -> list[str]:
    """The files (relative paths) created or rewritten since `before`."""
    return sorted(str(p) for p, t in file_times(folder).items() if before.get(p) != t)


def option(argv: list[str], name: str, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


# ---------------------------------------------------------------- what each line must print or write
def check_what_it_did(argv: list[str], folder: Path, printed: str, written: list[str]) -> None:
    """Each command's own evidence of its work: what it prints and the files it writes."""
    if argv[0] == "torchrun":
        argv = ["mimreg", *argv[argv.index("-m") + 2:]]
    command = argv[1]
    if argv[1:3] == ["recipes", "--papers"]:
        assert printed.startswith("| paper | table | row | command |") and "magma-in100-vitb16/m-mae" in printed
    elif command == "recipes":
        assert "recipes (" in printed and "\n  u-mae " in printed and "regularizers:\n" in printed, printed
        assert "\n  magma " in printed
    elif command in ("pretrain", "submit"):
        if command == "submit":
            assert "submitted job local-0: " in printed, printed
        stopped = re.search(r"(?:halted at step \d+ \(train.halt_after_steps\)|done: \d+ steps); checkpoint (\S+)",
                            printed.replace(" with checkpoint ", "; checkpoint "))
        assert stopped or command == "submit", printed
        assert any(re.search(r"checkpoints/ckpt_\d+\.pt$", f) for f in written), written
        assert any(f.endswith("metrics.jsonl") for f in written), written
    elif command == "eval":
        check_evaluation(argv, printed, written)
    elif command == "results":
        for run in argv[2:]:
            if not run.startswith("--") and run not in ("markdown", "csv", "json"):
                assert Path(run).name in printed, (run, printed)
        assert "linear" in printed or "knn" in printed, printed  # the columns of the evaluations before it
    elif command == "seeds-needed":
        check_seeds_needed(argv, printed)
    elif command == "analyze":
        shown = dict(re.findall(r"^(\w+): (\S+\.png) \(", printed, flags=re.M))
        asked = option(argv, "--pictures")
        assert shown and (asked is None or sorted(shown) == sorted(asked.split(","))), printed
        for path in shown.values():
            assert (folder / path).read_bytes()[:4] == b"\x89PNG" and any(path.endswith(f) for f in written)
        assert "erank" in printed and "DBI" in printed, printed
    elif command == "report":
        out = option(argv, "--out")
        assert f"report: {out}" in printed and out in written, printed
        page = (folder / out).read_text()
        assert all(Path(run).name in page for run in argv[2:argv.index("--out")])
    elif command == "export" and option(argv, "--format") == "hf":
        out = option(argv, "--out")
        assert printed.startswith(f"wrote {out} (model.safetensors") and f"{out}/model.safetensors" in written, printed
        from safetensors.torch import load_file

        weights = load_file(str(folder / out / "model.safetensors"))
        config = json.loads((folder / out / "config.json").read_text())
        assert "cls_token" in weights and config["num_classes"] == (weights["head.weight"].shape[0]
                                                                    if "head.weight" in weights else 0), config
        assert "## Evaluations" in (folder / out / "README.md").read_text()
    elif command == "export":
        out = option(argv, "--out")
        assert printed.startswith(f"wrote {out}; load it with") and out in written, printed
        weights = torch.load(folder / out, weights_only=True)
        assert "cls_token" in weights and "blocks.0.attn.qkv.weight" in weights, sorted(weights)[:5]
    elif command == "demo":
        page = re.search(r"^report: (\S+) \(total", printed, flags=re.M)
        assert page and page.group(1) in written, printed
        recipes = option(argv, "--recipes", "mae,u-mae,m-mae,mu-mae").split(",")
        assert all(f"== {r}: " in printed for r in recipes), printed
    elif command == "study":
        check_study(argv, printed, written)
    else:
        raise AssertionError(f"no check of what `{command}` prints or writes: add one")


def check_study(argv: list[str], printed: str, written: list[str]) -> None:
    """A dry run prints its estimate and writes nothing; a run trains and evaluates every point."""
    if "--dry-run" in argv:
        assert "estimated pretraining time: " in printed and not written, printed
        return
    assert re.search(r"^\d+ runs \(", printed, flags=re.M), printed
    if "nothing to do: every run and evaluation is finished" not in printed:
        assert "study: 6 done" in printed, printed
        out = option(argv, "--out")
        assert sum(f.startswith(f"{out}/runs/") and f.endswith("/evals/erank_digits_mean.json") for f in written) == 6


def check_seeds_needed(argv: list[str], printed: str) -> None:
    """One row per difference asked, with seeds_needed's count; the README shows what it prints."""
    from mimreg.eval.statistics import seeds_needed

    asked = argv[argv.index("--difference") + 1:]
    asked = [float(d) for d in asked[:next((i for i, a in enumerate(asked) if a.startswith("--")), len(asked))]]
    rows = [(float(d), int(n)) for d, n in re.findall(r"^\|\s+([\d.]+) \|\s+(\d+) \|$", printed, flags=re.M)]
    spread, paired = float(option(argv, "--spread")), "--paired" in argv
    assert rows == [(d, seeds_needed(d, spread, paired)) for d in asked], printed
    assert printed.strip() in README.read_text(), printed


EVAL_PRINTS = {"linear": "linear top1", "knn": "knn20 cosine", "lowshot": "lowshot", "robustness": "mask ratio",
               "finetune": "fine-tuned: top-1"}


def check_evaluation(argv: list[str], printed: str, written: list[str]) -> None:
    """An evaluation prints its table and writes one RUN/evals/<protocol>...json per pool."""
    protocol = argv[2]
    assert EVAL_PRINTS[protocol] in printed, printed
    results = [f for f in written if re.search(rf"evals/{protocol}[-_][^/]*\.json$", f)]
    pools = len(dict.fromkeys(argv[i + 1] for i, a in enumerate(argv) if a == "--pool")) or 1
    assert len(results) == (1 if protocol in ("robustness", "finetune") else pools), written


def prepare_missing_runs(argv: list[str], folder: Path) -> None:
    """A run a line reads (`runs/mae`) that no earlier line made: pretrain its recipe, tiny."""
    reads = argv[2:] if argv[1] in ("results", "report") else []
    if "--checkpoint" in argv:
        reads.append(argv[argv.index("--checkpoint") + 1])
    for path in reads:
        if path.startswith("runs/") and not (folder / path).exists():
            recipe = path.removeprefix("runs/")
            assert main(["pretrain", recipe, "--out", path, *(x for s in TINY_PRETRAIN for x in ("--set", s))]) == 0


def set_aside_default_folder(argv: list[str], folder: Path, number: int) -> None:
    """The README's pretrain lines are separate examples: one that writes the default folder
    (runs/<recipe>) another line wrote already starts on its own (the other's run is kept aside)."""
    if argv[1] != "pretrain" or "--out" in argv or "--resume" in argv:
        return
    args = build_parser().parse_args(argv[1:])
    recipe = load_config(args.config, args.overrides).recipe  # as cmd_pretrain names its folder
    default = folder / "runs" / recipe.replace("/", "-")
    if default.exists():
        default.rename(default.with_name(f"{default.name}.before-L{number}"))


def test_the_readme_has_the_commands_this_test_knows():
    verbs = {shlex.split(c)[1] if c.startswith("mimreg") else "torchrun" for _, c in COMMANDS}
    assert {"pretrain", "eval", "results", "analyze", "report", "export", "demo", "submit", "torchrun", "study"} <= verbs
    assert len(COMMANDS) >= 20


def slow_if_study(number: int, command: str):
    """The study example trains and evaluates 6 runs (~130 s), and the lines after it read its folder;
    the several-machines torchrun repeats the one-machine one's run: in `make test-slow`."""
    if command.split()[1] == "study" or "studies/s" in command or "--nnodes" in command:
        return pytest.param(number, command, marks=pytest.mark.slow)
    return number, command


@pytest.mark.parametrize("number,command", [slow_if_study(n, c) for n, c in COMMANDS],
                         ids=[f"L{n}-{c.split()[1]}" for n, c in COMMANDS])
def test_readme_command_runs(number, command, workspace, monkeypatch, capsys, torchrun):
    folder, data = workspace
    monkeypatch.chdir(folder)
    argv = with_tiny_sizes(concrete(command, {**data, "line": number}))
    prepare_missing_runs(argv, folder)
    set_aside_default_folder(argv, folder, number)
    capsys.readouterr()  # what the preparation printed
    before = file_times(folder)
    printed = run_readme_line(argv, folder, monkeypatch, capsys, torchrun)
    check_what_it_did(argv, folder, printed, written_since(folder, before))
    if argv[1] == "pretrain" and "--out" in argv:
        out = folder / argv[argv.index("--out") + 1]
        assert any(json.loads(line)["kind"] == "train" for line in (out / "metrics.jsonl").read_text().splitlines())
