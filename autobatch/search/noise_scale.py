"""The gradient noise scale: how large a batch can get before it stops paying for itself.

McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training") model training as
needing S = S_min (1 + B_noise / B) optimizer steps and E = E_min (1 + B / B_noise) training
samples at batch size B, where B_noise = tr(Sigma) / |G|^2 is the noise scale: the trace of
the per-sample gradient covariance over the squared norm of the true gradient. Below B_noise
a bigger batch mostly saves steps; above it, mostly wastes samples. B_noise is also their
estimate of the critical batch size.

Neither tr(Sigma) nor |G|^2 is observed directly, but the squared norm of a batch-mean
gradient has expectation E|G_B|^2 = |G|^2 + tr(Sigma) / B. Two batch sizes give two equations
(the paper's appendix A), so each measurement of |G_small|^2 and |G_big|^2 yields unbiased
estimates of both; these are noisy, so they are smoothed over measurements before their ratio
is taken (a ratio of noisy means is far less biased than a mean of noisy ratios).

`GradientNoiseScale` is the pure-numpy estimator; `GradientNormMeter` measures the two
norms for a compiled Keras model (TensorFlow backend) without changing it; and
`estimate_noise_scale` ties them together on arrays.

Example:
    >>> estimate = estimate_noise_scale(model, x, y)
    >>> estimate.noise_scale, estimate.standard_error   # e.g. (45.0, 0.9): an MLP on digits
    >>> estimate.statistical_efficiency(128, base_batch_size=16)   # then 0.35: at 128, a
    ...                                  # sample does 35% of what it does at 16
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from autobatch.errors import (
    AutobatchError,
    InvalidArgumentError,
    InvalidDataError,
    InvalidModelError,
)
from autobatch.files import write_atomically

DEFAULT_SMOOTHING = 0.95


class UnsupportedBackendError(AutobatchError, NotImplementedError):
    """The feature is not implemented for the active Keras backend."""


def statistical_efficiency(
    batch_size: float, noise_scale: float, base_batch_size: float = 1
) -> float:
    """The share of ``base_batch_size``'s per-sample progress that ``batch_size`` keeps.

    Under the model E = E_min (1 + B / B_noise), reaching a given loss at ``batch_size`` needs
    ``1 / efficiency`` times the training samples it needs at ``base_batch_size`` (Pollux's
    statistical efficiency, Qiao et al. 2021). It is 1 at the base and falls towards 0 as the
    batch grows past the noise scale; an infinite noise scale (pure noise) keeps it at 1.

    Example:
        >>> statistical_efficiency(256, noise_scale=64, base_batch_size=32)
        0.3
    """
    for name, value in (("batch_size", batch_size), ("base_batch_size", base_batch_size)):
        if not _is_positive_number(value):
            raise InvalidArgumentError(f"{name}={value!r}: expected a number above 0.")
    if batch_size < base_batch_size:
        raise InvalidArgumentError(
            f"batch_size={batch_size!r} is below base_batch_size={base_batch_size!r}: the "
            "efficiency is relative to the base, so pass a base no larger than the batch."
        )
    if not (noise_scale >= 0):  # also rejects NaN
        raise InvalidArgumentError(f"noise_scale={noise_scale!r}: expected a number of at least 0.")
    if math.isinf(noise_scale):
        return 1.0
    return (noise_scale + base_batch_size) / (noise_scale + batch_size)


class GradientNoiseScale:
    """Smoothed estimate of the gradient noise scale from pairs of squared gradient norms.

    Each `update` takes the squared norm of a batch-mean gradient at a small and at a big
    batch size (the same weights, or weights that move slowly), turns them into unbiased
    estimates of |G|^2 and tr(Sigma), and folds them into exponential moving averages.
    ``smoothing`` is the weight kept by the past at each update: 0 keeps only the latest,
    0.95 averages over about the last 40 updates, 1 weighs every update equally (right when
    the weights do not move between updates).

    Example:
        >>> scale = GradientNoiseScale()
        >>> scale.update(small_norm_squared=2.1, small_batch_size=16,
        ...              big_norm_squared=0.35, big_batch_size=256)
        >>> scale.noise_scale
    """

    def __init__(self, smoothing: float = DEFAULT_SMOOTHING) -> None:
        if not (isinstance(smoothing, (int, float)) and 0 <= smoothing <= 1):
            raise InvalidArgumentError(
                f"smoothing={smoothing!r}: expected a number from 0 (latest update only) to 1 "
                "(all updates weighed equally)."
            )
        self.smoothing = float(smoothing)
        self.num_updates = 0
        # Decayed sums: the weighted means are these over _weight. Keeping the squares and
        # the cross product too gives the standard error at constant memory.
        self._weight = 0.0
        self._weight_squared = 0.0
        self._sums = np.zeros(5)  # trace, gradient, trace^2, gradient^2, trace*gradient

    def update(
        self,
        small_norm_squared: float,
        small_batch_size: int,
        big_norm_squared: float,
        big_batch_size: int,
    ) -> None:
        """Fold in one measurement: |G_B|^2 at a small and at a big batch size."""
        for name, value in (
            ("small_batch_size", small_batch_size),
            ("big_batch_size", big_batch_size),
        ):
            if not _is_positive_number(value):
                raise InvalidArgumentError(f"{name}={value!r}: expected a number above 0.")
        if not small_batch_size < big_batch_size:
            raise InvalidArgumentError(
                f"small_batch_size={small_batch_size} and big_batch_size={big_batch_size}: the "
                "small batch must be smaller; swap them or widen the gap."
            )
        for name, norm in (
            ("small_norm_squared", small_norm_squared),
            ("big_norm_squared", big_norm_squared),
        ):
            if not (math.isfinite(norm) and norm >= 0):
                raise InvalidArgumentError(
                    f"{name}={norm!r}: expected a finite squared norm (at least 0); a NaN or "
                    "infinite gradient means the loss diverged at these weights."
                )
        trace = (small_norm_squared - big_norm_squared) / (
            1 / small_batch_size - 1 / big_batch_size
        )
        gradient = (big_batch_size * big_norm_squared - small_batch_size * small_norm_squared) / (
            big_batch_size - small_batch_size
        )
        decay = self.smoothing
        self._weight = decay * self._weight + 1
        self._weight_squared = decay**2 * self._weight_squared + 1
        self._sums = decay * self._sums + np.array(
            [trace, gradient, trace**2, gradient**2, trace * gradient]
        )
        self.num_updates += 1

    @property
    def trace_covariance(self) -> float:
        """Smoothed tr(Sigma): the per-sample gradient variance, summed over parameters."""
        return self._mean(0)

    @property
    def gradient_norm_squared(self) -> float:
        """Smoothed |G|^2: the squared norm of the true (full-data) gradient."""
        return self._mean(1)

    @property
    def noise_scale(self) -> float:
        """B_noise = tr(Sigma) / |G|^2; NaN before any update.

        The raw estimates can go negative when the signal is buried in noise: a tr(Sigma)
        estimate below 0 counts as 0, and a |G|^2 estimate at or below 0 (near a minimum)
        gives an infinite noise scale.
        """
        if self.num_updates == 0:
            return math.nan
        trace = max(self.trace_covariance, 0.0)
        gradient = self.gradient_norm_squared
        if gradient <= 0:
            return math.inf
        return trace / gradient

    @property
    def critical_batch_size(self) -> float:
        """The batch size past which extra samples buy few steps: B_noise, in the paper's model
        (E_min / S_min = B_noise), where steps and samples are both within 2x of their minimum."""
        return self.noise_scale

    @property
    def effective_num_updates(self) -> float:
        """How many equally weighted updates the smoothed means are worth."""
        return self._weight**2 / self._weight_squared if self.num_updates else 0.0

    @property
    def standard_error(self) -> float:
        """Standard error of `noise_scale` (delta method on the smoothed means).

        It treats updates as independent (true for fresh batches at fixed weights); NaN with
        fewer than 2 updates, infinite when the noise scale is.
        """
        count = self.effective_num_updates
        scale = self.noise_scale
        if self.num_updates < 2 or math.isnan(scale):
            return math.nan
        if math.isinf(scale):
            return math.inf
        trace, gradient = self._mean(0), self._mean(1)
        # Weighted (co)variances with the usual small-sample correction.
        correction = count / (count - 1)
        var_trace = max(self._mean(2) - trace**2, 0.0) * correction
        var_gradient = max(self._mean(3) - gradient**2, 0.0) * correction
        covariance = (self._mean(4) - trace * gradient) * correction
        variance = (var_trace - 2 * scale * covariance + scale**2 * var_gradient) / gradient**2
        return math.sqrt(max(variance, 0.0) / count)

    def statistical_efficiency(self, batch_size: float, base_batch_size: float = 1) -> float:
        """`statistical_efficiency` at this estimate's noise scale."""
        return statistical_efficiency(batch_size, self.noise_scale, base_batch_size)

    def _mean(self, index: int) -> float:
        return float(self._sums[index] / self._weight) if self.num_updates else math.nan


