"""The gradient noise scale estimator, checked where the true answer is known in closed form."""

import itertools
import math

import numpy as np
import pytest

from autobatch.errors import InvalidArgumentError, InvalidDataError, InvalidModelError
from autobatch.search.noise_scale import (
    GradientNoiseScale,
    GradientNormMeter,
    UnsupportedBackendError,
    estimate_noise_scale,
    statistical_efficiency,
)

# --- the pure estimator, on synthetic gradients with known G and Sigma -------------------------


def _synthetic_norms(rng, gradient, variances, batch_size):
    """|G_B|^2 of one batch-mean gradient: G plus noise of covariance diag(variances) / B."""
    noise = rng.normal(size=gradient.shape) * np.sqrt(variances / batch_size)
    return float(np.sum((gradient + noise) ** 2))


def test_expected_norms_give_the_exact_trace_and_gradient():
    scale = GradientNoiseScale()
    gradient_norm_squared, trace = 0.5, 40.0
    for small, big in [(8, 64), (16, 512), (4, 12)]:
        scale.update(
            gradient_norm_squared + trace / small, small, gradient_norm_squared + trace / big, big
        )
    assert scale.gradient_norm_squared == pytest.approx(gradient_norm_squared)
    assert scale.trace_covariance == pytest.approx(trace)
    assert scale.noise_scale == pytest.approx(80.0)
    assert scale.critical_batch_size == pytest.approx(80.0)


def test_recovers_a_known_noise_scale_from_noisy_norms():
    rng = np.random.default_rng(0)
    gradient = rng.normal(size=50) * 0.2
    variances = rng.uniform(0.5, 1.5, size=50)
    truth = variances.sum() / np.sum(gradient**2)
    scale = GradientNoiseScale(smoothing=1.0)
    for _ in range(400):
        scale.update(
            _synthetic_norms(rng, gradient, variances, 16),
            16,
            _synthetic_norms(rng, gradient, variances, 512),
            512,
        )
    assert scale.num_updates == 400
    assert scale.noise_scale == pytest.approx(truth, rel=0.05)
    assert abs(scale.noise_scale - truth) < 3 * scale.standard_error


def test_standard_error_matches_the_spread_of_repeated_estimates():
    rng = np.random.default_rng(1)
    gradient = np.full(20, 0.3)
    variances = np.ones(20)
    estimates, errors = [], []
    for _ in range(200):
        scale = GradientNoiseScale(smoothing=1.0)
        for _ in range(30):
            scale.update(
                _synthetic_norms(rng, gradient, variances, 8),
                8,
                _synthetic_norms(rng, gradient, variances, 128),
                128,
            )
        estimates.append(scale.noise_scale)
        errors.append(scale.standard_error)
    assert np.mean(errors) == pytest.approx(np.std(estimates), rel=0.25)


def test_smoothing_follows_a_noise_scale_that_changes():
    slow, fast = GradientNoiseScale(smoothing=1.0), GradientNoiseScale(smoothing=0.5)
    for trace in [10.0] * 20 + [100.0] * 20:  # |G|^2 = 1: the noise scale goes from 10 to 100
        for scale in (slow, fast):
            scale.update(1 + trace / 4, 4, 1 + trace / 64, 64)
    assert slow.noise_scale == pytest.approx(55.0)
    assert fast.noise_scale == pytest.approx(100.0, rel=1e-4)
    assert fast.effective_num_updates == pytest.approx(3.0, rel=1e-4)  # (1 + 0.5) / (1 - 0.5)


def test_no_signal_gives_an_infinite_noise_scale_and_no_noise_gives_zero():
    buried = GradientNoiseScale()
    buried.update(10.0, 10, 0.5, 100)  # |G|^2 estimate = (50 - 100) / 90 < 0
    assert buried.noise_scale == math.inf
    assert buried.statistical_efficiency(4096) == 1.0
    clean = GradientNoiseScale()
    clean.update(1.0, 10, 1.2, 100)  # tr(Sigma) estimate < 0 counts as 0
    assert clean.noise_scale == 0.0
    assert math.isnan(GradientNoiseScale().noise_scale)


def test_statistical_efficiency_is_one_at_the_base_and_falls_with_the_batch():
    batch_sizes = [16, 32, 64, 128, 256, 1024]
    efficiencies = [
        statistical_efficiency(b, noise_scale=100, base_batch_size=16) for b in batch_sizes
    ]
    assert efficiencies[0] == 1.0
    assert all(0 < e <= 1 for e in efficiencies)
    assert all(a > b for a, b in itertools.pairwise(efficiencies))
    # The paper's samples model: E(B) = E_min (1 + B / B_noise), so 1/efficiency = E(B) / E(base).
    assert 1 / efficiencies[3] == pytest.approx((1 + 128 / 100) / (1 + 16 / 100))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: statistical_efficiency(8, 100, base_batch_size=16), "below base_batch_size=16"),
        (lambda: statistical_efficiency(0, 100), "batch_size=0: expected a number above 0"),
        (lambda: statistical_efficiency(32, math.nan), "noise_scale=nan"),
        (lambda: GradientNoiseScale(smoothing=1.5), r"smoothing=1.5: expected a number from 0"),
        (lambda: GradientNoiseScale().update(1.0, 64, 0.5, 64), "the small batch must be smaller"),
        (lambda: GradientNoiseScale().update(math.nan, 8, 0.5, 64), "small_norm_squared=nan"),
    ],
)
def test_bad_arguments_say_what_was_expected(call, match):
    with pytest.raises(InvalidArgumentError, match=match):
        call()


