"""The farm as an operator sees it (GET /farm, the web app's farm panel): workers, queues, warnings.

The warnings name the cases where queued tasks cannot start: no live worker at all, no live worker serving
a queue that has tasks (the gpu queue once every GPU worker left), or workers that serve it but take no
task (a full scratch disk).
"""

from __future__ import annotations

from typing import Any

from shared.queue import QUEUE_CPU, QUEUE_GPU, QUEUES

DEFERRED = "-"  # the worker field of a task deferred for its user's running limit (TaskStore.occupancy)


def queue_depths(
    workers: list[dict[str, Any]], occupancy: list[tuple[str, str]]
) -> dict[str, dict[str, int]]:
    """Per queue: tasks waiting for a worker, tasks running, tasks deferred, live workers and their slots."""
    queues = {q: {"waiting": 0, "running": 0, "deferred": 0, "workers": 0, "slots": 0} for q in QUEUES}
    for queue, worker in occupancy:
        entry = queues.setdefault(
            queue or QUEUE_CPU, {"waiting": 0, "running": 0, "deferred": 0, "workers": 0, "slots": 0}
        )
        if worker == DEFERRED:
            entry["deferred"] += 1
        elif worker:
            entry["running"] += 1
        else:
            entry["waiting"] += 1
    for queue, entry in queues.items():
        serving = [w for w in workers if queue in w.get("queues", ())]
        entry["workers"] = len(serving)
        entry["slots"] = sum(int(w.get("slots", 0)) for w in serving)
    return queues


def warnings(workers: list[dict[str, Any]], queues: dict[str, dict[str, int]]) -> list[str]:
    """Why queued tasks cannot start, in words an operator can act on; empty when every queue is served."""
    found: list[str] = []
    waiting_total = sum(q["waiting"] for q in queues.values())
    if not workers:
        if waiting_total:
            found.append(
                f"{waiting_total} task(s) are queued but no worker is alive: start a worker "
                "(odm-farm worker) or check that the workers reach Redis."
            )
        return found
    for name, entry in queues.items():
        if not entry["waiting"]:
            continue
        serving = [w for w in workers if name in w.get("queues", ())]
        if not serving:
            kind = "GPU worker" if name == QUEUE_GPU else f"worker serving the {name} queue"
            found.append(
                f"{entry['waiting']} task(s) wait on the {name} queue but no live {kind} can take them."
            )
            continue
        if not any(w.get("accepting", True) and int(w.get("slots", 0)) > 0 for w in serving):
            notes = sorted({str(w.get("note") or "no free slot") for w in serving})
            found.append(
                f"{entry['waiting']} task(s) wait on the {name} queue but no worker serving it takes tasks: "
                + "; ".join(notes)
            )
    return found


def worker_view(worker: dict[str, Any]) -> dict[str, Any]:
    """One worker as the panel shows it: its advertised record plus the slots it uses now."""
    view = dict(worker)
    view["slotsUsed"] = len(worker.get("running", ()))
    view.pop("optionsDigest", None)
    return view


def farm_status(
    workers: list[dict[str, Any]], occupancy: list[tuple[str, str]], now_ms: int
) -> dict[str, Any]:
    queues = queue_depths(workers, occupancy)
    return {
        "now": now_ms,
        "workers": sorted(
            (worker_view(w) for w in workers), key=lambda w: (str(w.get("host", "")), str(w.get("name", "")))
        ),
        "queues": queues,
        "warnings": warnings(workers, queues),
    }