@dataclasses.dataclass(frozen=True)
class NoiseScaleEstimate:
    """What `estimate_noise_scale` measured; plain numbers, ready for a result's JSON."""

    noise_scale: float
    """B_noise = tr(Sigma) / |G|^2, in samples; infinite when no signal was found."""
    standard_error: float
    """Standard error of ``noise_scale`` over the measured steps."""
    gradient_norm_squared: float
    trace_covariance: float
    small_batch: int
    big_batch: int
    num_steps: int
    seconds: float
    """Wall time of the measurement (forward and backward passes only, no optimizer step)."""

    @property
    def critical_batch_size(self) -> float:
        """The paper's estimate of the critical batch size: the noise scale itself."""
        return self.noise_scale

    def statistical_efficiency(self, batch_size: float, base_batch_size: float = 1) -> float:
        """See `statistical_efficiency`."""
        return statistical_efficiency(batch_size, self.noise_scale, base_batch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def estimate_noise_scale(
    model: Any,
    data_x: Any,
    data_y: Any,
    *,
    small_batch: int = 16,
    big_batch: int = 1024,
    num_steps: int = 8,
    seed: int = 0,
) -> NoiseScaleEstimate:
    """Estimate the gradient noise scale of a compiled Keras model at its current weights.

    Each step draws ``big_batch`` samples (with replacement, so the batches are exactly
    i.i.d. and the estimator unbiased even when a batch is a large share of the data),
    measures the gradient of the compiled loss on each ``small_batch``-sized slice of it and
    on the whole, and updates an equally weighted `GradientNoiseScale`. The cost is
    ``num_steps * big_batch`` samples' forward and backward passes; no optimizer step is run
    and the model's weights, optimizer and metrics are left exactly as they were.

    The |G|^2 term is only as good as ``big_batch`` is large next to the noise scale: late in
    training, when the gradient is small, a big batch below B_noise buries it and the
    standard error grows (on tune_bench's digits MLP after 20 passes: B_noise ~2,700, with
    big_batch=256 often "infinite", with 2048 within about 20%). Raise ``big_batch`` (with
    replacement it may exceed the data) or ``num_steps`` when the standard error is large.

    The compiled loss must average over the batch (Keras' default reduction); a summed loss
    would scale the norms by the batch size and bias the estimate.

    Example:
        >>> estimate = estimate_noise_scale(model, x_train, y_train, big_batch=512)
        >>> print(f"B_noise ~ {estimate.noise_scale:.0f} +- {estimate.standard_error:.0f}")
    """
    for name, value in (
        ("small_batch", small_batch),
        ("big_batch", big_batch),
        ("num_steps", num_steps),
    ):
        if not _is_whole_number(value):
            raise InvalidArgumentError(f"{name}={value!r}: expected a whole number of at least 1.")
    if big_batch % small_batch or big_batch < 2 * small_batch:
        raise InvalidArgumentError(
            f"small_batch={small_batch}, big_batch={big_batch}: the big batch must be a multiple "
            "of the small one, at least twice it (e.g. small_batch=16, big_batch=1024)."
        )
    meter = GradientNormMeter(model, small_batch)
    num_samples = _num_samples(data_x, data_y)
    rng = np.random.default_rng(seed)
    scale = GradientNoiseScale(smoothing=1.0)  # the weights do not move: weigh steps equally
    started = time.perf_counter()
    for _ in range(num_steps):
        rows = rng.integers(0, num_samples, size=big_batch)
        small, big = meter(_take(data_x, rows), _take(data_y, rows))
        scale.update(small, small_batch, big, big_batch)
    return NoiseScaleEstimate(
        noise_scale=scale.noise_scale,
        standard_error=scale.standard_error,
        gradient_norm_squared=scale.gradient_norm_squared,
        trace_covariance=scale.trace_covariance,
        small_batch=small_batch,
        big_batch=big_batch,
        num_steps=num_steps,
        seconds=time.perf_counter() - started,
    )


class GradientNormMeter:
    """Squared gradient norms of a compiled Keras model's loss, the model left unchanged.

    Called with one batch whose size is a multiple of ``small_batch``, it takes the gradient
    of the compiled loss on each consecutive ``small_batch`` slice (training mode: dropout on,
    batch statistics used) and returns the mean of their squared norms and the squared norm
    of their mean, which is the whole batch's gradient for a batch-averaged loss. Averaging
    the slices' norms costs nothing extra and lowers the variance of the small-batch term
    (McCandlish et al.'s data-parallel form of the estimator). No optimizer step is run; the
    variables a training-mode forward pass may change (batch-norm statistics, dropout seeds)
    and the metrics are put back after each call. The slices run in one traced TensorFlow
    function, traced again only for a new batch shape. Needs the TensorFlow backend.

    Example:
        >>> meter = GradientNormMeter(model, small_batch=16)
        >>> small_norm_squared, big_norm_squared = meter(x[:256], y[:256])
    """

    def __init__(self, model: Any, small_batch: int) -> None:
        import keras

        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise UnsupportedBackendError(
                f"The gradient noise scale is measured with the TensorFlow backend only; the "
                f"active Keras backend is {backend!r}. Set KERAS_BACKEND=tensorflow to measure it."
            )
        if not getattr(model, "compiled", False) or getattr(model, "loss", None) is None:
            raise InvalidModelError(
                f"{type(model).__name__} has no compiled loss: call model.compile(optimizer=..., "
                "loss=...) before estimating its gradient noise scale."
            )
        if not _is_whole_number(small_batch):
            raise InvalidArgumentError(
                f"small_batch={small_batch!r}: expected a whole number of at least 1."
            )
        self.model = model
        self.small_batch = int(small_batch)
        self._function: Any = None

    def __call__(self, x: Any, y: Any) -> tuple[float, float]:
        """(mean squared norm of the slices' gradients, squared norm of the batch's gradient)."""
        batch = _num_samples(x, y)
        if batch % self.small_batch or batch < 2 * self.small_batch:
            raise InvalidArgumentError(
                f"A batch of {batch} samples with small_batch={self.small_batch}: expected a "
                "multiple of small_batch, at least twice it."
            )
        if not self.model.built:
            self.model(_take(x, np.arange(1)))  # inference mode builds without side effects
        if self._function is None:
            self._function = self._traced_norms()
        saved = _saved_state(self.model)
        try:
            small, big = self._function(x, y)
        finally:
            for variable, value in saved:
                variable.assign(value)
        return float(small), float(big)

    def _traced_norms(self) -> Any:
        import keras
        import tensorflow as tf

        model, small_batch = self.model, self.small_batch
        variables = model.trainable_variables
        if not variables:
            raise InvalidModelError(
                f"{type(model).__name__} has no trainable variables: there is no gradient to "
                "measure."
            )

        def slice_gradients(index: Any, x: Any, y: Any) -> list[Any]:
            def rows(leaf: Any) -> Any:
                return leaf[index * small_batch : (index + 1) * small_batch]

            x_slice, y_slice = keras.tree.map_structure(rows, x), keras.tree.map_structure(rows, y)
            with tf.GradientTape() as tape:
                y_pred = model(x_slice, training=True)
                loss = model.compute_loss(x=x_slice, y=y_slice, y_pred=y_pred)
            return [
                tf.zeros(v.shape, tf.float32)
                if g is None  # a variable the loss does not reach
                else tf.cast(tf.convert_to_tensor(g), tf.float32)
                for g, v in zip(tape.gradient(loss, variables), variables, strict=True)
            ]

        def squared_norm(tensors: list[Any]) -> Any:
            return tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors])

        def norms(x: Any, y: Any) -> tuple[Any, Any]:
            num_slices = tf.shape(keras.tree.flatten(x)[0])[0] // small_batch

            def step(index: Any, small_sum: Any, total: list[Any]) -> tuple[Any, Any, list[Any]]:
                gradients = slice_gradients(index, x, y)
                total = [t + g for t, g in zip(total, gradients, strict=True)]
                return index + 1, small_sum + squared_norm(gradients), total

            start = (
                tf.constant(0),
                tf.constant(0.0),
                [tf.zeros(v.shape, tf.float32) for v in variables],
            )
            _, small_sum, total = tf.while_loop(lambda index, *_: index < num_slices, step, start)
            count = tf.cast(num_slices, tf.float32)
            return small_sum / count, squared_norm(total) / count**2

        return tf.function(norms)


