"""Model work off the model thread runs in a thread of its own, which ends with it.

Why not `asyncio.to_thread`: its executor's threads live as long as the process, and a thread
that ran a multi-threaded torch op keeps an OpenMP thread pool with it. GNU OpenMP (the runtime
the torch CPU wheels ship) counts every pool's threads, and once they outnumber the cores, every
team, the model thread's included, stops spinning between parallel regions and sleeps on a futex
instead: each of the hundreds of element-wise ops in a forward pass then pays a wake-up. Measured
on 2 cores (the 0.6B shape, bfloat16, 16 queries in one pass): 300 ms in-process, 420 ms in a
daemon whose background optimisation had left a pool in an executor thread. So the model's
load, the background optimisation and the reranker's load each run in a thread that ends, and
the model thread is the one thread that keeps a pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


async def in_own_thread(fn: Callable[..., T], *args: Any, name: str) -> T:
    """`fn(*args)` in a new daemon thread named `name`, which ends when `fn` returns. A daemon
    thread does not hold up the process's exit: a model download can take minutes, and a daemon
    that stops meanwhile (the one `localrank mcp` runs, when its editor closes) stops waiting
    for it (its loop may be closed by the time it ends)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():  # cancelled: nobody waits any more
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(cast(T, result))

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed while this ran
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await done
