"""What `tune` searches and how much each candidate may train: pure Python, no Keras.

A candidate is a batch size and a ``steps_per_epoch``. Every candidate gets the same budget
of training *samples* (not epochs, not steps), so a batch of 1024 is compared with a batch of
32 after both have seen the same data. ``steps_per_epoch`` then only decides how often the
candidate is validated (and so where early stopping can end it and which epoch count
``fit_kwargs()`` reports).

On finite data ``steps_per_epoch`` is always a divisor of the batches in one pass, so an
epoch never runs past the end of the data: ``model.fit(**fit_kwargs())`` then trains exactly
``steps_per_epoch * epochs`` steps, with no "Your input ran out of data" warning. `epoch_sizes`
still counts the samples of each epoch exactly (the last batch of a pass is partial), so a
candidate's epochs and samples are the ones the user's own ``model.fit`` will run.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from autobatch.errors import InvalidArgumentError

#: steps_per_epoch candidates by default: a quarter, a half and a whole pass over the data.
DEFAULT_EPOCH_FRACTIONS = (0.25, 0.5, 1.0)
#: The smallest default batch size; smaller for tiny data (see `default_batch_sizes`).
SMALLEST_BATCH_SIZE = 16
#: Tiny data: the smallest default batch still gives at least this many steps per pass.
MIN_STEPS_PER_PASS = 8
#: Epoch cap when only a time budget limits a candidate.
MAX_EPOCHS = 10_000

BATCH_SIZE = "batch_size"
STEPS_PER_EPOCH = "steps_per_epoch"
EPOCH_FRACTION = "epoch_fraction"


def default_batch_sizes(max_batch_size: int, num_samples: int | None = None) -> list[int]:
    """Powers of two from 16 (less for tiny data) up to ``max_batch_size``, plus that maximum.

    Example:
        >>> default_batch_sizes(1437, 1437)
        [16, 32, 64, 128, 256, 512, 1024, 1437]
        >>> default_batch_sizes(100, 100)
        [8, 16, 32, 64, 100]
    """
    lowest = SMALLEST_BATCH_SIZE
    if num_samples:
        while lowest > 1 and num_samples / lowest < MIN_STEPS_PER_PASS:
            lowest //= 2
    sizes = []
    size = lowest
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes


def divisors(number: int) -> list[int]:
    """The positive divisors of ``number``, smallest first.

    Example:
        >>> divisors(45)
        [1, 3, 5, 9, 15, 45]
    """
    small = [d for d in range(1, math.isqrt(number) + 1) if number % d == 0]
    return sorted({*small, *(number // d for d in small)})


def epoch_sizes(
    num_samples: int, batch_size: int, steps_per_epoch: int, *, endless: bool
) -> Iterator[int]:
    """Training samples in each successive epoch of ``model.fit``, as Keras 3 runs them.

    ``endless`` data (an infinite dataset, a repeated pipeline) gives full batches forever.
    Finite data is cut into ``ceil(num_samples / batch_size)`` batches, the last one partial,
    and an epoch never runs past the end of a pass (see the module docstring).

    Example:
        >>> list(itertools.islice(epoch_sizes(100, 16, 3, endless=False), 4))
        [48, 48, 4, 48]
    """
    if endless:
        yield from itertools.repeat(steps_per_epoch * batch_size)
        return
    num_batches = math.ceil(num_samples / batch_size)
    last_batch = num_samples - (num_batches - 1) * batch_size
    position = 0
    while True:
        steps = min(steps_per_epoch, num_batches - position)
        samples = steps * batch_size
        position += steps
        if position == num_batches:
            samples -= batch_size - last_batch
            position = 0
        yield samples


def epochs_for_samples(sizes: Iterator[int], budget_samples: int) -> tuple[int, int]:
    """The fewest epochs whose samples reach ``budget_samples``, and those samples.

    Example:
        >>> epochs_for_samples(epoch_sizes(100, 16, 3, endless=False), 200)
        (6, 200)
    """
    seen = 0
    for epochs, size in enumerate(sizes, start=1):
        seen += size
        if seen >= budget_samples or epochs >= MAX_EPOCHS:
            return epochs, seen
    raise AssertionError("epoch_sizes is endless")  # pragma: no cover


def samples_in_epochs(sizes: Iterator[int], epochs: int) -> int:
    """Training samples in the first ``epochs`` epochs."""
    return sum(itertools.islice(sizes, epochs))


@dataclass(frozen=True)
class Candidate:
    """One point of the search: what ``model.fit`` gets, and how long it may train."""

    batch_size: int
    steps_per_epoch: int
    max_epochs: int
    """Epochs that reach the candidate's sample budget (MAX_EPOCHS under a time budget only)."""
    budget_samples: int | None
    budget_seconds: float | None
    patience_epochs: int | None
    """The patience in passes, as this candidate's own epochs; None without early stopping."""


