"""Two kinds of failure, told apart everywhere a failure is caught.

*Content* failures belong to the input: no video stream, undecodable data, a clip that cannot
be scored. They are recorded with their reason and are final: a plain rerun skips the video
(`clipforge run --retry-failed` tries it again). *Environment* failures belong to what the run
stands on: storage after its own retries, an encoder that cannot open (NVENC sessions, a GPU),
memory, a device error, a killed worker. They are never recorded as the input's fault: they
propagate out of the stage, the executor runs the task again (`execution.failures.taskRetries`),
and a task that still fails fails its video as retryable, which every rerun tries again.
"""

from __future__ import annotations

# Waits before the executor's retries of a task that failed for its environment: 1, 2, 4... s.
RETRY_BACKOFF_S = 1.0


class EnvironmentFailure(RuntimeError):
    """A failure of the run's environment, not of its input (an encoder that cannot open)."""


def environmental(exc: BaseException) -> bool:
    # A missing object is the input's (a source deleted since it was listed); storage out of
    # reach, or refusing, is the environment's. torch.cuda.OutOfMemoryError and the CUDA errors
    # torch raises are told by name and text: this module must not import torch. Storage (and
    # pyarrow under it) is imported here, not at the top: the executor's actors that never touch
    # storage import this module through the stage contract.
    from clipforge.storage import StorageError

    if isinstance(exc, StorageError):
        return not exc.missing
    return (isinstance(exc, (EnvironmentFailure, MemoryError, ConnectionError, TimeoutError))
            or type(exc).__name__ == "OutOfMemoryError" or "CUDA error" in str(exc))


def raise_if_environmental(exc: BaseException) -> None:
    """For the handlers that record one clip's failure: an environment failure is not the clip's."""
    if environmental(exc):
        raise exc
