"""Functions run in turn by a forked child while the caller goes on: work for the machine's
other core (verify resets the caches and audits beside its traffic), which a thread,
sharing the interpreter's lock, would not give. The child sends back what each function
returned, or the error it raised (and runs no more); result() waits for the next one and
raises that error as the caller's own.

Light to import (no multiprocessing, no traceback): a verify run forks its child as soon
as it knows its cluster.

A process whose threads run (a tracer's poller) is not forked: a lock one of them held
would stay held in the child. There each function runs in the caller when its value is
asked for. A thread marked fork_safe does not count (netns' visitor: idle between works,
and forgotten by a forked child). A child that ends before it answers (killed, out of
memory) leaves its functions to the caller too.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from dataplane.verify.channel import Channel, fork, one_way


@dataclass
class Pending:
    """What call() started; result() once per function, close() always (a context
    manager does)."""

    works: list[Callable[[], Any]]  # those whose value is not taken yet, in order
    pid: int | None = None
    answers: Channel | None = None  # None: no child (any more); the caller runs the works

    def result(self) -> Any:
        """The next function's value (waiting for it). Should the child end before it
        answers (killed, out of memory), the caller runs that function, and the rest."""
        work = self.works.pop(0)
        if self.answers is None:
            return work()
        try:
            kind, payload = self.answers.recv()
        except (EOFError, OSError):
            self.close()
            return work()
        except Exception as err:  # an answer that does not unpickle
            raise RuntimeError(f"the forked child's answer cannot be read: {err!r}") from None
        if kind == "error":
            error, text = payload
            raise (error or RuntimeError("the forked child failed")) from ChildTraceback(text)
        return payload

    def close(self) -> None:
        """Ends the child if it still works (the caller stopped early), and reaps it."""
        if self.answers is not None:
            self.answers.close()
            self.answers = None
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
        if self.pid is not None:
            os.waitpid(self.pid, 0)
            self.pid = None

    def __enter__(self) -> "Pending":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def call(*works: Callable[[], Any]) -> Pending:
    if any(not getattr(thread, "fork_safe", False) for thread in threading.enumerate()
           if thread is not threading.current_thread()):
        return Pending(list(works))
    answers, answering = one_way()
    pid = fork(answers, answering)
    if pid == 0:
        answers.close()
        _child(answering, works)
    answering.close()
    return Pending(list(works), pid, answers)


# A forked child's garbage collector runs after this many new objects, not 700: what a
# verify child makes (thousands of hops, frames and flows a wave) is freed together, by
# reference counts, and holds no cycles; collected every 700, it was traversed again and
# again (2-3% of a verify's CPU).
CHILD_GC_THRESHOLD = 50_000


def calm_collector() -> None:
    """In a forked child: the collector leaves the parent's objects alone (a full pass
    would write to each of them, copying every page the child shares with its parent)
    and runs rarely."""
    gc.freeze()
    gc.set_threshold(CHILD_GC_THRESHOLD)


def _child(conn: Channel, works: tuple[Callable[[], Any], ...]) -> None:
    """Never returns: nothing of the caller's own clean-up or buffered output may run twice."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller stops it, not a Ctrl-C
        # a SIGTERM ends it (the caller runs its works), not the caller's run, as the
        # caller's handler, inherited, would raise it back there
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        calm_collector()
        for work in works:
            try:
                answer = ("value", work())
            except BaseException as err:
                answer = ("error", (portable(err), traceback_text()))
            try:
                conn.send(answer)
            except Exception:  # a value that does not pickle
                answer = ("error", (None, traceback_text()))
                conn.send(answer)
            if answer[0] == "error":
                break
    finally:
        os._exit(0)


def traceback_text() -> str:
    """The error being handled, as Python prints it (traceback imported only then)."""
    import traceback

    return traceback.format_exc()


def portable(err: BaseException) -> BaseException | None:
    """err, if it goes through a pipe (pickled, and unpickled by the other end); else None,
    and its traceback's text alone tells it."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        return None
    return err


class ChildTraceback(Exception):
    """Where in the forked child an error was raised: the cause of the caller's copy."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}"


def how(status: int) -> str:
    """How a child process ended, from its wait status."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
