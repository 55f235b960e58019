"""The public surface is small and pinned: a change here is a deliberate API change."""

import autobatch


def test_exported_members():
    assert sorted(autobatch.__all__) == sorted(
        [
            "AllTrialsFailedError", "AutobatchError", "BatchDoesNotFitError", "FakeMemory",
            "InvalidArgumentError", "InvalidDataError", "InvalidModelError", "InvalidResultError",
            "MissingDependencyError", "NoTrainingError", "ProbeResult", "ProbeTrial",
            "TrialError", "TuneResult", "TuneTrial", "WorkerDoesNotFitError", "load_result", "probe",
            "tune",
        ]
    )
    for name in autobatch.__all__:
        assert getattr(autobatch, name).__doc__, f"{name} has no docstring"


def test_every_error_is_an_autobatch_error():
    errors = [getattr(autobatch, n) for n in autobatch.__all__ if n.endswith("Error")]
    assert all(issubclass(e, autobatch.AutobatchError) for e in errors)


def test_importing_autobatch_loads_no_framework():
    import subprocess
    import sys

    frameworks = "('tensorflow', 'jax', 'torch', 'keras_tuner')"
    code = f"import sys, autobatch; print(sorted(m for m in {frameworks} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
