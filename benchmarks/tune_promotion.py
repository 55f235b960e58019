"""Promotion rules for tune's successive halving, replayed on the grid's recorded curves.

Why scores can be replayed: a run continued over several rounds is the same training as one
uninterrupted ``fit`` (see `autobatch.search.candidate`), and early stopping only looks back,
so what a candidate shows after any share of the budget is a prefix of its curve in the
grid's run (``tune_bench`` keeps every trial's ``val_loss_history``). That holds while every
round's share is at least one pass over the data (a share under one epoch is cut inside it,
which the curves cannot show): tasks where it is not are skipped, and said so. Time is
modelled as the run epochs trained times that batch size's measured seconds per run epoch,
plus a fixed cost per run (model build, fit start; ``--overhead``); the grid is modelled the
same way, so its time and each rule's are comparable. Not modelled: a run continues from its
last whole pass, so a round that ends mid-pass trains that part again in the next.

For each task and seed of a tune_bench JSON: each rule's regret against the grid's best
val_loss and its time against the grid's, and a floor no rule can beat: the time of the
cheapest single run within 2% of the grid's best, trained alone to its end (a clairvoyant
that knows the winner and screens nothing).

Rules (each round keeps at most ``ceil(batch sizes / 2**round)`` batch sizes):

- ``improving``: tune's rule (`SuccessiveHalvingOracle`): the best of the batch sizes still
  improving; one that stopped early has its final score and takes no place;
- ``standard``: textbook successive halving: the best overall, a finished one taking a place;
- ``cutoff-T``: ``improving``, without those more than ``T`` times behind the best of the
  round.

Each with tune's rounds (`autobatch.search.tuner.halving_rounds`: 4 for 5-8 batch sizes, the
first on 1/8 of the budget) and with one round more (the first on half that). Seconds; no
TensorFlow.

    python -m benchmarks.tune_promotion                       # results/tune_bench.json
    python -m benchmarks.tune_promotion --input other.json
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from autobatch.search.space import epoch_sizes, epochs_for_samples
from benchmarks import _common

#: A candidate within this share of the grid's best counts as found (tune_bench's goal).
REGRET_GOAL = 0.02


@dataclass
class Curves:
    """One task and seed of the grid: each batch size's candidates, by steps_per_epoch."""

    task: str
    seed: int
    num_samples: int
    budget: int
    candidates: dict[int, dict[int, dict[str, Any]]]
    num_batch_sizes: int
    """Batch sizes of the space, failed ones included (they count in the rounds' sizes)."""

    def rounds(self) -> int:
        """Rounds of tune's halving, as `autobatch.search.tuner.halving_rounds` counts them
        (not imported: that module loads keras-tuner and TensorFlow)."""
        return 1 + math.ceil(math.log2(max(1, self.num_batch_sizes)))

    def seconds_per_run_epoch(self, batch_size: int) -> float:
        runs = self.candidates[batch_size]
        finest = math.gcd(*runs)  # what the shared run validates at (`shared_run_plan`)
        epochs = max(len(c["val_loss_history"]) * (s // finest) for s, c in runs.items())
        return runs[finest]["seconds"] / max(1, epochs)

    def at(self, batch_size: int, budget: int) -> tuple[float, bool, int]:
        """``(best val_loss, finished, run epochs)`` of the batch size's run on ``budget``
        samples: finished when every candidate stopped early within it."""
        runs = self.candidates[batch_size]
        finest = math.gcd(*runs)
        best, finished, epochs = math.inf, True, 0
        for steps, candidate in runs.items():
            allowed, _ = epochs_for_samples(
                epoch_sizes(self.num_samples, batch_size, steps, endless=False), budget)
            history = candidate["val_loss_history"]
            used = min(len(history), allowed)
            best = min(best, *history[:used])
            epochs = max(epochs, used * (steps // finest))
            finished = finished and len(history) < allowed
        return best, finished, epochs


Rule = Callable[[dict[int, tuple[float, bool]], int], list[int]]


def load(path: Path) -> list[Curves]:
    data = json.loads(path.read_text(encoding="utf-8"))
    cases = []
    for task in data["tasks"]:
        for run in task["runs"]:
            grid = run["grid"]["result"]
            candidates: dict[int, dict[int, dict[str, Any]]] = {}
            for trial in grid["trials"]:
                if trial["same_as"] is None and trial["val_loss"] is not None:
                    candidates.setdefault(trial["batch_size"], {})[trial["steps_per_epoch"]] = trial
            cases.append(Curves(task["task"], run["seed"], task["num_train"],
                                grid["budget_samples"], candidates, len(task["batch_sizes"])))
    return cases


def simulate(case: Curves, rule: Rule, rounds: int, overhead: float) -> tuple[float, float]:
    """``(regret against the grid's best, time against the grid's)`` of halving with
    ``rule`` over ``rounds`` rounds, each doubling the share of the budget."""
    trained: dict[int, int] = {}  # run epochs so far, by batch size
    seconds = 0.0
    alive = sorted(case.candidates)
    found = math.inf
    for round_num in range(rounds):
        budget = math.ceil(case.budget / 2 ** (rounds - 1 - round_num))
        scores = {}
        for batch_size in alive:
            best, finished, epochs = case.at(batch_size, budget)
            extra = epochs - trained.get(batch_size, 0)
            if extra > 0:
                seconds += extra * case.seconds_per_run_epoch(batch_size) + overhead
                trained[batch_size] = epochs
            scores[batch_size] = (best, finished)
            found = min(found, best)
        alive = rule(scores, math.ceil(case.num_batch_sizes / 2 ** (round_num + 1)))
        if not alive:
            break
    scores, costs = _grid(case, overhead)
    return found / min(scores.values()) - 1, seconds / sum(costs.values())


def floor(case: Curves, overhead: float) -> float:
    """The time, against the grid's, of the cheapest run within REGRET_GOAL of its best."""
    scores, costs = _grid(case, overhead)
    best = min(scores.values())
    return min(costs[b] for b, score in scores.items()
               if score <= best * (1 + REGRET_GOAL)) / sum(costs.values())


def _grid(case: Curves, overhead: float) -> tuple[dict[int, float], dict[int, float]]:
    """Each batch size's best val_loss and modelled seconds on the whole budget."""
    whole = {b: case.at(b, case.budget) for b in case.candidates}
    return ({b: best for b, (best, _, _) in whole.items()},
            {b: epochs * case.seconds_per_run_epoch(b) + overhead
             for b, (_, _, epochs) in whole.items()})


def improving(scores: dict[int, tuple[float, bool]], keep: int) -> list[int]:
    going = [b for b, (_, finished) in scores.items() if not finished]
    return sorted(going, key=lambda b: scores[b][0])[:keep]


def standard(scores: dict[int, tuple[float, bool]], keep: int) -> list[int]:
    top = sorted(scores, key=lambda b: scores[b][0])[:keep]
    return [b for b in top if not scores[b][1]]


def cutoff(times_behind: float) -> Rule:
    def rule(scores: dict[int, tuple[float, bool]], keep: int) -> list[int]:
        best = min(score for score, _ in scores.values())
        close = {b: s for b, s in scores.items() if s[0] <= best * (1 + times_behind)}
        return improving(close, keep)
    return rule


RULES: dict[str, Rule] = {"improving": improving, "standard": standard,
                          "cutoff-1": cutoff(1.0), "cutoff-0.5": cutoff(0.5)}


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=_common.RESULTS_DIR / "tune_bench.json")
    parser.add_argument("--overhead", type=float, default=0.2,
                        help="seconds each run costs besides its epochs (default 0.2)")
    args = parser.parse_args(argv)
    cases, skipped = [], []
    for case in load(args.input):
        # The smallest share (one round more than tune's) must hold a whole pass.
        (cases if case.budget >= case.num_samples * 2 ** case.rounds() else skipped).append(case)
    for case in skipped:
        print(f"skipped {case.task} seed {case.seed}: a first round under one pass over the data")
    tasks = sorted({c.task for c in cases}, key=[c.task for c in cases].index)
    rows, payload = [], []
    for extra in (0, 1):
        for name, rule in RULES.items():
            outcomes = [simulate(c, rule, c.rounds() + extra, args.overhead) for c in cases]
            cells: list[Any] = [name, "tune's" if extra == 0 else "one more"]
            for task in tasks:
                mine = [o for c, o in zip(cases, outcomes, strict=True) if c.task == task]
                cells += [f"{100 * statistics.mean(r for r, _ in mine):+.1f}% / "
                          f"{100 * max(r for r, _ in mine):+.1f}%",
                          statistics.mean(t for _, t in mine)]
            rows.append(cells)
            payload.append({"rule": name, "extra_rounds": extra, "cases": [
                {"task": c.task, "seed": c.seed, "regret": r, "time_vs_grid": t}
                for c, (r, t) in zip(cases, outcomes, strict=True)]})
    floors = {task: [floor(c, args.overhead) for c in cases if c.task == task] for task in tasks}
    rows.append(["clairvoyant floor", "-"] + [
        cell for task in tasks for cell in ("+0.0% / +0.0%", statistics.mean(floors[task]))])
    headers = ["rule", "rounds"]
    for task in tasks:
        headers += [f"{task}: regret mean / worst", f"{task}: time / grid"]
    print(f"## Promotion rules replayed on {args.input.name} "
          f"({len(cases)} task-seeds, {args.overhead:g} s a run)\n")
    print(_common.markdown_table(headers, rows))
    print("\nclairvoyant floor per seed: " + "; ".join(
        f"{task} " + ", ".join(f"{f:.2f}" for f in floors[task]) for task in tasks))
    path = _common.write_json(args.results_dir, "tune_promotion", {
        "benchmark": "tune_promotion", "meta": _common.run_metadata("full"),
        "input": str(args.input), "overhead_seconds": args.overhead, "rules": payload,
        "floors": floors})
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
