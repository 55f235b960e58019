"""Is this exception an out-of-memory error? Decided by exception type, not by message.

Each framework has its own OOM type (TensorFlow's ``ResourceExhaustedError``, torch's
``OutOfMemoryError``, JAX's runtime error with status ``RESOURCE_EXHAUSTED``). Near the
limit, cuBLAS and cuDNN can also fail to allocate their workspaces and surface as a
generic internal error; only those specific status codes count, never a bare
``InternalError``, so a real bug in a training step is not mistaken for "too big".

A framework that is not in ``sys.modules`` is never imported here: if torch was never
imported, no exception can be a torch one, and importing it would cost seconds.
"""

from __future__ import annotations

import sys

__all__ = ["is_out_of_memory"]

# cuBLAS / cuDNN status codes that mean "could not get memory". NOT_INITIALIZED is here
# because both libraries report it when creating a handle fails for lack of device
# memory, which is how an OOM next to the limit usually shows up.
_LIBRARY_ALLOC_FAILURES = (
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_NOT_INITIALIZED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_INITIALIZED",
    "CUDA_ERROR_OUT_OF_MEMORY",
    "CUDA error: out of memory",
)

# JAX has no dedicated OOM type: the runtime raises one error class whose message starts
# with the XLA status code. The class moved between jaxlib modules over releases
# (jaxlib.xla_extension, jaxlib._jax) and was renamed, so match by module and name.
_JAX_ERROR_NAMES = ("XlaRuntimeError", "JaxRuntimeError")
_JAX_OOM_STATUS = "RESOURCE_EXHAUSTED"

# Keras and user code sometimes wrap the framework error; a cycle in the chain is possible.
_MAX_CHAIN = 32


def is_out_of_memory(error: BaseException) -> bool:
    """True when ``error`` (or an exception it was raised from) means "out of memory".

    Example:
        >>> try:
        ...     model.train_on_batch(x, y)
        ... except Exception as error:
        ...     if not is_out_of_memory(error):
        ...         raise
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        if _is_oom_itself(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_oom_itself(error: BaseException) -> bool:
    # MemoryError covers Python and NumPy allocation failures (and FakeOutOfMemoryError).
    if isinstance(error, MemoryError):
        return True
    return _is_tensorflow_oom(error) or _is_torch_oom(error) or _is_jax_oom(error) or (
        isinstance(error, RuntimeError) and _has_library_alloc_failure(error)
    )


def _is_tensorflow_oom(error: BaseException) -> bool:
    errors = sys.modules.get("tensorflow.python.framework.errors_impl")
    if errors is None:
        return False
    if isinstance(error, errors.ResourceExhaustedError):
        return True
    # TF reports cuBLAS/cuDNN handle and workspace failures as Internal or Unknown.
    return isinstance(error, (errors.InternalError, errors.UnknownError)) and (
        _has_library_alloc_failure(error)
    )


def _is_torch_oom(error: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    oom_types = tuple(
        kind
        for kind in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None),
        )
        if isinstance(kind, type)
    )
    return bool(oom_types) and isinstance(error, oom_types)


def _is_jax_oom(error: BaseException) -> bool:
    is_jax_runtime_error = any(
        kind.__name__ in _JAX_ERROR_NAMES and kind.__module__.split(".")[0] in ("jaxlib", "jax")
        for kind in type(error).__mro__
    )
    return is_jax_runtime_error and str(error).lstrip().startswith(_JAX_OOM_STATUS)


def _has_library_alloc_failure(error: BaseException) -> bool:
    text = str(error)
    return any(marker in text for marker in _LIBRARY_ALLOC_FAILURES)
