"""Custom layers of `benchmarks.zoo`, registered so that a saved zoo model loads anywhere.

A probe given a model file trains it in worker processes, which load the file: Keras finds a
custom layer there only if its module was imported and the layer registered. The benchmark
passes ``worker_imports=["benchmarks._zoo_layers"]``, as a user passes their own module.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="autobatch_zoo")
class InBatchAttention(keras.layers.Layer):
    """Each sample attends over the other samples of its batch: a batch x batch score matrix."""

    def call(self, hidden: Any) -> Any:
        ops = keras.ops
        scores = ops.matmul(hidden, ops.transpose(hidden)) / float(hidden.shape[-1]) ** 0.5
        return hidden + ops.matmul(ops.softmax(scores, axis=-1), hidden)
