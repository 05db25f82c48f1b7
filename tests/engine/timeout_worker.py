"""Run by tests/engine/test_distributed.py under torchrun: rank 1 never reaches the collective that
rank 0 waits in (it sleeps, as a hung process would); rank 0 must give up after the process group's
timeout and name rank 1. Rank 0 writes what it said and how long it waited to FOLDER/rank0.json."""

import json
import sys
import time
from pathlib import Path

import torch


def main(out_dir: str, timeout_s: float) -> None:
    from mimreg import distributed as dist
    from mimreg.errors import MimregError

    dist.init_from_env("cpu", timeout_s=timeout_s)
    dist.barrier()  # both processes are up: what follows times only the hang
    if dist.rank() == 1:
        time.sleep(120)  # hung: the test ends it long before
        return
    began = time.monotonic()
    try:
        dist.all_reduce_mean(torch.ones(2))
        message = None
    except MimregError as err:
        message = str(err)
    record = {"message": message, "waited_s": time.monotonic() - began}
    (Path(out_dir) / "rank0.json").write_text(json.dumps(record))
    sys.exit(2)  # as the CLI does on an error; torchrun then ends rank 1


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
