"""A probe worker without Keras, for tests of the supervisor (`autobatch.probing.isolated`).

Reads the same job file as `autobatch.probing.worker`; the "model" path names a JSON file
describing a memory curve instead: ``peak = baseline + per_sample * batch_size`` (plus
``verify_extra`` in a verification). A batch whose peak would pass ``kill_above`` kills the
process with SIGKILL, as the OOM killer would; ``error`` makes it report a typed error,
``crash`` makes it exit 3 after writing to stderr; ``spikes`` ({batch: bytes}) adds to the
peak of those batch sizes only. Every job is logged to ``log``.
"""

import json
import os
import signal
import sys
from pathlib import Path

from autobatch.probing.worker import MARKER

job = json.loads(Path(sys.argv[1]).read_text())
curve = json.loads(Path(job["model"]).read_text())
with open(curve["log"], "a") as log:
    log.write(json.dumps({"kind": job["kind"], "batch_size": job["batch_size"]}) + "\n")
if curve.get("crash"):
    sys.stderr.write("Segmentation fault in a fake kernel\n")
    sys.exit(3)
if curve.get("error"):
    answer = {"error": {"type": "InvalidDataError", "message": curve["error"]}}
    print(MARKER + json.dumps(answer))
    sys.exit(0)
batch_size = job["batch_size"]
peak = curve["baseline"] + curve["per_sample"] * batch_size
if job["kind"] == "verify":
    peak += curve.get("verify_extra", 0)
# A batch size that costs more than both neighbours (TF/CPU kernels chosen per shape).
peak += curve.get("spikes", {}).get(str(batch_size), 0)
if peak > curve["kill_above"]:
    os.kill(os.getpid(), signal.SIGKILL)
stop_above = job.get("stop_above_bytes")
stopped = stop_above is not None and peak > stop_above
if job["kind"] == "trial":
    outcome = {"batch_size": batch_size, "peak_bytes": peak, "steps": 3, "seconds_per_step": 0.01,
               "seconds": 0.05, "out_of_memory": False, "stopped_early": stopped}
else:
    outcome = {"batch_size": batch_size, "peak_bytes": peak, "epochs": 2, "train_steps": 8,
               "epoch_peak_bytes": [peak, peak], "stable": True, "out_of_memory": False,
               "stopped_early": stopped, "seconds": 0.1}
memory = {"name": "host", "device": "CPU (host RAM)", "peak_source": "fake", "limit_source": "fake",
          "limit_bytes": curve["limit"], "current_bytes": curve["baseline"],
          "oom_is_catchable": False, "default_margin": 0.1, "min_margin_bytes": 0}
print(MARKER + json.dumps({"memory": memory, "baseline_bytes": curve["baseline"],
                           "num_samples": curve["num_samples"], "backend": "none",
                           "versions": {}, "outcome": outcome}))