@dataclass(frozen=True)
class SearchSpace:
    """Batch sizes times steps_per_epoch, declared up front on keras-tuner's HyperParameters.

    ``steps_per_epoch`` holds absolute step counts; ``epoch_fractions`` holds fractions of a
    full pass at each batch size. Exactly one of them is set.

    Example:
        >>> space = SearchSpace(num_samples=1437, batch_sizes=(32, 64), epoch_fractions=(0.5, 1.0))
        >>> space.declare(hp)                       # a keras_tuner.HyperParameters
        >>> space.steps_per_epoch_for(64, {"epoch_fraction": 0.5})  # 23 batches: a prime
        23
    """

    num_samples: int
    """Training samples in one pass over the data (declared for endless data)."""
    batch_sizes: tuple[int, ...]
    epoch_fractions: tuple[float, ...] = ()
    steps_per_epoch: tuple[int, ...] = ()
    endless: bool = False
    """True when the data never runs out (infinite dataset, callable): no clamping needed."""

    @property
    def size(self) -> int:
        return len(self.batch_sizes) * len(self.epoch_fractions or self.steps_per_epoch)

    def declare(self, hp: Any) -> None:
        """Declare the space on a ``keras_tuner.HyperParameters`` before the search starts.

        Without this, Hyperband runs zero trials (see ../shared/PITFALLS.md). Smallest values
        come first: they are the defaults, and grid search starts there. Batch size is
        declared after steps_per_epoch, so that a grid goes along batch sizes before
        steps_per_epoch (keras-tuner's grid steps the last-declared hyperparameter first; a
        HyperModel's own, declared after ours, come before both): candidates of one batch
        size share one run, and in a distributed grid search the next candidate along
        steps_per_epoch was a sibling of the run the previous worker was training, which a
        second worker could only wait for. A grid cut short by ``max_trials`` thus covers
        batch sizes first. Seeded random, Bayesian and Hyperband searches draw other
        candidates than before this order (keras-tuner seeds each value by its position).
        """
        if self.epoch_fractions:
            hp.Choice(EPOCH_FRACTION, list(self.epoch_fractions), ordered=True)
        else:
            hp.Choice(STEPS_PER_EPOCH, list(self.steps_per_epoch), ordered=True)
        hp.Choice(BATCH_SIZE, list(self.batch_sizes), ordered=True)

    def batches_per_pass(self, batch_size: int) -> int:
        return math.ceil(self.num_samples / batch_size)

    def steps_per_epoch_for(self, batch_size: int, values: dict[str, Any]) -> int:
        """The candidate's steps_per_epoch: a fraction of a pass, or a step count.

        On finite data it is a divisor of the batches in a pass, so every epoch ends exactly
        where a pass or a part of it ends. Any other value makes Keras run out of data
        mid-epoch: it warns "Your input ran out of data" and trains fewer steps than
        steps_per_epoch x epochs (batch 16, 23 steps on 45 batches, 52 epochs: 1170 steps,
        not 1196). A fraction takes the divisor nearest to it among the divisors of the next
        larger fraction's steps (45 batches: 45, 15, 15 for 1, 1/2, 1/4), so each candidate's
        epochs end where the finer candidates' do, and one run validated at the finest of
        them gives every candidate's curve; a step count takes the largest divisor at or
        below it.
        """
        passes = self.batches_per_pass(batch_size)
        if self.epoch_fractions:
            fraction = float(values[EPOCH_FRACTION])
            if self.endless:
                return max(1, math.ceil(fraction * passes))
            steps = passes
            for larger in sorted(self.epoch_fractions, reverse=True):
                if larger < fraction:
                    break
                wanted = larger * passes
                # Never validate more than twice as often as asked (13 batches: 13, not 1).
                near = [d for d in divisors(steps) if d >= wanted / 2] or [steps]
                steps = min(near, key=lambda d: (abs(math.log(d / wanted)), -d))
            return steps
        steps = int(values[STEPS_PER_EPOCH])
        if self.endless:
            return steps
        return max(d for d in divisors(passes) if d <= max(1, steps))

    def steps_choices(self, batch_size: int) -> list[int]:
        """Every distinct steps_per_epoch of the space at ``batch_size``, smallest first."""
        name, choices = (
            (EPOCH_FRACTION, self.epoch_fractions) if self.epoch_fractions
            else (STEPS_PER_EPOCH, self.steps_per_epoch)
        )
        return sorted({self.steps_per_epoch_for(batch_size, {name: c}) for c in choices})

    def epoch_sizes(self, batch_size: int, steps_per_epoch: int) -> Iterator[int]:
        return epoch_sizes(self.num_samples, batch_size, steps_per_epoch, endless=self.endless)

    def epochs_per_pass(self, batch_size: int, steps_per_epoch: int) -> float:
        if self.endless:
            return self.num_samples / (batch_size * steps_per_epoch)
        return math.ceil(self.batches_per_pass(batch_size) / steps_per_epoch)

    def describe(self) -> dict[str, Any]:
        """A plain dict that identifies the space (part of the project's name)."""
        return {
            "num_samples": self.num_samples,
            "batch_sizes": list(self.batch_sizes),
            "epoch_fractions": list(self.epoch_fractions),
            "steps_per_epoch": list(self.steps_per_epoch),
            "endless": self.endless,
        }


