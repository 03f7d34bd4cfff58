"""The task model: NodeODM status codes, the allowed transitions, and engine exit-code messages."""

from __future__ import annotations

import enum
from datetime import UTC, datetime


class TaskStatus(enum.IntEnum):
    QUEUED = 10
    RUNNING = 20
    FAILED = 30
    COMPLETED = 40
    CANCELED = 50

    @property
    def active(self) -> bool:
        return self in (TaskStatus.QUEUED, TaskStatus.RUNNING)

    @property
    def finished(self) -> bool:
        return not self.active


ACTIVE = (TaskStatus.QUEUED, TaskStatus.RUNNING)
FINISHED = (TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.CANCELED)

# target -> statuses it may be reached from. One table, enforced atomically by the store's Lua script.
TRANSITIONS: dict[TaskStatus, tuple[TaskStatus, ...]] = {
    TaskStatus.QUEUED: FINISHED + (TaskStatus.RUNNING,),  # restart, or re-queue after a lost worker
    TaskStatus.RUNNING: (TaskStatus.QUEUED, TaskStatus.RUNNING) + FINISHED,  # claim, re-queue, restart
    TaskStatus.FAILED: ACTIVE,
    TaskStatus.COMPLETED: (TaskStatus.RUNNING,),
    # as the reference does, a finished task can be cancelled too (its results stay until it is removed);
    # a run that finishes after a cancel can never turn CANCELED back into COMPLETED
    TaskStatus.CANCELED: ACTIVE + (TaskStatus.FAILED, TaskStatus.COMPLETED),
}


def can_transition(current: TaskStatus, target: TaskStatus) -> bool:
    return current in TRANSITIONS[target]


def exit_code_message(code: int) -> str:
    """The message clients show for an engine's exit code (as the reference node words it)."""
    if code in (1, 134, 139):
        return "Cannot process dataset"
    if code == 137 or code == -9:
        return "Not enough memory"
    if code == 132:
        return "Unsupported CPU"
    if code == 3:
        return "Installation issue"
    return f"Processing failed ({code})"


def default_task_name(date_created_ms: int) -> str:
    when = datetime.fromtimestamp(date_created_ms / 1000, tz=UTC)
    return "Task of " + when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
