"""The processes a benchmark starts: each builds a zoo model afresh and does one job.

Run as ``python -m benchmarks._child '<json>'`` from the repository root, in a `MemoryCage`
(the parent moves it in before exec). Jobs:

- ``fit``: with ``epochs``, real training as a user runs it (the ground truth: killed = does
  not fit): ``model.fit(x, y, batch_size=b, epochs=epochs, validation_split=0.2)``; with
  ``steps`` instead, the short two-pass trial the peers run;
- ``probe``: run ``autobatch.probe`` (the limit found by itself) and check that the model's
  weights, optimizer variables and ``optimizer.iterations`` are unchanged afterwards. With
  ``train_first`` ({"batch_size", "steps"}) the model trains first, as a notebook user does
  before probing; with ``fit_after_epochs`` the answer is then used for real training in the
  same process (a second result line, ``{"fit_after": ...}``: a process killed there has
  already reported its probe);
- ``save``: write the model and its arrays to ``folder`` (model.keras, data.npz);
- ``probe_files``: a pipeline step, ``autobatch.probe("model.keras", "data.npz")`` in a
  process that never imports TensorFlow for it (trials in worker processes); with
  ``fit_after_epochs`` the same process then trains at the answer;
- ``worker``: a trial server for the peer strategies: one trial per ``<batch size>`` line read
  on stdin, one JSON line back, until stdin closes;
- ``sweep``: throughput and peak memory at each of a list of batch sizes, ascending.

Every answer is one line ``@@result <json>`` on stdout (TensorFlow may print other lines).
A child that the OOM killer ends prints nothing: the parent sees exit status -9.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

MARKER = "@@result "


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(MARKER + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_charged_bytes() -> int | None:
    """Peak RSS less file-backed pages (shared libraries): about what a cgroup charges.

    The explicit-limit mode compares this with the limit, the same measure autobatch's
    host backend uses, so a limit means the same to the ground truth and to the probe.
    """
    peak = _status_bytes("VmHWM")
    return None if peak is None else peak - (_status_bytes("RssFile") or 0)


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class _Peak:
    """Peak memory of a block, measured the way the limit is enforced.

    In a cgroup (v1): the cgroup's peak usage. On an accelerator (``device``): autobatch's
    backend for it (the allocator's peak). Otherwise: peak RSS less file-backed pages.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        cgroup = spec.get("cgroup")
        self.cgroup = Path(cgroup) if cgroup else None
        self.use_cgroup = bool(self.cgroup and (self.cgroup / "memory.max_usage_in_bytes").exists())
        self.backend = None
        if spec.get("device"):
            from autobatch.memory import detect_memory

            self.backend = detect_memory()
        self._trial: Any = None
        self._reading: Any = None

    def usage(self) -> int | None:
        if self.backend is not None:
            return self.backend.current_bytes()
        if self.use_cgroup:
            return int((self.cgroup / "memory.usage_in_bytes").read_text())
        return (_status_bytes("VmRSS") or 0) - (_status_bytes("RssFile") or 0)

    def limit(self) -> int | None:
        return None if self.backend is None else self.backend.limit_bytes()

    def reset(self) -> None:
        if self.backend is not None:
            self._trial = self.backend.trial(0)
            self._reading = self._trial.__enter__()
            return
        _reset_peak_rss()
        if self.use_cgroup:
            (self.cgroup / "memory.max_usage_in_bytes").write_text("0")

    def read(self) -> int | None:
        if self.backend is not None:
            self._trial.__exit__(None, None, None)
            return self._reading.peak_bytes
        if self.use_cgroup:
            return int((self.cgroup / "memory.max_usage_in_bytes").read_text())
        return _peak_charged_bytes()


def _train(model: Any, x: Any, y: Any, batch_size: int, steps: int) -> int:
    """Two passes of up to ``steps`` full batches plus the partial batch that ends every pass
    of real training on these arrays (the same trial as autobatch's probe): that last batch
    and the pass after it cost memory that full batches alone never show (an LSTM: +27%)."""
    import keras

    full = max(1, min(steps, len(x) // batch_size))
    remainder = len(x) % batch_size
    size = full * batch_size + remainder
    # The whole arrays as one tensor first, as fit copies them in real training; then the
    # part these steps use.
    x_all, y_all = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
    model.train_function = None  # every batch shape gets its own fresh train function
    model.fit(x_all[:size], y_all[:size], batch_size=batch_size, epochs=2, verbose=0)
    return 2 * (full + (remainder > 0))


def _fit_for_real(model: Any, x: Any, y: Any, batch_size: int, epochs: int) -> int:
    """Training as a user runs it: every pass ends with its partial batch and validates the
    last fifth at the same batch size. Returns the optimizer steps run."""
    before = int(model.optimizer.iterations.numpy())
    model.fit(x, y, batch_size=batch_size, epochs=epochs, validation_split=0.2, verbose=0)
    return int(model.optimizer.iterations.numpy()) - before


def _is_oom(error: BaseException) -> bool:
    from autobatch.memory.oom import is_out_of_memory

    return is_out_of_memory(error)


def job_fit(spec: dict[str, Any], model: Any, x: Any, y: Any) -> dict[str, Any]:
    peak = _Peak(spec)
    peak.reset()
    started = time.perf_counter()
    try:
        if spec.get("epochs"):
            steps = _fit_for_real(model, x, y, spec["batch_size"], spec["epochs"])
        else:
            steps = _train(model, x, y, spec["batch_size"], spec["steps"])
    except Exception as error:  # noqa: BLE001 - a catchable OOM (GPU) means "does not fit"
        if not _is_oom(error):
            raise
        return {"fits": False, "oom": "exception"}
    result = {
        "fits": True,
        "steps": steps,
        "seconds": time.perf_counter() - started,
        "peak_bytes": peak.read(),
        "peak_rss_bytes": _status_bytes("VmHWM"),
        "peak_charged_bytes": _peak_charged_bytes(),
    }
    limit = spec.get("explicit_limit")
    if limit is not None and result["peak_charged_bytes"] > limit:
        # No cgroup: the limit is simulated, and a peak above it counts as running out.
        result.update(fits=False, oom="peak above the explicit limit")
    return result


def _digests(variables: list[Any]) -> list[str]:
    import hashlib

    import numpy as np

    return [hashlib.sha256(np.ascontiguousarray(v.numpy()).tobytes()).hexdigest() for v in variables]


def _snapshot(model: Any) -> dict[str, Any]:
    """Digests, not copies: a copy in RAM would shrink the room the probe sees (by the model's
    size three times over with Adam) and make the comparison with fresh processes unfair."""
    optimizer = model.optimizer
    return {
        "weights": _digests(model.variables),
        "optimizer": _digests(optimizer.variables),
        "iterations": int(optimizer.iterations.numpy()),
        "optimizer_object": optimizer,
    }


def _same(before: dict[str, Any], after: dict[str, Any]) -> dict[str, bool]:
    return {
        "weights_unchanged": before["weights"] == after["weights"],
        "optimizer_variables_unchanged": before["optimizer"] == after["optimizer"],
        "iterations_unchanged": before["iterations"] == after["iterations"],
        "optimizer_object_unchanged": before["optimizer_object"] is after["optimizer_object"],
    }


def _give_optimizer_state(model: Any) -> None:
    """Build the optimizer and fill its state, as after some training, without training.

    A trained-before model makes "the probe left the optimizer alone" a real check; training
    for real first would also leave traced functions and input copies in this process and
    change the memory the probe starts from.
    """
    import numpy as np

    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    for variable in optimizer.variables:
        if "iteration" in variable.path:
            variable.assign(7)
        elif "learning_rate" not in variable.path:
            variable.assign(np.full(variable.shape, 1e-3, dtype=variable.dtype))


def job_probe(spec: dict[str, Any], model: Any, x: Any, y: Any) -> dict[str, Any]:
    import autobatch

    first = spec.get("train_first")
    if first:
        # A notebook user who trained a few steps before probing: that training's freed
        # memory is reused by the probe's trials and hides their slope.
        model.fit(x[: first["batch_size"] * first["steps"]], y[: first["batch_size"] * first["steps"]],
                  batch_size=first["batch_size"], epochs=1, verbose=0)
    else:
        _give_optimizer_state(model)
    before = _snapshot(model)
    started = time.perf_counter()
    # verbose: the trial lines go to this child's log, which shows where a killed probe was.
    try:
        result = autobatch.probe(
            model, (x, y), memory_limit=spec.get("explicit_limit"), verbose=1, use_cache=False
        )
    except autobatch.AutobatchError as error:
        # A clear refusal (e.g. no room for worker processes beside this one) is a result
        # of its own, not a crash of the benchmark.
        return {"error": f"{type(error).__name__}: {error}", "wall_seconds": time.perf_counter() - started,
                "preserved": _same(before, _snapshot(model))}
    seconds = time.perf_counter() - started
    payload = {
        "result": result.to_dict(),
        "wall_seconds": seconds,
        "preserved": _same(before, _snapshot(model)),
    }
    epochs = spec.get("fit_after_epochs")
    if not epochs:
        return payload
    _emit(payload)  # reported before training at the answer, which may be killed
    return {**payload, "fit_after": _fit_after(spec, model, x, y, result.max_batch_size)}


def job_save(spec: dict[str, Any], model: Any, x: Any, y: Any) -> dict[str, Any]:
    """Save the model and its arrays for a probe that is given files (``probe_files``)."""
    import numpy as np

    folder = Path(spec["folder"])
    arrays = {f"x_{k}": v for k, v in x.items()} if isinstance(x, dict) else {"x": x}
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", y=y, **arrays)
    return {"model_path": str(folder / "model.keras"), "data_path": str(folder / "data.npz")}


def job_probe_files(spec: dict[str, Any]) -> dict[str, Any]:
    """A pipeline step: ``autobatch.probe("model.keras", "data.npz")`` in a process that has not
    imported TensorFlow (trials in worker processes); then, with ``fit_after_epochs``, the
    script goes on to load the model and train at the answer in this same process."""
    import autobatch

    started = time.perf_counter()
    result = autobatch.probe(
        spec["model_path"], spec["data_path"], memory_limit=spec.get("explicit_limit"), verbose=1,
        worker_imports=["benchmarks._zoo_layers"],  # the batch attention model's layer
    )
    payload = {
        "result": result.to_dict(),
        "wall_seconds": time.perf_counter() - started,
        "supervisor_imported_tensorflow": "tensorflow" in sys.modules,
        "supervisor_peak_bytes": _peak_charged_bytes(),
    }
    epochs = spec.get("fit_after_epochs")
    if not epochs:
        return payload
    _emit(payload)
    from benchmarks import zoo

    model, (x, y) = zoo.build(spec["model"], seed=spec.get("seed", 0))
    return {**payload, "fit_after": _fit_after(spec, model, x, y, result.max_batch_size)}


def _fit_after(spec: dict[str, Any], model: Any, x: Any, y: Any, batch_size: int) -> dict[str, Any]:
    """Real training at the probe's answer in the probe's own process."""
    peak = _Peak(spec)
    peak.reset()
    fit_started = time.perf_counter()
    try:
        steps = _fit_for_real(model, x, y, batch_size, spec["fit_after_epochs"])
    except Exception as error:  # noqa: BLE001 - a catchable OOM (GPU) means "does not fit"
        if not _is_oom(error):
            raise
        return {"fits": False, "oom": "exception"}
    limit = spec.get("explicit_limit")
    fits = limit is None or (_peak_charged_bytes() or 0) <= limit  # no cgroup: simulated
    return {
        "fits": fits,
        "steps": steps,
        "seconds": time.perf_counter() - fit_started,
        "peak_bytes": peak.read(),
    }


def job_worker(spec: dict[str, Any], model: Any, x: Any, y: Any) -> None:
    peak = _Peak(spec)
    _emit({"ready": True, "usage_bytes": peak.usage(), "limit_bytes": peak.limit()})
    for line in sys.stdin:
        if not line.strip():
            continue
        batch_size = int(line)
        peak.reset()
        started = time.perf_counter()
        try:
            _train(model, x, y, batch_size, spec["steps"])
        except Exception as error:  # noqa: BLE001 - catchable OOM (GPU): report and go on
            if not _is_oom(error):
                raise
            _emit({"batch_size": batch_size, "fits": False, "seconds": time.perf_counter() - started})
            continue
        measured = peak.read()
        fits = True
        limit = spec.get("explicit_limit")
        if limit is not None and (_peak_charged_bytes() or 0) > limit:
            fits = False  # no cgroup: a peak above the simulated limit counts as running out
        _emit(
            {
                "batch_size": batch_size,
                "fits": fits,
                "peak_bytes": measured,
                "seconds": time.perf_counter() - started,
            }
        )


def job_sweep(spec: dict[str, Any], model: Any, x: Any, y: Any) -> dict[str, Any]:
    from autobatch.memory import detect_memory
    from benchmarks.throughput_bench import measure

    memory = detect_memory()
    points = []
    for batch_size in spec["batch_sizes"]:
        try:
            points.append(
                measure(model, x, y, batch_size, memory, min_seconds=spec["min_seconds"],
                        max_steps=spec["max_steps"])
            )
        except Exception as error:  # noqa: BLE001 - a catchable OOM (GPU) ends the sweep
            if not _is_oom(error):
                raise
            points.append({"batch_size": batch_size, "out_of_memory": True})
            break
    return {"points": points, "device": memory.device, "peak_source": memory.peak_source}


def main() -> None:
    spec = json.loads(sys.argv[1])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.perf_counter()
    if spec["job"] == "probe_files":
        _emit(job_probe_files(spec))
        return
    from benchmarks import zoo

    model, (x, y) = zoo.build(spec["model"], seed=spec.get("seed", 0))
    build_seconds = time.perf_counter() - started
    job = spec["job"]
    if job == "worker":
        job_worker(spec, model, x, y)
        return
    payload = {"fit": job_fit, "probe": job_probe, "sweep": job_sweep, "save": job_save}[job](spec, model, x, y)
    payload["startup_seconds"] = build_seconds
    _emit(payload)


if __name__ == "__main__":
    main()
