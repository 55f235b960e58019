"""The keras-tuner HyperModel of a search: the caller's compiled model, or their own HyperModel.

keras-tuner's roles: the HyperModel describes the model and declares the space, the Oracle
picks values, the Tuner runs a trial. `BatchHyperModel` declares the batch settings up front
(plus the caller's own hyperparameters, if they pass a HyperModel), builds the model of a
candidate, and prepares it so every candidate starts alike: the caller's weights and an
optimizer of the same configuration (its learning rate scaled with the batch size if asked)
in the state the caller's optimizer is in: fresh for a model that has not trained, else its
step count and moments, which the caller's next ``fit`` continues from.
"""

from __future__ import annotations

import gc
import math
import warnings
from typing import Any

import keras_tuner
import numpy as np

from autobatch.errors import InvalidArgumentError, InvalidModelError, kind_of
from autobatch.probing.state import fresh_optimizer
from autobatch.search.space import SearchSpace

LR_SCALINGS = (None, "linear", "sqrt")


def lr_factor(lr_scaling: str | None, batch_size: int, reference_batch_size: int) -> float:
    """How much to multiply the learning rate by at ``batch_size``.

    Example:
        >>> lr_factor("sqrt", 128, 32)
        2.0
    """
    ratio = batch_size / reference_batch_size
    if lr_scaling == "linear":
        return ratio
    if lr_scaling == "sqrt":
        return math.sqrt(ratio)
    return 1.0


def learning_rate_of(optimizer: Any) -> float | None:
    """The optimizer's configured learning rate; None for a schedule."""
    import keras

    value = keras.optimizers.serialize(optimizer)["config"].get("learning_rate")
    return float(value) if isinstance(value, (int, float)) else None


def scaled_optimizer(optimizer: Any, factor: float) -> Any:
    """A fresh, unbuilt copy of ``optimizer`` whose learning rate is multiplied by ``factor``."""
    import keras

    if factor == 1.0:
        return fresh_optimizer(optimizer)
    config = keras.optimizers.serialize(optimizer)
    learning_rate = config["config"].get("learning_rate")
    if not isinstance(learning_rate, (int, float)):
        raise InvalidArgumentError(
            f"lr_scaling needs a constant learning rate, but the optimizer "
            f"{type(optimizer).__name__} has {type(learning_rate).__name__} "
            f"({learning_rate!r}). Use lr_scaling=None with a schedule or a wrapped optimizer, "
            "or compile with a float learning_rate."
        )
    config["config"]["learning_rate"] = float(learning_rate) * factor
    return keras.optimizers.deserialize(config)


def check_built_model(model: Any, source: str) -> None:
    """Raise `InvalidModelError` unless ``model`` is a compiled keras.Model."""
    import keras

    if not isinstance(model, keras.Model):
        raise InvalidModelError(
            f"{source} returned {kind_of(model)}. Expected a compiled keras.Model: "
            "build() must return the model after model.compile(optimizer=..., loss=...)."
        )
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        raise InvalidModelError(
            f"{source} returned model {model.name!r} uncompiled. Call "
            "model.compile(optimizer=..., loss=...) in build() before returning it."
        )