# --- on a Keras model: linear regression with known noise -------------------------------------

DIM, NUM_SAMPLES, NOISE = 8, 4096, 1.0


def _regression(distance):
    """y = x.w + eps, eps ~ N(0, NOISE^2), and a linear model at ``distance`` from the optimum.

    With x ~ N(0, I) and the mean squared error, the per-sample gradient is 2 x (x.d - eps)
    for d = w_model - w_true, so G = 2 d and tr(Sigma) = 4 ((DIM + 1) |d|^2 + DIM NOISE^2):
    B_noise = DIM + 1 + DIM NOISE^2 / |d|^2.
    """
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_SAMPLES, DIM)).astype("float32")
    w_true = rng.normal(size=(DIM, 1))
    y = (x @ w_true + NOISE * rng.normal(size=(NUM_SAMPLES, 1))).astype("float32")
    offset = rng.normal(size=(DIM, 1))
    offset *= distance / np.linalg.norm(offset)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer="sgd", loss="mse")
    model.layers[0].kernel.assign((w_true + offset).astype("float32"))
    # The same quantities on the finite data set the batches are drawn from (with replacement).
    per_sample = 2 * x * (x.astype(np.float64) @ (w_true + offset) - y)
    on_data = per_sample.var(axis=0).sum() / np.sum(per_sample.mean(axis=0) ** 2)
    return model, x, y, DIM + 1 + DIM * NOISE**2 / distance**2, on_data


@pytest.mark.parametrize("distance", [1.0, 0.5])
def test_recovers_the_noise_scale_of_linear_regression(distance):
    model, x, y, in_closed_form, on_data = _regression(distance)
    # 48 steps: over seeds 0-19 every estimate fell within 10% of the closed form (16 steps of
    # 128 reached +21% at distance 0.5), so the 20% below is a margin, not a coin toss.
    estimate = estimate_noise_scale(model, x, y, small_batch=8, big_batch=256, num_steps=48, seed=0)
    assert estimate.noise_scale == pytest.approx(in_closed_form, rel=0.2)
    assert estimate.noise_scale == pytest.approx(on_data, rel=0.2)
    assert estimate.gradient_norm_squared == pytest.approx(4 * distance**2, rel=0.3)
    assert 0 < estimate.standard_error < 0.2 * estimate.noise_scale
    assert estimate.critical_batch_size == estimate.noise_scale
    assert estimate.to_dict()["num_steps"] == 48


def test_the_meter_measures_the_slices_and_the_whole_batch_exactly():
    model, x, y, _, _ = _regression(1.0)
    x, y = x[:32], y[:32]
    small, big = GradientNormMeter(model, small_batch=8)(x, y)
    weights = model.layers[0].kernel.numpy().astype(np.float64)
    per_sample = 2 * x * (x.astype(np.float64) @ weights - y)
    slices = per_sample.reshape(4, 8, DIM).mean(axis=1)
    assert small == pytest.approx(np.mean(np.sum(slices**2, axis=1)), rel=1e-4)
    assert big == pytest.approx(np.sum(per_sample.mean(axis=0) ** 2), rel=1e-4)


def test_the_model_optimizer_and_metrics_are_left_exactly_as_they_were():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),  # training mode would move its statistics
            keras.layers.Dropout(0.3),  # and advance its seed generator
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, size=64)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # builds the optimizer: Adam has state

    def state():
        variables = model.variables + model.optimizer.variables + model.metrics_variables
        return [np.array(v.numpy(), copy=True) for v in variables]

    before = state()
    estimate = estimate_noise_scale(model, x, y, small_batch=4, big_batch=32, num_steps=3, seed=1)
    after = state()
    assert len(after) == len(before)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
    assert np.isfinite(estimate.noise_scale) or estimate.noise_scale == math.inf


def test_an_optimizer_never_built_stays_unbuilt(mlp, regression_data):
    x, y = regression_data
    estimate_noise_scale(mlp, x, y, small_batch=8, big_batch=32, num_steps=2)
    assert not mlp.optimizer.built


def test_other_backends_are_refused_with_a_fix(mlp, regression_data, monkeypatch):
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    x, y = regression_data
    with pytest.raises(
        UnsupportedBackendError, match="active Keras backend is 'jax'.*KERAS_BACKEND=tensorflow"
    ):
        estimate_noise_scale(mlp, x, y, small_batch=8, big_batch=32, num_steps=1)


def test_a_model_without_a_loss_is_refused(regression_data):
    import keras

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    x, y = regression_data
    with pytest.raises(InvalidModelError, match="no compiled loss: call model.compile"):
        estimate_noise_scale(model, x, y, small_batch=8, big_batch=32, num_steps=1)


def test_bad_batches_and_data_are_refused(mlp, regression_data):
    x, y = regression_data
    with pytest.raises(
        InvalidArgumentError, match="big_batch=40: the big batch must be a multiple"
    ):
        estimate_noise_scale(mlp, x, y, small_batch=16, big_batch=40)
    with pytest.raises(InvalidArgumentError, match="num_steps=0: expected a whole number"):
        estimate_noise_scale(mlp, x, y, num_steps=0)
    with pytest.raises(InvalidDataError, match=r"lengths \[100, 512\]"):
        estimate_noise_scale(mlp, x, y[:100])
