"""forked.call: a function run by a forked child, its value or its error handed back."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from dataplane.errors import UsageError
from dataplane.verify import forked


@pytest.fixture
def forks():
    """call() forks only where no other thread runs (but fork_safe ones, as netns' visitor);
    should an earlier test of the session have left one, it runs its functions in the
    caller, which test_with_threads_running_the_function_runs_in_the_caller covers."""
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()
              and not getattr(t, "fork_safe", False)]
    if others:
        pytest.skip(f"threads run in this test process ({', '.join(others)}): "
                    "call() would not fork")


def test_the_value_comes_from_another_process(forks):
    with forked.call(os.getpid) as pending:
        assert pending.result() != os.getpid()


def test_the_childs_error_is_raised_by_the_caller(forks):
    def refuse():
        raise UsageError("no such topology; pick another")

    with forked.call(refuse) as pending, pytest.raises(UsageError, match="no such topology"):
        pending.result()


def test_a_child_killed_before_it_answers_is_an_error_not_a_value(forks):
    with forked.call(lambda: os.kill(os.getpid(), signal.SIGKILL)) as pending, \
            pytest.raises(RuntimeError, match="killed by SIGKILL"):
        pending.result()


def test_with_threads_running_the_function_runs_in_the_caller():
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with forked.call(os.getpid) as pending:
            assert pending.result() == os.getpid()
    finally:
        stop.set()
        other.join()


def test_a_child_still_working_is_ended_and_reaped_when_the_caller_stops_early(forks):
    with forked.call(lambda: threading.Event().wait(60)) as pending:
        pid = pending.pid
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped already
