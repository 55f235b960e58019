"""Data parallelism for the probe: how many replicas share a global batch, and the search in
per-replica steps.

Under ``tf.distribute.MirroredStrategy`` (a model built inside ``strategy.scope()``) or
Keras 3's ``keras.distribution.DataParallel`` on JAX, ``model.fit(batch_size=B)`` splits
each global batch of ``B`` samples over ``N`` replicas, one device each. What has to fit
is one replica's share, ``B / N`` samples, on its own device; what the optimizer sees is
the global batch. So the probe tries global batches that are multiples of ``N`` (a batch
of 1 on 2 replicas leaves one replica empty, which TensorFlow refuses), and reports both.

Memory: on GPUs the memory backend measures every device and the tightest one decides
(peak = the largest per-device peak, limit = the smallest per-device limit), which is the
device of the replica that runs out first. Logical CPU devices (tests, or CPU training
spread over cores) all live in one process and share the host's RAM: the probe then
measures the whole process against that one limit, so ``max_batch_size`` is the global
batch that fits in the RAM all replicas share, and ``per_replica_batch_size`` is only its
share per replica, not what one device could hold alone. Adding logical CPU devices does
not add memory.

Example:
    >>> replicas = detect_replicas(model)      # built under MirroredStrategy on 2 GPUs
    >>> replicas.num_replicas, replicas.devices
    (2, ('GPU:0', 'GPU:1'))
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from autobatch.errors import InvalidArgumentError
from autobatch.probing.strategy import Observation, ProbeStrategy, Proposal

__all__ = ["ReplicaProbeStrategy", "Replicas", "detect_replicas", "multiple_below", "strategy_scope"]


@dataclass(frozen=True)
class Replicas:
    """The data-parallel replicas a model trains on: one per device, each taking an equal
    share of every global batch."""

    num_replicas: int
    devices: tuple[str, ...] = ()
    """The replicas' devices, e.g. ``("GPU:0", "GPU:1")``; empty without distribution."""


NO_REPLICAS = Replicas(1)


def detect_replicas(model: Any) -> Replicas:
    """The replicas ``model`` trains on: its ``tf.distribute`` strategy on TensorFlow, the
    global Keras distribution on JAX; one replica (and no devices) without either."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_replicas(model)
    if backend == "jax":
        return _jax_replicas()
    return NO_REPLICAS  # torch: Keras 3 distributes only on TensorFlow and JAX


def _tensorflow_replicas(model: Any) -> Replicas:
    # Keras' TensorFlow trainer keeps the strategy whose scope the model was built in, and
    # falls back to the strategy of the current scope (the default one: a single replica).
    strategy = getattr(model, "distribute_strategy", None)
    count = 1 if strategy is None else int(strategy.num_replicas_in_sync)
    if strategy is None or count <= 1:
        return NO_REPLICAS
    devices = tuple(_short_device_name(d) for d in strategy.extended.worker_devices)
    return Replicas(count, devices)


def _jax_replicas() -> Replicas:
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None:
        return NO_REPLICAS
    mesh = distribution.device_mesh
    batch_axis = list(mesh.axis_names).index(distribution.batch_dim_name)
    count = int(mesh.shape[batch_axis])
    if count <= 1:
        return NO_REPLICAS
    return Replicas(count, tuple(str(d) for d in mesh.devices.flatten()))


def strategy_scope(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The scope of the ``tf.distribute`` strategy ``model`` was built under (nothing to enter
    without one): an optimizer made for it must be made there, or its first step raises
    "Mixing different tf.distribute.Strategy objects"."""
    strategy = getattr(model, "_distribute_strategy", None)  # Keras' TensorFlow trainer
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def _short_device_name(name: str) -> str:
    """"/job:localhost/replica:0/task:0/device:GPU:1" -> "GPU:1"."""
    return name.rsplit("device:", 1)[-1]


def multiple_below(batch_size: int, num_replicas: int) -> int:
    """The largest multiple of ``num_replicas`` at or below ``batch_size`` (0 when none).

    Example:
        >>> multiple_below(45, 4)
        44
    """
    return batch_size - batch_size % num_replicas


class ReplicaProbeStrategy(ProbeStrategy):
    """`ProbeStrategy` stepping in whole per-replica samples: every batch it proposes or
    answers is a global batch, a multiple of ``num_replicas``.

    The search runs on per-replica batch sizes (global // num_replicas), so its start (8
    per replica on a GPU, 1 on host RAM), its growth limits and its tolerance keep their
    meaning per device, and ``max_batch_size`` is per replica. What reads the history as
    peaks against batch sizes (``fits``, ``memory_model``, ``answer``) needs no units and
    takes global batches, as the probe records them: ``memory_model`` then gives the line
    per global sample, ``peak = fixed + bytes_per_sample * global_batch``. With one replica
    it is exactly `ProbeStrategy`.

    Example:
        >>> strategy = ReplicaProbeStrategy(2, limit_bytes=1000, baseline_bytes=0, margin=0.0)
        >>> strategy.propose([]).batch_size   # 8 per replica
        16
    """

    def __init__(self, num_replicas: int, *, max_batch_size: int | None = None, **settings: Any):
        """
        Args:
            num_replicas: Replicas sharing each global batch (1 without distribution).
            max_batch_size: The largest global batch to try.
            settings: The other `ProbeStrategy` arguments, unchanged (``start_batch_size``
                is per replica).

        Raises:
            InvalidArgumentError: ``max_batch_size`` is below ``num_replicas``.
        """
        if max_batch_size is not None and max_batch_size < num_replicas:
            raise InvalidArgumentError(
                f"The largest batch allowed is {max_batch_size} (max_batch_size or the number "
                f"of samples), below the {num_replicas} replicas the model trains on: each "
                f"replica needs at least one sample. Pass max_batch_size >= {num_replicas}, "
                "or more training samples."
            )
        per_replica_cap = None if max_batch_size is None else max_batch_size // num_replicas
        global_load = settings.pop("shape_load", None)
        if global_load is not None:  # the search steps per replica; the data's shapes are global
            settings["shape_load"] = lambda per_replica: global_load(per_replica * num_replicas)
        super().__init__(max_batch_size=per_replica_cap, **settings)
        self.num_replicas = num_replicas

    def propose(self, history: list[Observation]) -> Proposal | None:
        # Every batch in the history came from here, so each divides exactly.
        per_replica = [Observation(o.batch_size // self.num_replicas, o.peak_bytes) for o in history]
        proposal = super().propose(per_replica)
        if proposal is None:
            return None
        return Proposal(proposal.batch_size * self.num_replicas, proposal.fitted)

    def answer(self, history: list[Observation]) -> int:
        # Interpolated answers fall between two multiples; the lower one keeps the margin.
        return multiple_below(super().answer(history), self.num_replicas)
