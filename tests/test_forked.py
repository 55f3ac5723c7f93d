"""forked.call: functions run in turn by a forked child, each value or the first error
handed back."""

from __future__ import annotations

import os
import signal
import threading
import time

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


def test_values_come_in_turn_and_nothing_runs_after_an_error(forks, tmp_path):
    ran = tmp_path / "ran"

    def refuse():
        raise UsageError("no such topology; pick another")

    with forked.call(lambda: 1, refuse, lambda: ran.write_text("ran")) as pending:
        assert pending.result() == 1
        with pytest.raises(UsageError, match="no such topology") as raised:
            pending.result()
    assert isinstance(raised.value.__cause__, forked.ChildTraceback)
    assert "in refuse" in str(raised.value.__cause__)  # where the child raised it
    assert not ran.exists()


class Unreadable(Exception):
    """Pickles, but cannot be unpickled (its __init__ wants two arguments)."""

    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")


def test_an_error_or_a_value_that_cannot_cross_the_pipe_is_told_by_its_text(forks):
    def unreadable():
        raise Unreadable("probe", "refused")

    with forked.call(unreadable) as pending, pytest.raises(RuntimeError) as raised:
        pending.result()
    assert "Unreadable: probe: refused" in str(raised.value.__cause__)
    with forked.call(lambda: threading.Lock(), os.getpid) as pending:
        with pytest.raises(RuntimeError) as raised:
            pending.result()  # a lock does not pickle: the child stops there
        assert "pickle" in str(raised.value.__cause__)
        assert pending.result() == os.getpid()  # the caller's: the child ran no more


def test_a_child_killed_before_it_answers_leaves_its_work_to_the_caller(forks):
    caller = os.getpid()

    def die_in_the_child():
        if os.getpid() != caller:
            os.kill(os.getpid(), signal.SIGKILL)
        return os.getpid()

    with forked.call(die_in_the_child, os.getpid) as pending:
        assert pending.result() == caller  # done by the caller: the child died
        assert pending.result() == caller  # and what followed
        assert pending.pid is None  # reaped


def test_a_sigterm_ends_the_child_not_the_callers_run(forks):
    """The child does not keep the caller's SIGTERM handler (the CLI's raises an
    interruption, which would be sent back and raised as the caller's own)."""
    caller = os.getpid()

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupted)
    try:
        def end_in_the_child():
            if os.getpid() != caller:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            return os.getpid()

        with forked.call(end_in_the_child) as pending:
            assert pending.result() == caller  # the child ended: the caller did the work
    finally:
        signal.signal(signal.SIGTERM, old)


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
