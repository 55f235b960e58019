"""The pure search strategy against exact simulated memory curves: no Keras, milliseconds."""

import math

import pytest

from autobatch.probing.strategy import MemoryModel, Observation, ProbeStrategy


class ProcessKilled(Exception):
    """Stands for the kernel's OOM killer in simulations of host memory."""


def simulate(limit, peak_of, *, margin=0.0, num_samples=None, catchable=True, baseline=0, start=None,
             shape_load=None):
    strategy = ProbeStrategy(
        limit_bytes=limit,
        baseline_bytes=baseline,
        margin=margin,
        max_batch_size=num_samples,
        oom_is_catchable=catchable,
        start_batch_size=start,
        shape_load=shape_load,
    )
    history = []
    while (proposal := strategy.propose(history)) is not None:
        peak = peak_of(proposal.batch_size)
        if peak > limit:
            if not catchable:
                raise ProcessKilled(f"batch {proposal.batch_size} peaked at {peak} > {limit}")
            peak = None
        history.append(Observation(proposal.batch_size, peak))
    return strategy, history


def true_max(usable, peak_of, cap=10**7):
    """The largest batch whose peak is within ``usable``, by exhaustive scan."""
    best, batch = 0, 1
    while batch <= cap and peak_of(batch) <= usable:
        best, batch = batch, batch + 1
    return best


LINEAR_CASES = [
    # (limit, fixed, per_sample)
    (1_000, 100, 10),
    (1_000, 0, 1),
    (10**9, 2 * 10**8, 10**5),
    (8 * 2**30, 3 * 2**30, int(3.8 * 2**20)),
    (80 * 2**30, 20 * 2**30, 48 * 2**20),
    (100, 90, 10),  # only batch 1 fits
    (50, 45, 1),  # the first trial runs out
    (2**20, 1000, 333),
    (12_345_678, 1_234_567, 4_321),
]


@pytest.mark.parametrize("limit,fixed,per_sample", LINEAR_CASES)
@pytest.mark.parametrize("catchable", [True, False])
def test_finds_the_exact_threshold_of_a_linear_curve(limit, fixed, per_sample, catchable):
    peak_of = lambda b: fixed + per_sample * b  # noqa: E731
    if catchable:
        strategy, history = simulate(limit, peak_of, catchable=catchable)
        assert strategy.answer(history) == true_max(limit, peak_of)
    else:
        # Host steps go a quarter of the way to the limit at most, and stop within half the
        # host's default margin of the usable memory, answering the largest batch that ran
        # (no trial ever crossed the limit: no ProcessKilled).
        strategy, history = simulate(limit, peak_of, catchable=False, margin=0.1)
        usable_max = true_max(strategy.usable_bytes, peak_of)
        assert 0.9 * usable_max <= strategy.answer(history) <= usable_max
        assert len(history) <= 18  # doubling from batch 1, then quarter steps
    # One out-of-memory at most, except when even the first trial was too big: then the
    # step above the answer has to be tried as well.
    first_too_big = history[0].peak_bytes is None
    assert sum(o.peak_bytes is None for o in history) <= (2 if first_too_big else 1)


@pytest.mark.parametrize("threshold", [1, 2, 3, 7, 8, 9, 63, 64, 65, 100, 1000, 4097, 50_000])
def test_finds_every_threshold_of_a_unit_cost_curve(threshold):
    # peak = 1000 + 10 * b, the limit set so that exactly `threshold` fits.
    limit = 1000 + 10 * threshold
    strategy, history = simulate(limit, lambda b: 1000 + 10 * b)
    assert strategy.answer(history) == threshold


@pytest.mark.parametrize("margin", [0.05, 0.1, 0.25])
def test_margin_keeps_the_answer_below_the_edge(margin):
    limit, baseline = 10**9, 10**8
    peak_of = lambda b: baseline + 5 * 10**7 + 10**5 * b  # noqa: E731
    strategy, history = simulate(limit, peak_of, margin=margin, baseline=baseline)
    usable = baseline + (limit - baseline) * (1 - margin)
    assert strategy.usable_bytes == int(usable)
    assert strategy.answer(history) == true_max(int(usable), peak_of)
    assert peak_of(strategy.answer(history)) <= usable


