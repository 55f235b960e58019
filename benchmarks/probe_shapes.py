"""The in-process host probe on memory that follows the batch shapes a trial runs.

TensorFlow/CPU keeps memory per batch shape, so some models' peaks follow the sum of the
shapes a trial runs (its batch and partial batch in training, its batch and partial batch
in validation: ``TrainingData.batch_shapes_load``), not the batch alone: an LSTM trial at
600 of 2048 samples peaked 287 MiB above one at 540. Simulated here, no TensorFlow:

    peak(b) = baseline + per_sample * (b + extra * (load(b) - b)) * (1 +- 3% noise)

over 4 dataset sizes x 5 shares of the shape term (``extra``, 0 = memory follows the batch
alone) x 4 limits x 4 noise seeds = 320 cases, each probed as on host RAM (crossing the limit
kills) with the batch-shape bound (``shape_load``) and without it. Prints the kills of each
and the answers with the bound against those without, where both survived.

    python -m benchmarks.probe_shapes
"""

from __future__ import annotations

import random
import statistics
from typing import Any, Callable

import numpy as np

from autobatch.data import ArrayData
from autobatch.probing.strategy import Observation, ProbeStrategy
from benchmarks import _common

MIB = 2**20
BASELINE = 340 * MIB
PER_SAMPLE = 0.3 * MIB
NUM_SAMPLES = (2048, 3000, 5000, 10_000)
SHAPE_SHARES = (0.0, 0.5, 1.0, 2.0, 4.0)
LIMITS_MIB = (900, 1179, 1500, 2500)
SEEDS = range(4)
MARGIN = 0.1


def probe(limit: int, peak_of: Callable[[int], float], num_samples: int,
          shape_load: Callable[[int], int] | None) -> int | None:
    """The answer of a host probe on this curve; None when a trial crossed the limit."""
    strategy = ProbeStrategy(limit_bytes=limit, baseline_bytes=BASELINE, margin=MARGIN,
                             max_batch_size=num_samples, oom_is_catchable=False,
                             shape_load=shape_load)
    history: list[Observation] = []
    while (proposal := strategy.propose(history)) is not None:
        peak = peak_of(proposal.batch_size)
        if peak > limit:
            return None
        history.append(Observation(proposal.batch_size, int(peak)))
    return strategy.answer(history)


def noisy_curve(load: Callable[[int], int], share: float, seed: int) -> Callable[[int], float]:
    """One case's memory curve; a batch measured twice reads the same."""
    rng = random.Random(seed)
    peaks: dict[int, float] = {}

    def peak_of(batch_size: int) -> float:
        if batch_size not in peaks:
            cost = PER_SAMPLE * (batch_size + share * (load(batch_size) - batch_size))
            peaks[batch_size] = BASELINE + cost * (1 + rng.uniform(-0.03, 0.03))
        return peaks[batch_size]

    return peak_of


def evaluate() -> dict[str, Any]:
    kills = {"with": 0, "without": 0}
    ratios = []
    for num_samples in NUM_SAMPLES:
        load = ArrayData(np.zeros((num_samples, 1)), np.zeros(num_samples)).batch_shapes_load
        for share in SHAPE_SHARES:
            for limit_mib in LIMITS_MIB:
                for seed in SEEDS:
                    peak_of = noisy_curve(load, share, seed)
                    bounded = probe(limit_mib * MIB, peak_of, num_samples, load)
                    unbounded = probe(limit_mib * MIB, peak_of, num_samples, None)
                    kills["with"] += bounded is None
                    kills["without"] += unbounded is None
                    if bounded and unbounded:
                        ratios.append(bounded / unbounded)
    cases = len(NUM_SAMPLES) * len(SHAPE_SHARES) * len(LIMITS_MIB) * len(SEEDS)
    return {"cases": cases, "kills_with_bound": kills["with"],
            "kills_without_bound": kills["without"],
            "answer_with_over_without_median": statistics.median(ratios),
            "answer_with_over_without_min": min(ratios)}


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    summary = evaluate()
    print(f"{summary['cases']} cases: killed {summary['kills_with_bound']} times with the "
          f"batch-shape bound, {summary['kills_without_bound']} without; answers with it / "
          f"without (both survived): median {summary['answer_with_over_without_median']:.3f}, "
          f"min {summary['answer_with_over_without_min']:.3f}")
    payload = {**_common.run_metadata("full"), "summary": summary}
    path = _common.write_json(args.results_dir, "probe_shapes", payload)
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
