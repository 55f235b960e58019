"""is_out_of_memory: by exception type, specific library codes only, through wrapped causes."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from autobatch.memory import FakeOutOfMemoryError, is_out_of_memory

tf = pytest.importorskip("tensorflow")


# --- TensorFlow (real exception classes) -------------------------------------------------


def test_tensorflow_resource_exhausted_is_oom():
    error = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    assert is_out_of_memory(error)


@pytest.mark.parametrize(
    "kind, text",
    [
        ("InternalError", "Blas xGEMM launch failed: CUBLAS_STATUS_ALLOC_FAILED"),
        ("InternalError", "failed to create cublas handle: CUBLAS_STATUS_NOT_INITIALIZED"),
        ("UnknownError", "Failed to get convolution algorithm: CUDNN_STATUS_ALLOC_FAILED"),
        ("UnknownError", "Could not create cudnn handle: CUDNN_STATUS_NOT_INITIALIZED"),
        ("InternalError", "failed to allocate 2.00G: CUDA_ERROR_OUT_OF_MEMORY: out of memory"),
    ],
)
def test_tensorflow_library_allocation_failures_are_oom(kind, text):
    assert is_out_of_memory(getattr(tf.errors, kind)(None, None, text))


@pytest.mark.parametrize("kind", ["InternalError", "UnknownError", "InvalidArgumentError"])
def test_generic_tensorflow_errors_are_not_oom(kind):
    assert not is_out_of_memory(getattr(tf.errors, kind)(None, None, "Graph execution error"))


def test_a_real_failing_tensorflow_op_is_not_oom():
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        tf.reshape(tf.zeros([6]), [4, 4])
    assert not is_out_of_memory(caught.value)


# --- Python and NumPy --------------------------------------------------------------------


def test_memory_error_and_subclasses_are_oom():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(FakeOutOfMemoryError("fake device out of memory"))


def test_real_numpy_allocation_failure_is_oom():
    with pytest.raises(MemoryError) as caught:
        np.empty(2**60, dtype=np.uint8)  # an exbibyte: refused at once, nothing touched
    assert is_out_of_memory(caught.value)


@pytest.mark.parametrize(
    "error",
    [ValueError("out of memory"), RuntimeError("boom"), KeyboardInterrupt(), OSError(12, "ENOMEM")],
)
def test_other_errors_are_not_oom(error):
    # Typed, not by message: "out of memory" in a ValueError's text does not count.
    assert not is_out_of_memory(error)


@pytest.mark.parametrize(
    "text",
    [
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
        "cuDNN error: CUDNN_STATUS_NOT_INITIALIZED",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    ],
)
def test_runtime_errors_with_library_allocation_codes_are_oom(text):
    assert is_out_of_memory(RuntimeError(text))


# --- wrapped errors ----------------------------------------------------------------------


def test_oom_raised_from_is_found():
    oom = tf.errors.ResourceExhaustedError(None, None, "OOM")
    try:
        try:
            raise oom
        except Exception as inner:
            raise RuntimeError("training step failed") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)


def test_oom_in_context_is_found():
    try:
        try:
            raise MemoryError()
        except MemoryError:
            raise ValueError("while handling")  # noqa: B904 - the implicit __context__ is the point
    except ValueError as outer:
        assert is_out_of_memory(outer)


def test_cause_cycle_terminates():
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert not is_out_of_memory(first)


# --- JAX: no dedicated type; matched by class name, module and status ------------------


def _jax_error_class(name: str, module: str) -> type[RuntimeError]:
    # A stand-in with a real class's name and module (jaxlib.xla_extension in jaxlib
    # <= 0.4.x, jaxlib._jax later, jax.errors in jax 0.10), which is what the check reads.
    return type(name, (RuntimeError,), {"__module__": module})


@pytest.mark.parametrize(
    "name, module",
    [
        ("XlaRuntimeError", "jaxlib.xla_extension"),
        ("XlaRuntimeError", "jaxlib._jax"),
        ("JaxRuntimeError", "jax.errors"),  # jax 0.10
    ],
)
def test_jax_resource_exhausted_is_oom(name, module):
    error_class = _jax_error_class(name, module)
    text = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 7406166528 bytes."
    assert is_out_of_memory(error_class(text))
    assert is_out_of_memory(type("Sub", (error_class,), {})(text))  # subclasses too


def test_real_jax_oom_on_cpu():
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(RuntimeError) as caught:
        jnp.ones((2**41,), jnp.float32).block_until_ready()  # 8 TiB: refused at once
    assert is_out_of_memory(caught.value)


def test_jax_other_status_is_not_oom():
    error_class = _jax_error_class("XlaRuntimeError", "jaxlib.xla_extension")
    assert not is_out_of_memory(error_class("INTERNAL: Failed to launch kernel"))
    assert not is_out_of_memory(error_class("INVALID_ARGUMENT: RESOURCE_EXHAUSTED in text"))


def test_same_name_outside_jaxlib_is_not_oom():
    error_class = _jax_error_class("XlaRuntimeError", "somelib.errors")
    assert not is_out_of_memory(error_class("RESOURCE_EXHAUSTED: Out of memory"))


# --- torch: only when torch has been imported --------------------------------------------


def test_torch_out_of_memory_error_is_oom(monkeypatch):
    # A stand-in torch module exposing OutOfMemoryError the way torch >= 2.1 does
    # (torch.OutOfMemoryError, aliased as torch.cuda.OutOfMemoryError).
    torch = types.ModuleType("torch")
    torch.OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {"__module__": "torch"})
    torch.cuda = types.SimpleNamespace(OutOfMemoryError=torch.OutOfMemoryError)
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert not is_out_of_memory(error)  # torch not imported: cannot be a torch error
    monkeypatch.setitem(sys.modules, "torch", torch)
    assert is_out_of_memory(error)


def test_no_framework_is_imported():
    code = (
        "import sys\n"
        "from autobatch.memory import is_out_of_memory, detect_memory, available_backends\n"
        "is_out_of_memory(RuntimeError('x'))\n"
        "print(sorted(m for m in ('tensorflow', 'jax', 'jaxlib', 'torch', 'pynvml', 'keras')"
        " if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],  # the repository root
    )
    assert result.stdout.strip() == "[]"