def _saved_state(model: Any) -> list[tuple[Any, np.ndarray]]:
    """Values of what a forward pass in training mode may change: non-trainable variables
    (batch-norm statistics, seed-generator states) and metric variables (the compiled loss
    updates per-output trackers). The trainable weights are only read."""
    variables = list(model.non_trainable_variables) + list(getattr(model, "metrics_variables", []))
    unique = {id(v): v for v in variables}.values()
    return [(v, np.array(v.numpy(), copy=True)) for v in unique]


def _num_samples(x: Any, y: Any) -> int:
    import keras

    lengths = {len(leaf) for leaf in keras.tree.flatten((x, y)) if hasattr(leaf, "__len__")}
    if len(lengths) != 1 or 0 in lengths:
        raise InvalidDataError(
            f"Inputs and targets of lengths {sorted(lengths)}: expected non-empty arrays with "
            "one sample per row, the same number in each."
        )
    return lengths.pop()


def _take(data: Any, rows: np.ndarray) -> Any:
    import keras

    return keras.tree.map_structure(lambda leaf: np.asarray(leaf)[rows], data)


def _is_positive_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and bool(value > 0)
    )


def _is_whole_number(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 1)


#: Where a search keeps its noise-scale measurement, in its project directory: a resumed
#: search reads it instead of measuring again.
SEARCH_FILE = "noise_scale.json"


