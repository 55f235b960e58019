"""How much a process that ran earlier probe trials holds, and adds to later peaks (host RAM).

``autobatch.probe`` measures every trial in the caller's process, one after another. On host
RAM, memory that earlier trials left allocated (allocator caches, kernel primitives traced for
each batch shape, freed heap malloc keeps) is counted in later trials' peaks, so the probe
sees less room than a fresh training process has. This script measures that drift directly:
in one process, batch ``--repeat`` first, then a probe-like sequence of other sizes, then
``--repeat`` again. For each trial: the memory in use just before it (after the probe's own
release: garbage collection and ``malloc_trim``), its peak, and the peak less that memory.

The drift is the repeat's second peak minus its first. It is what keeps the host probe's
answer below the largest batch a fresh process trains with (``probe_bench.py``).

Run:
    nice -n 10 python -m benchmarks.probe_drift --quick                  # cnn only
    nice -n 10 python -m benchmarks.probe_drift                          # cnn, mlp, lstm
    TF_ENABLE_ONEDNN_OPTS=0 python -m benchmarks.probe_drift --models cnn  # without oneDNN
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks import _common, zoo

#: Per model: the repeated batch, and the probe-like sizes run between its two trials.
SEQUENCES = {
    "cnn": (600, [32, 128, 256, 512, 700]),
    "mlp": (2048, [64, 512, 1024, 3072]),
    "lstm": (600, [32, 128, 256, 512, 800]),
}
QUICK_MODELS = ("cnn",)
STEPS = 3  # autobatch.probe's steps_per_trial


def measure(name: str) -> dict[str, Any]:
    """Run the sequence for one model in this process; one row per trial."""
    from autobatch.data import as_training_data
    from autobatch.memory.host import HostMemory
    from autobatch.probing.trial import run_trial

    repeat, between = SEQUENCES[name]
    model, (x, y) = zoo.build(name)
    memory = HostMemory()
    data = as_training_data((x, y)).for_trials()
    run_trial(model, data, 1, memory, steps=1)  # the probe's unmeasured warm-up
    rows = []
    for batch_size in [repeat, *between, repeat]:
        memory.release()
        before = memory.current_bytes()
        outcome = run_trial(model, data, batch_size, memory, steps=STEPS)
        rows.append({"batch_size": batch_size, "before_bytes": before, "peak_bytes": outcome.peak_bytes})
    first, last = rows[0], rows[-1]
    return {
        "model": name,
        "description": zoo.describe(name),
        "repeat": repeat,
        "trials": rows,
        "held_bytes": last["before_bytes"] - first["before_bytes"],
        "drift_bytes": last["peak_bytes"] - first["peak_bytes"],
    }


def table(entries: list[dict[str, Any]]) -> str:
    mib = _common.mib
    return _common.markdown_table(
        ["model", "batch", "first peak (MiB)", "peak after the other trials (MiB)", "drift (MiB)",
         "held since the first trial (MiB)", "drift / first increment"],
        [
            [
                e["model"], e["repeat"], mib(e["trials"][0]["peak_bytes"]),
                mib(e["trials"][-1]["peak_bytes"]), mib(e["drift_bytes"]), mib(e["held_bytes"]),
                e["drift_bytes"] / (e["trials"][0]["peak_bytes"] - e["trials"][0]["before_bytes"]),
            ]
            for e in entries
        ],
    )


def trials_table(entry: dict[str, Any]) -> str:
    mib = _common.mib
    return _common.markdown_table(
        ["batch", "in use before (MiB)", "peak (MiB)", "peak - before (MiB)"],
        [
            [t["batch_size"], mib(t["before_bytes"]), mib(t["peak_bytes"]),
             mib(t["peak_bytes"] - t["before_bytes"])]
            for t in entry["trials"]
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = _common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(SEQUENCES), help="default: all (quick: cnn)")
    args = parser.parse_args(argv)
    models = args.models or list(QUICK_MODELS if args.quick else SEQUENCES)
    _common.prepare_environment()
    started = time.perf_counter()
    meta = _common.run_metadata("quick" if args.quick else "full")
    entries = [measure(name) for name in models]
    payload = {
        "benchmark": "probe_drift",
        "meta": meta,
        "settings": {"steps": STEPS, "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default")},
        "models": entries,
        "seconds": time.perf_counter() - started,
    }
    path = _common.write_json(args.results_dir, _common.result_stem("probe_drift", args.quick), payload)
    print(f"## In-process drift of host peaks ({meta['mode']}): {meta['device']['cpu']}\n")
    print(table(entries))
    for entry in entries:
        print(f"\n### {entry['model']}: {entry['description']}\n")
        print(trials_table(entry))
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
