"""The videos of a run, fed to Ray Data as the driver lists them.

A thread on the driver puts each task on a small queue actor (on the driver's node), which the
dataset's one read task drains: the first video starts while the listing goes on, and the driver
holds no more than the queue's videos ahead of the pipeline. Imported by run_ray only: it loads Ray
Data and pyarrow, which the executor's own actors do without.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.util.queue import Full, Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from clipforge.tasks import VideoTask, task_row

# Videos listed ahead of the pipeline: enough to keep the first stage's workers fed, few enough
# that the listing waits for the pipeline rather than piling videos up on the driver.
FEED_AHEAD = 256


class Feed(Datasource):
    """The videos the driver puts on `queue`, one row (and block) each, until it puts None."""

    def __init__(self, queue: Queue):
        self.queue = queue

    @property
    def supports_distributed_reads(self) -> bool:
        return False  # its read task runs on the driver's node, with the queue

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: object = None) -> list[ReadTask]:
        return [ReadTask(self._rows, BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None))]

    def _rows(self) -> Iterator[pa.Table]:
        while (row := self.queue.get()) is not None:
            yield pa.table({"task": pa.array([row], pa.binary())})


class Feeder:
    """Puts `tasks` on a queue from a thread, as they come: listing them may take as long as the run."""

    def __init__(self, tasks: Iterable[VideoTask], ahead: int, placement: NodeAffinitySchedulingStrategy):
        self.tasks = tasks
        self.queue = Queue(maxsize=ahead, actor_options={"num_cpus": 0, "scheduling_strategy": placement})
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._feed, name="clipforge-feed", daemon=True)

    def _feed(self) -> None:
        try:
            for task in self.tasks:
                if not self._put(task_row(task)["task"]):
                    return
        except BaseException as exc:  # the listing's failure (storage, a manifest row) is the run's
            self.error = exc
        self._put(None)

    def _put(self, item: bytes | None) -> bool:
        """Waits while the queue is full (the pipeline is behind); False once the run stopped reading."""
        while not self.stop.is_set():
            with contextlib.suppress(Full):
                self.queue.put(item, timeout=1)
                return True
        return False