def search_estimator(x: Any, y: Any, path: str | None = None, *, seed: int = 0) -> Any:
    """A Keras callback that measures the noise scale once per search, when the first
    training run of the search ends (on its trained weights), and writes it to ``path``.

    Estimating on trained weights rather than the initial ones matters: the noise scale
    grows as the loss falls (McCandlish et al., section 3). The first run
    is the one successive halving always trains (the smallest batch, on round 1's share of
    the budget), so the measurement is taken at the same point of every search. A run whose
    measurement fails (diverged weights) leaves it to the next; the reason of the last
    failure is kept as ``error``. The callback runs on the search's model, which the search
    puts back as the caller had it afterwards; the estimator itself changes nothing
    (see `GradientNormMeter`). ``path`` may be set after construction.

    Example:
        >>> estimator = search_estimator(x_train, y_train, "project/noise_scale.json")
        >>> model.fit(x_train, y_train, callbacks=[estimator])
        >>> estimator.estimate.noise_scale
    """
    import json
    import os

    import keras

    class SearchNoiseScale(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.path = path
            self.estimate: NoiseScaleEstimate | None = None
            self.error: str | None = None

        def on_train_end(self, logs: Any = None) -> None:
            if self.estimate is not None or (self.path and os.path.exists(self.path)):
                return
            try:
                self.estimate = estimate_noise_scale(self.model, x, y, seed=seed)
            # Why so broad: the measurement is a report, never a reason to fail the search
            # (a custom train_step, a loss the meter cannot differentiate, NaN weights).
            except Exception as error:  # noqa: BLE001
                self.error = f"{type(error).__name__}: {error}"[:300]
                return
            if self.path:
                found = self.estimate.to_dict()
                write_atomically(Path(self.path), lambda file: json.dump(found, file))

    return SearchNoiseScale()


def load_search_estimate(path: str) -> NoiseScaleEstimate | None:
    """The estimate `search_estimator` wrote to ``path``; None when there is none."""
    import json
    import os

    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    known = {f.name for f in dataclasses.fields(NoiseScaleEstimate)}
    return NoiseScaleEstimate(**{k: v for k, v in data.items() if k in known})