def test_never_above_the_number_of_samples():
    strategy, history = simulate(10**9, lambda b: 1000 + b, num_samples=300)
    assert strategy.answer(history) == 300
    assert max(o.batch_size for o in history) == 300
    assert strategy.stop_reason == "limited by the number of training samples"


def test_fewer_samples_than_the_first_trial():
    strategy, history = simulate(10**9, lambda b: 1000 + b, num_samples=3)
    assert [o.batch_size for o in history] == [3]
    assert strategy.answer(history) == 3


def test_batch_one_not_fitting_gives_zero_and_says_why():
    strategy, history = simulate(100, lambda b: 150 + b)
    assert strategy.answer(history) == 0
    assert strategy.stop_reason == "batch size 1 does not fit"
    assert history[-1].batch_size == 1


def test_host_memory_is_never_exceeded_even_when_the_curve_bends_upwards():
    # A convex curve: the secant through small batches underestimates large ones. Host RAM
    # cannot be caught, so crossing the limit would be fatal (ProcessKilled).
    limit = 8 * 2**30
    peak_of = lambda b: 2**30 + 2**20 * b + 300 * b * b  # noqa: E731
    for margin in (0.05, 0.1):
        strategy, history = simulate(limit, peak_of, margin=margin, catchable=False)
        usable = strategy.usable_bytes
        assert peak_of(strategy.answer(history)) <= usable
        assert strategy.answer(history) >= 0.95 * true_max(usable, peak_of)


@pytest.mark.parametrize("knee", range(300, 940, 20))
def test_host_memory_survives_a_slope_that_triples_between_two_trials(knee):
    # TF/CPU memory jumps: one MLP step predicted at 12 MiB cost 23; on a CNN one step cost
    # 3x its share. A step is sized so that costing three times its prediction still ends
    # within the limit (simulate raises ProcessKilled past it); the answer keeps the margin.
    peak_of = lambda b: 100 + b if b <= knee else 100 + knee + 3 * (b - knee)  # noqa: E731
    strategy, history = simulate(1000, peak_of, margin=0.05, catchable=False)
    answer = strategy.answer(history)
    assert peak_of(answer) <= strategy.usable_bytes
    assert answer >= 0.9 * true_max(strategy.usable_bytes, peak_of)


def test_uses_about_half_the_trials_of_doubling_then_bisecting():
    def doubling_then_bisecting(fits):
        trials, batch = 0, 1
        while True:
            trials += 1
            if not fits(batch):
                break
            batch *= 2
        low, high = batch // 2, batch
        while high - low > 1:
            middle = (low + high) // 2
            trials += 1
            low, high = (middle, high) if fits(middle) else (low, middle)
        return trials

    ours, theirs = 0, 0
    for limit, fixed, per_sample in LINEAR_CASES:
        def peak_of(b, fixed=fixed, per_sample=per_sample):
            return fixed + per_sample * b

        _, history = simulate(limit, peak_of)
        ours += len(history)
        theirs += doubling_then_bisecting(lambda b, peak_of=peak_of, limit=limit: peak_of(b) <= limit)
    assert ours <= theirs / 2


def test_noisy_flat_measurements_fall_back_to_a_safe_slope():
    # Two trials that measured the same peak (allocator granularity): the line through them
    # is flat and would predict an infinite edge; the strategy must not jump to infinity.
    strategy = ProbeStrategy(limit_bytes=10_000, baseline_bytes=1000, margin=0.0, oom_is_catchable=False)
    history = [Observation(8, 2000), Observation(16, 2000)]
    model = strategy.memory_model(history)
    assert model == MemoryModel(1000.0, 1000 / 16)
    proposal = strategy.propose(history)
    assert proposal is not None and proposal.batch_size <= 16 * strategy.max_growth


def test_after_running_out_it_stays_below_the_failure():
    # The memory model is wrong above 100 (a step in the curve): it must bracket, not loop.
    peak_of = lambda b: 100 + b if b <= 100 else 10**9  # noqa: E731
    strategy, history = simulate(10_000, peak_of)
    assert strategy.answer(history) == 100
    assert len(history) <= 12
    assert not math.isinf(strategy.answer(history))


