"""The benchmark model zoo: six small Keras models and synthetic data of realistic shapes.

Each builder returns ``(compiled model, (x, y))``. Data is generated locally from a seed
(no downloads), so every fresh benchmark process builds exactly the same model and data.
Sizes are chosen so that CPU runs stay short: the largest batches that fit under the
benchmarks' memory limits are a few hundred to a few thousand samples.

Example:
    >>> from benchmarks import zoo
    >>> model, (x, y) = zoo.build("cnn", seed=0)
    >>> model.fit(x, y, batch_size=64, epochs=1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["MODELS", "ModelSpec", "build", "describe"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    num_samples: int
    builder: Callable[[int, int], tuple[Any, tuple[Any, Any]]]


def _compile(model: Any) -> Any:
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _labels(rng: np.random.Generator, num_samples: int, num_classes: int) -> np.ndarray:
    return rng.integers(0, num_classes, size=num_samples).astype("int32")


def _images(rng: np.random.Generator, num_samples: int, side: int) -> np.ndarray:
    # uint8 pixels as images are stored: a quarter of float32's memory for the data itself.
    return rng.integers(0, 256, size=(num_samples, side, side, 3), dtype=np.uint8)


def mlp(num_samples: int, seed: int) -> tuple[Any, tuple[Any, Any]]:
    """A 5-layer MLP on flattened 28x28 images (MNIST shaped), 10 classes."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.random((num_samples, 784), dtype=np.float32)
    y = _labels(rng, num_samples, 10)
    model = keras.Sequential(
        [
            keras.Input((784,)),
            *[keras.layers.Dense(1024, activation="relu") for _ in range(4)],
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="mlp",
    )
    return _compile(model), (x, y)


def cnn(num_samples: int, seed: int) -> tuple[Any, tuple[Any, Any]]:
    """A small VGG-style CNN on 32x32x3 uint8 images (CIFAR-10 shaped), 10 classes."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = _images(rng, num_samples, 32)
    y = _labels(rng, num_samples, 10)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10, activation="softmax"),
        ],
        name="cnn",
    )
    return _compile(model), (x, y)


def mobilenet_v2(num_samples: int, seed: int) -> tuple[Any, tuple[Any, Any]]:
    """keras.applications.MobileNetV2 (alpha 0.35, random weights, no download), 96x96x3 uint8, 10 classes."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = _images(rng, num_samples, 96)
    y = _labels(rng, num_samples, 10)
    network = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10
    )
    model = keras.Sequential(
        [keras.Input((96, 96, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1), network],
        name="mobilenet_v2",
    )
    return _compile(model), (x, y)


def lstm(num_samples: int, seed: int) -> tuple[Any, tuple[Any, Any]]:
    """An LSTM text classifier: 20k-word vocabulary, 200-token reviews (IMDB shaped), 2 classes."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 20_000, size=(num_samples, 200)).astype("int32")
    y = _labels(rng, num_samples, 2)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((200,), dtype="int32"),
            layers.Embedding(20_000, 64),
            layers.LSTM(128),
            layers.Dense(2, activation="softmax"),
        ],
        name="lstm",
    )
    return _compile(model), (x, y)


def transformer(num_samples: int, seed: int) -> tuple[Any, tuple[Any, Any]]:
    """A 2-block Transformer encoder (d_model 128, 4 heads) on 128-token sequences, 2 classes."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    vocabulary, length, width = 20_000, 128, 128
    x = rng.integers(1, vocabulary, size=(num_samples, length)).astype("int32")
    y = _labels(rng, num_samples, 2)
    layers = keras.layers

    tokens = keras.Input((length,), dtype="int32")
    positions = keras.ops.arange(length)
    hidden = layers.Embedding(vocabulary, width)(tokens) + layers.Embedding(length, width)(positions)
    for _ in range(2):
        attended = layers.MultiHeadAttention(num_heads=4, key_dim=width // 4, dropout=0.1)(
            hidden, hidden
        )
        hidden = layers.LayerNormalization()(hidden + attended)
        feed_forward = layers.Dense(2 * width, activation="gelu")(hidden)
        feed_forward = layers.Dense(width)(feed_forward)
        hidden = layers.LayerNormalization()(hidden + feed_forward)
    pooled = layers.GlobalAveragePooling1D()(hidden)
    outputs = layers.Dense(2, activation="softmax")(pooled)
    model = keras.Model(tokens, outputs, name="transformer")
    return _compile(model), (x, y)


def batch_attention(num_samples: int, seed: int) -> tuple[Any, tuple[Any, Any]]:
    """An MLP whose middle layer attends over the other samples of the batch (in-batch
    negatives, set models): a batch x batch score matrix, so memory grows with the square of
    the batch and the curve bends upwards where a line fitted to small batches predicts less."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.random((num_samples, 64), dtype=np.float32)
    y = _labels(rng, num_samples, 10)

    from benchmarks._zoo_layers import InBatchAttention

    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            InBatchAttention(),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="batch_attention",
    )
    return _compile(model), (x, y)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mlp", "MLP 784-4x1024-10", 16384, mlp),
        ModelSpec("cnn", "CNN 4 conv, 32x32x3", 4096, cnn),
        ModelSpec("mobilenet_v2", "MobileNetV2 a=0.35, 96x96x3", 1024, mobilenet_v2),
        ModelSpec("lstm", "LSTM(128), 200 tokens", 2048, lstm),
        ModelSpec("transformer", "Transformer 2x128, 128 tokens", 2048, transformer),
        ModelSpec(
            "batch_attention", "MLP with in-batch attention (memory ~ batch^2)", 8192, batch_attention
        ),
    )
}


def build(name: str, *, seed: int = 0, num_samples: int | None = None) -> tuple[Any, tuple[Any, Any]]:
    """Build the named model and its synthetic data: ``(compiled model, (x, y))``."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Expected one of {sorted(MODELS)}.")
    spec = MODELS[name]
    return spec.builder(num_samples or spec.num_samples, seed)


def describe(name: str) -> str:
    return MODELS[name].description