@dataclass(frozen=True)
class Budget:
    """The same training budget for every candidate, in samples and/or seconds.

    Hyperband thinks in "epochs": it trains many candidates for 1 epoch, the best for 3, the
    best of those for 9 (``max_epochs=9``, ``factor=3``). Here one Hyperband epoch is a share
    of the budget, ``budget_samples / hyperband_epochs`` training samples (or seconds), so a
    trial asked for ``tuner/epochs = e`` trains ``e / hyperband_epochs`` of the budget (its
    ``max_epochs`` of 9 is the whole budget), which each candidate turns into its own number
    of epochs of about ``steps_per_epoch * batch_size`` samples (`epochs_for_samples`). A
    promoted trial continues its earlier run from that run's last whole pass (weights,
    optimizer, counters, early stopping; see `autobatch.search.candidate.RunState`), so its
    run is still exactly one ``model.fit`` call that ``fit_kwargs()`` can reproduce (Keras
    starts a new pass at every ``fit`` call, so only whole passes continue exactly); a
    candidate that early stopping had already ended is not trained again.
    """

    samples: int | None
    seconds: float | None
    patience_passes: float | None
    hyperband_epochs: int = 1

    def candidate(self, space: SearchSpace, values: dict[str, Any]) -> Candidate:
        """The candidate for a trial's hyperparameter values (Hyperband's tuner/epochs included)."""
        batch_size = int(values[BATCH_SIZE])
        steps = space.steps_per_epoch_for(batch_size, values)
        return self.candidate_at(space, batch_size, steps, values.get("tuner/epochs"))

    def candidate_at(
        self, space: SearchSpace, batch_size: int, steps: int, hyperband_epochs: int | None
    ) -> Candidate:
        """The candidate training ``batch_size`` x ``steps`` on ``hyperband_epochs`` shares of
        the budget (None: the whole budget)."""
        share = (hyperband_epochs or self.hyperband_epochs) / self.hyperband_epochs
        samples = None if self.samples is None else max(1, math.ceil(self.samples * share))
        seconds = None if self.seconds is None else self.seconds * share
        if samples is None:
            max_epochs = MAX_EPOCHS
        else:
            max_epochs, _ = epochs_for_samples(space.epoch_sizes(batch_size, steps), samples)
        patience = None
        if self.patience_passes is not None:
            per_pass = space.epochs_per_pass(batch_size, steps)
            patience = max(1, math.ceil(self.patience_passes * per_pass))
        return Candidate(batch_size, steps, max_epochs, samples, seconds, patience)

    def describe(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "seconds": self.seconds,
            "patience_passes": self.patience_passes,
            "hyperband_epochs": self.hyperband_epochs,
        }