@pytest.mark.parametrize("catchable", [True, False])
def test_peaks_at_or_below_the_baseline_grow_by_the_largest_step_not_to_infinity(catchable):
    # A tiny model: every measured peak is at (or, after the heap was trimmed, below) the
    # baseline. The line predicts no cost at all; the next batch must still be a number.
    flat = lambda b: 900  # noqa: E731 - below the baseline of 1000
    strategy, history = simulate(10_000, flat, baseline=1000, num_samples=455, catchable=catchable)
    assert strategy.answer(history) == 455
    sizes = [o.batch_size for o in history]
    assert all(b2 <= b1 * strategy.max_growth for b1, b2 in zip(sizes, sizes[1:], strict=False))


def test_two_close_neighbours_that_scatter_do_not_stop_the_host_search():
    # Measured in-process on the zoo's CNN in a 1087 MiB cgroup (TF/CPU, peaks in MiB):
    # 578 and 580 samples peaked at 898 and 878. The line through the two largest batches
    # made the points below look like 200 MiB of scatter, so the probe stopped at 602 with
    # 180 MiB unused, while a fresh process trained at 933.
    mib = 2**20
    trace = {1: 370, 5: 394, 41: 487, 104: 538, 208: 645, 309: 718, 406: 744, 499: 804,
             578: 898, 580: 878, 602: 907}
    strategy = ProbeStrategy(limit_bytes=1087 * mib, baseline_bytes=314 * mib, margin=0.05,
                             oom_is_catchable=False, min_margin_bytes=64 * mib)
    history = [Observation(b, peak * mib) for b, peak in trace.items()]
    assert 0.6 * mib < strategy.memory_model(history).bytes_per_sample < 0.7 * mib
    proposal = strategy.propose(history)
    assert proposal is not None, strategy.stop_reason
    # A quarter of the 180 MiB left to the limit, less the scatter, at the steeper slope.
    assert 640 <= proposal.batch_size <= 680


@pytest.mark.parametrize("seed", range(20))
def test_host_search_survives_scatter_of_tens_of_mib_and_keeps_the_margin(seed):
    # TF/CPU: a concave curve (the cost of a sample falls as the batch grows) whose peaks
    # jump by up to +-25 MiB from one batch size to the next (malloc's arenas).
    import random

    mib = 2**20
    jitter = random.Random(seed)
    noise = {}

    def peak_of(b):
        noise.setdefault(b, jitter.uniform(-25, 25) * mib)
        return int(400 * mib + 6 * mib * b**0.8 + noise[b])

    limit = 400 * mib + jitter.uniform(500, 3000) * mib
    strategy = ProbeStrategy(limit_bytes=int(limit), baseline_bytes=350 * mib, margin=0.05,
                             oom_is_catchable=False, min_margin_bytes=64 * mib)
    history = []
    while (proposal := strategy.propose(history)) is not None:
        peak = peak_of(proposal.batch_size)
        assert peak <= limit, f"killed at {proposal.batch_size} after {history}"
        history.append(Observation(proposal.batch_size, peak))
    answer = strategy.answer(history)
    # An interpolated answer was never run: its noise is a new draw, up to the jitter's
    # whole swing above the usable memory, which the 64 MiB margin still keeps under the limit.
    assert peak_of(answer) <= strategy.usable_bytes + 50 * mib < limit
    # Within 15% of the largest batch whose noise-free peak is usable.
    ideal = ((strategy.usable_bytes - 400 * mib) / (6 * mib)) ** (1 / 0.8)
    assert answer >= 0.85 * ideal, (answer, ideal, [o.batch_size for o in history], strategy.stop_reason)


