"""The one place that says which settings a resume may change, for every task the engine runs.

Keys are compared by their last part (`optim.lr` and `finetune.lr` are both `lr`):
- NO_EFFECT: change no number of the run (where it runs, how often it logs or saves, when it halts);
- ON_PURPOSE: change the run from the resumed step on, as a user continuing a diverged or a too
  short run wants (a lower lr, clipping, more epochs); said when it happens and recorded as a
  `resume` record in metrics.jsonl;
- `accum_steps` only together with a change of the number of processes that keeps the global
  batch (batch x accum x processes), so that steps, epochs and the lr schedule stay the same.
Anything else is refused, naming the keys.
"""

from __future__ import annotations

from mimreg.errors import ConfigError

NO_EFFECT = frozenset({"halt_after_steps", "progress", "device", "strategy", "grad_checkpointing", "log_every",
                       "ckpt_every_steps", "keep_last", "num_workers", "tensorboard", "loggers", "wandb_mode", "eval_every", "dist_timeout_s",
                       "rep_monitor_every"})
ON_PURPOSE = frozenset({"lr", "blr", "min_lr", "clip_grad", "epochs"})


def flatten(record, prefix: str = "") -> dict:
    """{"optim": {"lr": 1}, "regularizers": [{"weight": 2}]} -> {"optim.lr": 1, "regularizers.0.weight": 2}."""
    if isinstance(record, list) and record and all(isinstance(v, dict) for v in record):
        record = dict(enumerate(record))
    if not (isinstance(record, dict) and record):
        return {prefix.rstrip("."): record}
    out = {}
    for key, value in record.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def changes_no_number(key: str) -> bool:
    """Whether a change of the dotted `key` changes no number of a run (where it runs, how it logs)."""
    return _leaf(key) in NO_EFFECT


def differing_keys(a: dict, b: dict) -> dict[str, list]:
    """Dotted key -> [value in a, value in b] for every leaf where the two records differ."""
    before, after = flatten(a), flatten(b)
    return {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}


def resume_changes(saved: dict, now: dict, *, saved_world: int, world: int) -> dict[str, list]:
    """The on-purpose changes (key -> [before, now]) of resuming the run of `saved` (its record, written
    by `saved_world` processes) with `now` on `world` processes; a ConfigError for any other change."""
    after = flatten(now)
    changed = differing_keys(saved, now)
    allowed = NO_EFFECT | ON_PURPOSE | ({"accum_steps"} if world != saved_world else set())
    refused = [k for k in changed if _leaf(k) not in allowed]
    if refused:
        raise ConfigError(f"--resume with settings that differ from the run's own in {refused}; a resume may change "
                          f"only {sorted(ON_PURPOSE)} (the run goes on with them) and {sorted(NO_EFFECT)}; resume "
                          "with the same settings, or start a new run with --out NEW_FOLDER")
    if world != saved_world:
        _check_global_batch(after, changed, saved_world, world)
    return {k: v for k, v in changed.items() if _leaf(k) not in NO_EFFECT}


def _check_global_batch(after: dict, changed: dict, saved_world: int, world: int) -> None:
    batch_key = next(k for k in after if _leaf(k) == "batch_size")
    accum_key = next(k for k in after if _leaf(k) == "accum_steps")
    accum_before = changed.get(accum_key, [after[accum_key]])[0]
    was = after[batch_key] * accum_before * saved_world
    now = after[batch_key] * after[accum_key] * world
    if was != now:
        keep = f" or keep it with --set {accum_key}={was // (after[batch_key] * world)}" \
            if was % (after[batch_key] * world) == 0 else ""
        raise ConfigError(f"the checkpoint was written by {saved_world} process(es) and this run has {world}: the "
                          f"global batch ({batch_key} x {accum_key} x processes) would change from {was} to {now}, "
                          f"and with it the steps, epochs and lr schedule; resume on {saved_world} process(es){keep}")
