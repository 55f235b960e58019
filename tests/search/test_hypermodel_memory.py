"""A HyperModel's candidates leave no traced functions behind (tune_rss's per-candidate growth)."""

import gc

import keras
import keras_tuner
from tensorflow.python.eager.polymorphic_function import atomic_function

from autobatch.search.hypermodel import BatchHyperModel
from autobatch.search.space import build_space
from tests.search.test_tune import regression_data


class Widths(keras_tuner.HyperModel):
    def build(self, hp):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(hp.Int("units", 2, 8)),
                                  keras.layers.Dense(1)])
        model.compile(optimizer="adam", loss="mse")
        return model


def test_a_candidates_optimizer_is_built_before_fit_so_tf_frees_its_functions():
    x, y = regression_data(64)
    space = build_space(num_samples=64, max_batch_size=64, endless=False,
                        batch_sizes=[16], steps_per_epoch=[1.0])
    hypermodel = BatchHyperModel(space, hypermodel=Widths())
    hp = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(hp)
    registered = []
    for units in (2, 3, 4):
        hp.values["units"] = units
        model = hypermodel.build(hp)
        hypermodel.prepare(model, batch_size=16)
        assert model.optimizer.built  # not left to the first traced train step
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        del model
        gc.collect()
        registered.append(len(atomic_function.RUNTIME_FUNCTION_REFS))
    # Built inside the traced step, Adam's variables left 2 cond branches each (8 here) per
    # model registered for good; built before, a finished candidate leaves none.
    assert registered[2] == registered[1], registered