def test_a_flat_curve_never_licenses_a_large_jump():
    # A process that trained before: memory its training freed is reused, so peaks stay flat
    # up to batch 300, then each sample costs 1 MiB more. A flat curve is no evidence of room:
    # the batch at most doubles, so the first step past the hidden region cannot reach the
    # limit.
    mib = 2**20
    limit = 1300 * mib

    def peak_of(b):
        return 780 * mib + max(0, b - 300) * mib

    strategy, history = simulate(limit, peak_of, margin=0.1, catchable=False, baseline=778 * mib)
    sizes = [o.batch_size for o in history]
    flat = [o for o in history if o.peak_bytes == 780 * mib]
    for before, after in zip(flat, flat[1:], strict=False):
        assert after.batch_size <= 2 * before.batch_size
    assert peak_of(strategy.answer(history)) <= limit, sizes
    assert strategy.answer(history) >= 0.9 * true_max(strategy.usable_bytes, peak_of), sizes


def test_a_step_that_costs_three_times_its_prediction_shrinks_the_next_steps():
    # After a step that cost 3x its prediction, the next step is sized to survive 4.5x (1.5
    # times the worst surprise), not the default 4x.
    strategy = ProbeStrategy(limit_bytes=10_000, baseline_bytes=0, margin=0.1, oom_is_catchable=False)
    history = [Observation(1, 1000), Observation(10, 1100), Observation(100, 2000)]
    assert strategy.surprise(history) == pytest.approx(1.0)
    surprised = history + [Observation(200, 2000 + 3 * 1000)]
    assert strategy.surprise(surprised) == pytest.approx(3.0, rel=0.05)
    step_slope = (5000 - 1000) / (200 - 1)  # the steeper of the fitted and whole-range slopes
    next_batch = strategy.propose(surprised).batch_size
    assert 200 < next_batch <= 200 + (10_000 - 5000) / (1.5 * 3.0) / step_slope


def shape_curve(num_samples):
    """Memory that follows the sum of the batch shapes a trial runs (its full and partial
    batches, training and validation), as TF/CPU keeps memory per shape: an LSTM trial at
    600 of 2048 samples peaked 287 MiB above one at 540, where its line predicted 70."""
    import numpy as np

    from autobatch.data import ArrayData

    load = ArrayData(np.zeros((num_samples, 1)), np.zeros(num_samples)).batch_shapes_load
    return load, lambda batch_size: 340 * MIB + 0.3 * MIB * load(batch_size)


MIB = 2**20


@pytest.mark.parametrize(("num_samples", "limit_mib"),
                         [(2048, 1179), (3000, 2500), (5000, 900), (10_000, 1500)])
def test_host_steps_survive_memory_that_grows_with_every_batch_shape(num_samples, limit_mib):
    load, peak_of = shape_curve(num_samples)
    strategy, history = simulate(limit_mib * MIB, peak_of, margin=0.1, num_samples=num_samples,
                                 catchable=False, baseline=340 * MIB, shape_load=load)
    answer = strategy.answer(history)
    assert peak_of(answer) <= strategy.usable_bytes
    assert answer >= 0.5 * true_max(strategy.usable_bytes, peak_of, cap=num_samples)


def test_without_the_shapes_a_host_step_into_a_large_partial_batch_is_killed():
    load, peak_of = shape_curve(5000)
    with pytest.raises(ProcessKilled):
        simulate(900 * MIB, peak_of, margin=0.1, num_samples=5000, catchable=False,
                 baseline=340 * MIB)


def worker_strategy(limit_mib, baseline_mib, **overrides):
    """The strategy as isolated (worker) probes configure it: a killed worker is an
    observation, peaks scatter between processes, answers are measured batches."""
    settings = dict(limit_bytes=limit_mib * MIB, baseline_bytes=baseline_mib * MIB, margin=0.05,
                    start_batch_size=1, oom_is_catchable=True, tolerance=0.05,
                    measured_answers_only=True)
    return ProbeStrategy(**{**settings, **overrides})


def history_of(trials_mib):
    return [Observation(b, None if peak is None else int(peak * MIB)) for b, peak in trials_mib]


# Real worker trials of probe_bench at 16d541e (batch, peak MiB; None: the worker was killed).
LSTM_TRIALS = [(1, 368), (14, 377), (1007, None), (510, 907), (704, 1072), (754, 1061), (807, 1083),
               (884, 1116)]
MOBILENET_TRIALS = [(1, 707), (5, 762), (129, 1450), (313, 2521)]