def build_space(
    *,
    num_samples: int,
    max_batch_size: int,
    endless: bool,
    batch_sizes: Sequence[int] | None,
    steps_per_epoch: Sequence[int | float] | None,
    num_replicas: int = 1,
) -> SearchSpace:
    """Check the user's lists (or make the defaults) and return the space; never above the probe.

    ``steps_per_epoch`` holding any float means fractions of a pass in (0, 1]; all ints mean
    step counts. Under data parallelism every batch size is a global batch, a multiple of
    ``num_replicas`` (the defaults are rounded down to one).
    """
    if batch_sizes is None:
        top = max(num_replicas, max_batch_size - max_batch_size % num_replicas)
        sizes = sorted({max(num_replicas, b - b % num_replicas) for b in default_batch_sizes(top, num_samples)})
    else:
        given = _positive_ints(batch_sizes, "batch_sizes", "batch sizes such as [32, 64, 128]")
        uneven = [size for size in given if size % num_replicas]
        if uneven:
            raise InvalidArgumentError(
                f"batch_sizes={list(batch_sizes)!r} holds {uneven}, not multiples of the "
                f"{num_replicas} replicas the model trains on: each global batch is split "
                f"evenly over them. Pass multiples of {num_replicas}, or leave batch_sizes=None."
            )
        sizes = sorted({size for size in given if size <= max_batch_size})
        if not sizes:
            above = (f"the {num_samples} training samples" if max_batch_size >= num_samples
                     else f"the largest batch that fits, {max_batch_size} (from the probe)")
            raise InvalidArgumentError(
                f"batch_sizes={list(batch_sizes)!r}: every one is above {above}. Pass sizes up "
                f"to {max_batch_size}, or leave batch_sizes=None for powers of two up to it."
            )
    if steps_per_epoch is None:
        return SearchSpace(num_samples, tuple(sizes), DEFAULT_EPOCH_FRACTIONS, endless=endless)
    values = list(steps_per_epoch) if isinstance(steps_per_epoch, (list, tuple)) else None
    if not values:
        raise InvalidArgumentError(
            f"steps_per_epoch={steps_per_epoch!r}; expected a non-empty list: step counts "
            "such as [50, 100], or fractions of a pass such as [0.25, 0.5, 1.0]."
        )
    if any(_is_number(v) and not isinstance(v, numbers.Integral) for v in values):
        if not all(_is_number(v) and 0 < v <= 1 for v in values):
            raise InvalidArgumentError(
                f"steps_per_epoch={values!r} mixes in fractions, so every value must be a "
                "fraction of a pass in (0, 1], e.g. [0.25, 0.5, 1.0]. For step counts pass "
                "integers only, e.g. [50, 100, 200]."
            )
        fractions = tuple(sorted({float(v) for v in values}))
        return SearchSpace(num_samples, tuple(sizes), fractions, endless=endless)
    steps = tuple(sorted(set(_positive_ints(
        values, "steps_per_epoch", "step counts such as [50, 100, 200], or fractions of a pass "
        "such as [0.25, 0.5, 1.0]"))))
    return SearchSpace(num_samples, tuple(sizes), steps_per_epoch=steps, endless=endless)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_ints(values: Any, name: str, example: str = "e.g. [32, 64, 128]") -> list[int]:
    items = list(values) if isinstance(values, (list, tuple)) else None
    if not items or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 1 for v in items
    ):
        raise InvalidArgumentError(
            f"{name}={values!r}; expected a non-empty list of positive integers: {example}."
        )
    return [int(v) for v in items]
