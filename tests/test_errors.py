"""No raw backend text or ANSI codes ever reaches an AutobatchError message; the original
exception stays reachable as ``__cause__``."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import autobatch
from autobatch.errors import MAX_BACKEND_TEXT, describe_backend_error

N = 32


class PrebuiltDense(keras.Model):
    """Subclassed (so the data check cannot see its inputs), built for 4 features."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.dense.build((None, 4))

    def call(self, x):
        return self.dense(x)


def subclassed():
    model = PrebuiltDense()
    model.compile("sgd", "mse")
    return model


def sequential():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def assert_one_clean_line(message: str) -> None:
    assert "\n" not in message
    assert "\x1b" not in message
    assert "Detected at node" not in message
    assert "{{node" not in message
    assert "Arguments received by" not in message


def test_keras_layer_errors_become_their_one_meaningful_line():
    text = (
        "Exception encountered when calling Sequential.call().\n\n\x1b[1mInput 0 of layer "
        "'dense' is incompatible with the layer: expected axis -1 of input shape to have value "
        "4, but received input with shape (None, 5)\x1b[0m\n\nArguments received by "
        "Sequential.call():\n  • inputs=tf.Tensor(shape=(None, 5), dtype=float32)"
    )
    assert describe_backend_error(ValueError(text)) == (
        "ValueError: Input 0 of layer 'dense' is incompatible with the layer: expected axis -1 "
        "of input shape to have value 4, but received input with shape (None, 5)"
    )


def test_tensorflow_graph_dumps_are_dropped():
    text = (
        "Graph execution error:\n\nDetected at node sequential_1/Cast defined at (most recent "
        'call last):\n  File "train.py", line 19, in <module>\n\n  File "core.py", line 161, '
        "in convert_to_tensor\n\nCast string to float is not supported\n\t [[{{node "
        "sequential_1/Cast}}]] [Op:__inference_multi_step_on_iterator_636]"
    )
    error = tf.errors.UnimplementedError(None, None, text)
    described = describe_backend_error(error)
    assert described == "UnimplementedError: Cast string to float is not supported"
    one_line = (
        "Dimensions must be equal, but are 5 and 3 for '{{node compile_loss/mse/sub}} = "
        "Sub[T=DT_FLOAT](data_1, dense_1/BiasAdd)' with input shapes: [?,5], [?,3]."
    )
    assert describe_backend_error(ValueError(one_line), with_type=False) == (
        "Dimensions must be equal, but are 5 and 3 with input shapes: [?,5], [?,3]"
    )


def test_long_messages_are_capped():
    described = describe_backend_error(RuntimeError("x" * 5000))
    assert len(described) == len("RuntimeError: ") + MAX_BACKEND_TEXT
    assert described.endswith("...")
    assert describe_backend_error(RuntimeError()) == "RuntimeError"


def test_a_failed_probe_trial_is_one_clean_line_with_its_cause():
    x, y = np.ones((N, 5), "float32"), np.ones((N, 1), "float32")
    with pytest.raises(autobatch.TrialError, match=r"^Training at batch size 1 failed with "
                       r"ValueError: .*expected axis -1 of input shape to have value 4.*\. "
                       r"This is not an out-of-memory error") as info:
        autobatch.probe(subclassed(), (x, y), memory=autobatch.FakeMemory(10**9), verbose=0)
    assert_one_clean_line(str(info.value))
    assert "\x1b" in str(info.value.__cause__)  # the full backend text is kept there


def test_a_failed_search_candidate_is_one_clean_line_with_its_cause(tmp_path):
    x, y = np.ones((N, 4), "float32"), np.ones((N, 1), "float32")
    memory = autobatch.FakeMemory(10**9)
    probed = autobatch.probe(sequential(), (x, y), memory=memory, use_cache=False, verbose=0)
    unbroadcastable = np.ones((N, 3, 5), "float32")  # no check foresees it: the loss fails
    with pytest.raises(autobatch.TrialError, match=r"^Training the candidate batch_size=\d+, "
                       r"steps_per_epoch=\d+ failed with \w+Error: Incompatible shapes") as info:
        autobatch.tune(
            sequential(), (x, unbroadcastable), probe=probed, memory=memory, tuner="grid",
            batch_sizes=[16], steps_per_epoch=[1.0], budget_samples=64, directory=tmp_path,
            verbose=0,
        )
    assert_one_clean_line(str(info.value))
    assert info.value.__cause__ is not None


def test_kind_of_names_a_type_with_its_article():
    import numpy as np

    from autobatch.errors import kind_of

    assert [kind_of(v) for v in (5, [1], np.zeros(1), "x", {}, np.uint8(1))] == [
        "an int", "a list", "an ndarray", "a str", "a dict", "a uint8"]


def test_a_long_backend_message_is_cut_between_words_unless_a_token_is_too_long():
    words = " ".join(["inference"] * 60)  # 599 characters of words
    described = describe_backend_error(ValueError(words), with_type=False, limit=100)
    assert described.endswith("inference...") and len(described) <= 100
    path = "Unable to open: /" + "x" * 400
    described = describe_backend_error(ValueError(path), with_type=False, limit=100)
    assert described.startswith("Unable to open: /xxx") and len(described) == 100
