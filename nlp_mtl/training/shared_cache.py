"""Work that fills the on-disk data cache, done once per machine in a multi-process run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def once_per_machine(accelerator: Any, storage: str, work: Callable[[], T]) -> T:
    """Run ``work`` (reading data through the cache with ``storage`` 'disk': the checking pass,
    the tokenised train splits) on the first process of each machine, then on the others, which
    open what it wrote instead of reading and tokenising the whole data again. In memory there
    is nothing to share, and every process runs ``work`` at once.

    Where the first process stops on an error (a bad line in a data file), it still meets the
    others at the barrier before raising, so they are not left at one that its exit would break
    with a traceback; they then run ``work`` themselves and meet the same error, with the same
    message, as in one process."""
    if storage != "disk" or accelerator.num_processes == 1:
        return work()
    first = accelerator.is_local_main_process
    failure: BaseException | None = None
    if first:
        try:
            result = work()
        except Exception as err:  # noqa: BLE001 - re-raised once the others are past the barrier
            failure = err
    accelerator.wait_for_everyone()
    if failure is not None:
        raise failure
    return result if first else work()
