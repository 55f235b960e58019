"""autobatch: the largest batch that fits, and the batch settings that train best, for Keras.

Example:
    >>> import autobatch
    >>> limit = autobatch.probe(model, (x_train, y_train))    # largest batch that fits
    >>> best = autobatch.tune(model, (x_train, y_train))      # batch_size, steps_per_epoch, epochs
    >>> model.fit(x_train, y_train, **best.fit_kwargs())
"""

from autobatch.errors import (
    AllTrialsFailedError,
    AutobatchError,
    BatchDoesNotFitError,
    InvalidArgumentError,
    InvalidDataError,
    InvalidModelError,
    InvalidResultError,
    MissingDependencyError,
    NoTrainingError,
    TrialError,
    WorkerDoesNotFitError,
)
from autobatch.memory.fake import FakeMemory
from autobatch.probing import probe
from autobatch.results import ProbeResult, ProbeTrial, TuneResult, TuneTrial, load_result
from autobatch.search import tune

__version__ = "0.1.0"

__all__ = [
    "AllTrialsFailedError",
    "AutobatchError",
    "BatchDoesNotFitError",
    "FakeMemory",
    "InvalidArgumentError",
    "InvalidDataError",
    "InvalidModelError",
    "InvalidResultError",
    "MissingDependencyError",
    "NoTrainingError",
    "ProbeResult",
    "ProbeTrial",
    "TrialError",
    "TuneResult",
    "TuneTrial",
    "WorkerDoesNotFitError",
    "load_result",
    "probe",
    "tune",
]
