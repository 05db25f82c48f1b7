"""Uniform numbers that are a pure function of (seed, epoch, sample index, stream, slot).

The batched augmentation draws every parameter of sample i in epoch e from here, so a sample's
augmentation does not depend on which batch, process or resumed run produces it. A counter-based
generator (SplitMix64's output function on a counter) gives that for a whole batch in a few numpy
operations; seeding one torch.Generator per sample, as the PIL path does, costs more than the
augmentation itself at 32 px. numpy's uint64 arithmetic wraps modulo 2**64 by definition, so the
bits are the same on every machine.
"""

from __future__ import annotations

import numpy as np

from mimreg.data.seeded import sample_seed

SLOTS_PER_STREAM = 1 << 8  # uniforms one view may draw per sample
STREAMS_PER_SAMPLE = 1 << 8  # views per sample
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def keyed_uniforms(seed: int, epoch: int, indices, stream: int, count: int) -> np.ndarray:
    """(len(indices), count) float64 uniforms in [0, 1) for samples `indices` of `epoch`.

    `stream` separates independent draws of one sample (its views); slots 0..count-1 of a stream
    are fixed positions, so adding a parameter at the end leaves the earlier ones unchanged.
    """
    if not 0 <= stream < STREAMS_PER_SAMPLE or not 0 < count <= SLOTS_PER_STREAM:
        raise ValueError(f"stream must be in [0, {STREAMS_PER_SAMPLE}) and count in [1, {SLOTS_PER_STREAM}]")
    key = np.uint64(sample_seed(seed, epoch, 0))
    index = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)
    slot = np.arange(count, dtype=np.uint64).reshape(1, -1)
    counter = (index * np.uint64(STREAMS_PER_SAMPLE) + np.uint64(stream)) * np.uint64(SLOTS_PER_STREAM) + slot
    bits = _mix(key + (counter + np.uint64(1)) * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