def test_a_near_miss_just_above_the_largest_fit_ends_the_worker_search():
    # The line puts the LSTM's limit at 879, just under 884 which ran past the margin; 807
    # fitted. Trying 880 (then 843, whose verification failed) gained nothing in that run.
    strategy = worker_strategy(1156, 311)
    assert strategy.propose(history_of(LSTM_TRIALS)) is None
    assert "within the tolerance under a batch that did not fit" in strategy.stop_reason
    assert strategy.answer(history_of(LSTM_TRIALS)) == 807


def test_after_a_near_miss_far_above_the_largest_fit_the_worker_steps_back_twice_the_tolerance():
    strategy = worker_strategy(2586, 350)
    proposal = strategy.propose(history_of(MOBILENET_TRIALS))
    # The line's edge is ~305, 3% under 313: the next trial goes 10% under 313, not to 305.
    assert proposal.batch_size == math.floor(313 * 0.9)
    # Once it fits there, the search is over: the batch under the near miss is a coin toss.
    history = history_of([*MOBILENET_TRIALS, (281, 2309)])
    assert strategy.propose(history) is None
    assert strategy.answer(history) == 281


def test_a_device_with_exact_peaks_still_tries_right_under_a_near_miss():
    # Without scatter (a GPU allocator), the batch under a near miss is the real answer.
    strategy = worker_strategy(2586, 350, measured_answers_only=False, tolerance=0.01)
    history = history_of(MOBILENET_TRIALS)
    edge = strategy.memory_model(history).largest_batch_under(strategy.usable_bytes)
    assert 0.95 * 313 < edge < 313
    assert strategy.propose(history).batch_size == math.floor(edge)


# The CNN's worker trials of probe_bench at 50a2f79 (bytes): 675 and 607 both ran 1 MiB past
# the margin, then 574 and 558 ran past it too; the answer stayed 542.
CNN_TRIALS_BYTES = [(1, 361758720), (11, 375123968), (355, 672796672), (542, 756277248),
                    (719, 861159424), (675, 836714496), (607, 835842048)]


def test_trials_past_the_margin_that_peak_alike_end_the_worker_search():
    strategy = worker_strategy(0, 0, limit_bytes=868_958_208, baseline_bytes=317_300_736,
                               min_margin_bytes=32 * MIB)
    history = [Observation(b, peak) for b, peak in CNN_TRIALS_BYTES]
    assert strategy.propose(history) is None
    assert "peaked alike" in strategy.stop_reason
    assert strategy.answer(history) == 542
    # Before 607 ran, 675 and 719 fell with the line: the search went on (to 607).
    assert strategy.propose(history[:-1]) is not None


def test_trials_past_the_margin_that_fall_with_the_line_do_not_end_the_search():
    strategy = worker_strategy(1000, 300)
    # 1 MiB a sample; 700 and 680 ran past the usable 965 MiB and fell as the line predicts.
    history = history_of([(1, 300), (100, 400), (500, 800), (700, 1000), (680, 980)])
    proposal = strategy.propose(history)
    assert proposal is not None and 500 < proposal.batch_size < 680


def test_trials_past_the_margin_that_peak_alike_far_above_the_largest_fit_split_the_bracket():
    # Another CNN run (64d98a3): 620 ran 8 MiB past the margin, then 558 peaked higher still;
    # 429 fitted, 30% under 558. Stopping there answered 0.63 of the real maximum.
    strategy = worker_strategy(0, 0, limit_bytes=869_000_000, baseline_bytes=317_000_000,
                               min_margin_bytes=32 * MIB)
    history = history_of([(1, 345), (11, 355), (429, 658), (620, 805), (558, 817)])
    assert strategy.propose(history).batch_size == (429 + 558) // 2
    # The same when 558 peaked a little lower than 620 (a catchable device's line through
    # the two largest batches is then nearly flat and put the edge under 429).
    for peak_558 in (806, 805, 804, 800):
        history = history_of([(1, 345), (11, 355), (429, 658), (620, 805), (558, peak_558)])
        assert strategy.propose(history).batch_size == (429 + 558) // 2, peak_558
    # Once the bracket is narrow, the search ends at the largest fit.
    assert strategy.propose([*history, *history_of([(493, 700)])]) is None
    assert "peaked alike" in strategy.stop_reason
