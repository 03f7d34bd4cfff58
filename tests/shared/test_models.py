"""The task model: exit-code messages, the transition table, and the default task name."""

from __future__ import annotations

import itertools
import re
import signal
from datetime import UTC, datetime

import pytest

from shared.models import (
    ACTIVE,
    FINISHED,
    TRANSITIONS,
    TaskStatus,
    can_transition,
    default_task_name,
    exit_code_message,
)

S = TaskStatus


def pipeline_code(returncode: int) -> int:
    """How workers/pipeline.py turns a Popen return code (negative = killed by a signal) into a shell code."""
    return returncode if returncode > 0 else 128 - returncode


# --- exit codes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "message"),
    [
        (1, "Cannot process dataset"),
        (134, "Cannot process dataset"),
        (139, "Cannot process dataset"),
        (137, "Not enough memory"),
        (-9, "Not enough memory"),
        (132, "Unsupported CPU"),
        (3, "Installation issue"),
        (2, "Processing failed (2)"),
        (255, "Processing failed (255)"),
        (143, "Processing failed (143)"),
        (-15, "Processing failed (-15)"),
    ],
)
def test_exit_code_message(code: int, message: str) -> None:
    assert exit_code_message(code) == message


@pytest.mark.parametrize(
    ("sig", "message"),
    [
        (signal.SIGABRT, "Cannot process dataset"),  # -6 -> 134
        (signal.SIGSEGV, "Cannot process dataset"),  # -11 -> 139
        (signal.SIGKILL, "Not enough memory"),  # -9 -> 137: the OOM killer
        (signal.SIGILL, "Unsupported CPU"),  # -4 -> 132
        (signal.SIGTERM, "Processing failed (143)"),
    ],
)
def test_signals_as_the_pipeline_maps_them(sig: signal.Signals, message: str) -> None:
    assert exit_code_message(pipeline_code(-int(sig))) == message


# --- transitions --------------------------------------------------------------------------------
EXPECTED_ALLOWED = {
    # (from, to) pairs that may happen; every other pair is refused
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.FAILED), (S.QUEUED, S.CANCELED),
    (S.RUNNING, S.QUEUED), (S.RUNNING, S.RUNNING), (S.RUNNING, S.FAILED), (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.CANCELED),
    # restart of a finished task goes back to QUEUED or RUNNING
    (S.FAILED, S.QUEUED), (S.FAILED, S.RUNNING),
    (S.COMPLETED, S.QUEUED), (S.COMPLETED, S.RUNNING),
    (S.CANCELED, S.QUEUED), (S.CANCELED, S.RUNNING),
    # cancel of a finished task sets CANCELED, as the reference does (and WebODM's node tests expect)
    (S.FAILED, S.CANCELED), (S.COMPLETED, S.CANCELED),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_can_transition_every_pair(current: TaskStatus, target: TaskStatus) -> None:
    assert can_transition(current, target) == ((current, target) in EXPECTED_ALLOWED)


def test_only_running_completes() -> None:
    assert [s for s in S if can_transition(s, S.COMPLETED)] == [S.RUNNING]


def test_finished_states_only_restart_or_cancel() -> None:
    for current, target in itertools.product(FINISHED, S):
        expected = target in ACTIVE or (target is S.CANCELED and current is not S.CANCELED)
        assert can_transition(current, target) == expected, (current, target)


def test_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(S)
    assert all(set(sources) <= set(S) for sources in TRANSITIONS.values())


def test_status_codes_and_flags() -> None:
    assert [int(s) for s in S] == [10, 20, 30, 40, 50]
    assert [s for s in S if s.active] == list(ACTIVE)
    assert [s for s in S if s.finished] == list(FINISHED)


# --- default task name --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ms", "name"),
    [
        (0, "Task of 1970-01-01T00:00:00.000Z"),
        (1704164645678, "Task of 2024-01-02T03:04:05.678Z"),
        (1704164645007, "Task of 2024-01-02T03:04:05.007Z"),
        (1704164645999, "Task of 2024-01-02T03:04:05.999Z"),
    ],
)
def test_default_task_name(ms: int, name: str) -> None:
    assert default_task_name(ms) == name


def test_default_task_name_matches_javascript_iso_format() -> None:
    # NodeODM names tasks "Task of " + new Date().toISOString(): always UTC, milliseconds, a Z
    ms = int(datetime(2031, 12, 31, 23, 59, 58, 123000, tzinfo=UTC).timestamp() * 1000)
    name = default_task_name(ms)
    assert re.fullmatch(r"Task of \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", name)
    assert name == "Task of 2031-12-31T23:59:58.123Z"


def test_default_task_name_keeps_every_millisecond() -> None:
    # ms / 1000 is a float: no millisecond may be lost to rounding
    base = 1704164645000
    for ms in range(1000):
        assert default_task_name(base + ms).endswith(f".{ms:03d}Z")