class BatchHyperModel(keras_tuner.HyperModel):
    """The search's HyperModel around a compiled model or the caller's HyperModel.

    Example:
        >>> hypermodel = BatchHyperModel(space, model=model)
        >>> with preserved(model):
        ...     built = hypermodel.build(hp)
        ...     learning_rate = hypermodel.prepare(built, batch_size=64)
        ...     hypermodel.fit(hp, built, x, y, batch_size=64)
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        model: Any = None,
        hypermodel: keras_tuner.HyperModel | None = None,
        lr_scaling: str | None = None,
        reference_batch_size: int = 32,
    ) -> None:
        super().__init__(name="autobatch")
        self.space = space
        self.model = model
        self.user_hypermodel = hypermodel
        self.lr_scaling = lr_scaling
        self.reference_batch_size = reference_batch_size
        # What every candidate of the caller's model starts from: the optimizer as given
        # (its configuration) and the weights as they are now.
        self.base_optimizer = None if model is None else model.optimizer
        self._initial_values = [] if model is None else [
            np.array(v.numpy(), copy=True) for v in model.variables
        ]
        # A model that already trained continues its optimizer's state (the step count,
        # Adam's moments) in the caller's next fit: candidates start from it too, or that
        # fit at fit_kwargs() trains another run than the one scored (a new user's
        # fine-tuned model: tune said 0.386, the retraining gave 0.379).
        self._initial_optimizer = None if model is None or not model.optimizer.built else [
            np.array(v.numpy(), copy=True) for v in model.optimizer.variables
        ]
        self._search_optimizer: Any = None

    def declare_hyperparameters(self, hp: keras_tuner.HyperParameters) -> None:
        self.space.declare(hp)
        if self.user_hypermodel is not None:
            self.user_hypermodel.declare_hyperparameters(hp)

    def build(self, hp: keras_tuner.HyperParameters) -> Any:
        if self.model is not None:
            return self.model
        assert self.user_hypermodel is not None  # tune() passes a model or a HyperModel
        # A new model per candidate: clear what the previous ones left in the session, so
        # memory does not grow across trials.
        import keras

        keras.backend.clear_session()
        gc.collect()
        model = self.user_hypermodel.build(hp)
        check_built_model(model, f"{type(self.user_hypermodel).__name__}.build()")
        return model

    def fit(self, hp: keras_tuner.HyperParameters, model: Any, *args: Any, **kwargs: Any) -> Any:
        # A caller's HyperModel may customise fit (augmentation, its own hyperparameters).
        if self.user_hypermodel is not None:
            return self.user_hypermodel.fit(hp, model, *args, **kwargs)
        return model.fit(*args, **kwargs)

    def prepare(self, model: Any, batch_size: int) -> float | None:
        """Give ``model`` a fresh optimizer (its learning rate scaled if asked) and, for the
        caller's model, the initial weights and the caller's optimizer state; return the
        learning rate (None for a schedule).

        For the caller's model the optimizer is fresh by *state*: one search optimizer is
        reset to the values of a newly built one of the same configuration. The functions
        Keras traced for it are then reused by every candidate; a new optimizer object per
        candidate would retrace them, and each retrace kept about 4 MiB that no garbage
        collection gave back (measured: 3.6 MiB per candidate, 0.2 with the reset). Run the
        search inside `preserved(model)`, which puts the caller's optimizer back.
        """
        factor = lr_factor(self.lr_scaling, batch_size, self.reference_batch_size)
        if self.model is None:  # a HyperModel's new model: a new optimizer costs nothing more
            model.optimizer = scaled_optimizer(model.optimizer, factor)
            if model.built:
                # Built here, not in fit's first traced step: variables created inside a
                # tf.function get a lazy-initialisation cond whose branch functions TF never
                # frees (16 per Adam model, most of 3.9 MiB per candidate in tune_rss).
                model.optimizer.build(model.trainable_variables)
            return learning_rate_of(model.optimizer)
        fresh = scaled_optimizer(self.base_optimizer, factor)
        fresh.build(model.trainable_variables)
        if self._search_optimizer is None or not _same_layout(self._search_optimizer, fresh):
            self._search_optimizer = fresh
            model.optimizer = fresh
            # Functions traced before (the caller's own fit) captured another optimizer.
            model.train_function = model.test_function = model.predict_function = None
        else:
            for variable, value in zip(self._search_optimizer.variables, fresh.variables, strict=True):
                variable.assign(value)
        self._continue_callers_optimizer()
        for variable, value in zip(model.variables, self._initial_values, strict=True):
            variable.assign(value)
        return learning_rate_of(fresh)

    def _continue_callers_optimizer(self) -> None:
        """Give the search optimizer the state the caller's had when the search began, all
        but its (possibly scaled) learning rate."""
        saved = self._initial_optimizer
        if saved is None:
            return
        variables = self._search_optimizer.variables
        if [tuple(v.shape) for v in variables] != [value.shape for value in saved]:
            # E.g. layers frozen since the last compile: the caller's next fit will rebuild
            # its optimizer too, so a fresh start is the closer match; say so once.
            warnings.warn(
                f"The model's {type(self.base_optimizer).__name__} holds state for other "
                "variables than the model trains now (recompile after freezing layers); the "
                "candidates start with a fresh optimizer, so a fit at fit_kwargs() on this "
                "model object may not repeat the winner's run exactly.", stacklevel=2)
            self._initial_optimizer = None
            return
        learning_rate = getattr(self._search_optimizer, "_learning_rate", None)
        for variable, value in zip(variables, saved, strict=True):
            if variable is not learning_rate:
                variable.assign(value)


def _same_layout(optimizer: Any, other: Any) -> bool:
    shapes = [(tuple(v.shape), str(v.dtype)) for v in optimizer.variables]
    return shapes == [(tuple(v.shape), str(v.dtype)) for v in other.variables]
