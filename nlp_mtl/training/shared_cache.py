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

    Where the first process stops on an error (a bad line in a data file), the others do not
    wait for it at a barrier that its exit would break with a traceback: they learn of it and
    run ``work`` themselves, meeting the same error, with the same message, as in one process."""
    if storage != "disk" or accelerator.num_processes == 1:
        return work()
    from accelerate.utils import gather_object

    first = accelerator.is_local_main_process
    failure: BaseException | None = None
    if first:
        try:
            result = work()
        except Exception as err:  # noqa: BLE001 - re-raised below, once the others know
            failure = err
    any_failed = any(gather_object([failure is not None]))  # also the barrier the others wait at
    if failure is not None:
        raise failure
    if first and not any_failed:
        return result
    return work()
