"""The processing pipeline for one task run: claim, fetch inputs, run the engine, post-process, zip, store, finish."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
from collections import deque
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import metrics
from shared import options as optionlib
from shared.accounts import Accounts
from shared.errors import TaskNotFound
from shared.events import event
from shared.models import TaskStatus, exit_code_message
from shared.node import inputs_prefix, results_prefix, task_prefix, wake_deferred
from shared.safety import redact_text, redact_url
from shared.storage.base import StorageError
from shared.taskstore import now_ms
from workers import checkpoints, files, resume
from workers.postprocess import postprocess
from workers.progress import ANSI, ENGINE_SHARE, STAGE_LINE, StageProgress
from workers.runner import Flusher, Run
from workers.runtime import KEPT_MARKER, RUN_ID_VARIABLE, SHUTDOWN, Job, WorkerRuntime

log = logging.getLogger(__name__)

CONSOLE_DRAIN_SECONDS = 90.0  # how long a finished run keeps retrying to store its last console lines
NO_SPACE = "No space left on device"  # strerror(ENOSPC), as ODM's tools and Python print it
NO_SPACE_TAIL = 50  # engine lines searched for it when the engine fails
STORE_PARALLEL = 8  # inputs fetched or result objects stored at once
SMALL_OBJECT = 8 * 1024 * 1024  # up to this size an object is one request, above it parallel parts


class Stop(Exception):
    """The run ends early: cancelled, superseded or removed. Nothing more is written for it."""


class Failed(Exception):
    """The run fails with a message for the client."""


def process(rt: WorkerRuntime, uuid: str, run_id: str) -> str:
    """Run one task; returns what happened (for logs and tests). Idempotent: stale messages are dropped."""
    try:
        record = rt.tasks.get(uuid)
    except TaskNotFound:
        return "gone"
    status = TaskStatus(int(record["status"]))
    if record.get("runId") != run_id or not status.active:
        return "stale"
    if not rt.tasks.take_lease(uuid, run_id, rt.settings.lease_seconds):
        return "duplicate"
    owner = record.get("owner") or ""
    if owner and not record.get("submodel"):
        limit = Accounts(rt.tasks.r, rt.settings).limits(owner).max_running
        if limit is not None and not rt.tasks.claim_within_limit(uuid, run_id, owner, limit):
            # the user runs as many tasks as they may: this one waits QUEUED until one of them ends
            rt.tasks.release_lease(uuid, run_id)
            return "deferred"
    # a run taken over from a lost or stopping worker keeps the task's first start: processingTime
    # never goes backwards
    first_start: dict[str, Any] = {} if record.get("startedAt") else {"startedAt": now_ms()}
    claimed = rt.tasks.transition(
        uuid,
        TaskStatus.RUNNING,
        run_id=run_id,
        allowed=(TaskStatus.QUEUED, TaskStatus.RUNNING),
        worker=rt.id,
        processingTime=-1,
        deferred=None,
        **first_start,
    )
    if not claimed.ok:
        rt.tasks.release_lease(uuid, run_id)
        return "stale"
    job = Job(uuid, run_id)
    rt.register(job)
    attempt = record.get("attempt") or "1"
    event(log, "task.claimed", uuid=uuid, worker=rt.id, run=run_id, attempt=attempt)
    workdir = rt.scratch / f"{uuid}-{run_id}"
    outcome = "failed"
    try:
        outcome = _run(rt, job, record, workdir)
    except Stop:
        outcome = "stopped"
        if job.reason == SHUTDOWN:
            # the lease goes first: the next run's claim must find it free
            rt.tasks.release_lease(uuid, run_id)
            if rt.requeue(uuid, run_id, f"Worker {rt.id} is shutting down", count_attempt=False):
                outcome = "handed over"
                event(log, "task.handed_over", uuid=uuid, worker=rt.id, run=run_id, reason="worker stopping")
    except Failed as exc:
        outcome = "failed" if _fail(rt, job, str(exc)) else "stopped"
    except Exception as exc:  # noqa: BLE001 - whatever breaks, the task ends FAILED with a message
        log.exception("task %s failed", uuid)
        outcome = (
            "failed" if _fail(rt, job, f"Processing failed ({type(exc).__name__}: {exc})") else "stopped"
        )
    finally:
        rt.unregister(job)
        rt.tasks.release_lease(uuid, run_id)
        if rt.cluster is not None:
            rt.cluster.release(run_id)
        if owner:
            wake_deferred(rt.tasks, rt.celery, owner)  # a slot of the user's running limit is free again
        if outcome != "failed" or not rt.settings.keep_failed_scratch:
            shutil.rmtree(workdir, ignore_errors=True)
        elif workdir.exists():
            (workdir / KEPT_MARKER).write_text("kept for inspection: ODM_FARM_KEEP_FAILED_SCRATCH\n")
        if outcome != "completed":
            # whatever this run stored is nobody's results: a newer run or none owns the task now
            rt.store.delete_prefix(results_prefix(uuid, run_id))
        if outcome == "stopped" and not rt.tasks.exists(uuid):
            rt.store.delete_prefix(task_prefix(uuid))  # removed while we were uploading: leave no trace
    if outcome == "stopped":
        event(log, "task.stopped", uuid=uuid, worker=rt.id, run=run_id, reason=job.reason or "not owned")
    if outcome in ("completed", "failed"):
        # this run made the transition that ended the task, so it alone announces it (a cancel is
        # announced by whoever cancelled; a lost worker's give-up by the reaper)
        _notify(rt, uuid, run_id)
    return outcome


def _run(rt: WorkerRuntime, job: Job, record: dict[str, str], workdir: Path) -> str:
    # every console line of the run goes through one flusher: in order, numbered, retried through a Redis outage
    stages = StageProgress()

    def send(lines: list[str], first: int) -> None:
        _push(rt, job, lines, first)
        value = stages.feed(lines)  # progress even when ODM's datagrams go to another listener on the host
        if value is not None:
            rt.tasks.set_progress(job.uuid, value * ENGINE_SHARE, run_id=job.run_id)

    out = Flusher(send, limit=rt.settings.console_max_lines)
    out.start()
    try:
        return _run_steps(rt, job, record, workdir, out)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:  # fetching inputs, unpacking, zipping: the scratch disk is full
            raise
        raise Failed(_no_space(rt, workdir)) from None
    finally:
        _stop_checkpoints(job)  # a checkpoint in flight is abandoned: the previous one stays whole
        out.close(5.0 if job.cancelled.is_set() else CONSOLE_DRAIN_SECONDS)


def _run_steps(rt: WorkerRuntime, job: Job, record: dict[str, str], workdir: Path, out: Flusher) -> str:
    project, input_flags = _prepare(rt, job, record, workdir, out)
    _run_engine(rt, job, record, workdir, project, input_flags, out)
    return _finish(rt, job, record, workdir, project, out)


def _prepare(
    rt: WorkerRuntime, job: Job, record: dict[str, str], workdir: Path, out: Flusher
) -> tuple[Path, dict[str, Path]]:
    """The scratch folder with the task's inputs placed in its project folder; returns that folder and the
    input files ODM takes as flags (gcp, geo...)."""
    uuid = job.uuid
    say = out.write
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "worker.pid").write_text(str(os.getpid()))
    inputs, project = workdir / "inputs", workdir / "project" / uuid
    inputs.mkdir()
    project.mkdir(parents=True)
    attempt = int(record.get("attempt") or 1)
    say([f"Worker {rt.id} started processing (attempt {attempt})."])
    out.flush()  # stored at once, not with the next batch: a run whose worker dies now still shows it began

    _stage(rt, job, "fetching inputs")
    _fetch_inputs(rt, job, record, inputs, say)
    _check(job)
    archive_mb = rt.settings.archive_max_mb
    try:
        placed = files.place_inputs(
            inputs,
            project,
            max_files=rt.settings.archive_max_entries,
            max_total_bytes=archive_mb * 1024 * 1024 if archive_mb else None,
        )
    except files.ArchiveTooLarge as exc:
        raise Failed(f"Archive too large: {exc}") from None
    except files.BrokenArchive as exc:
        raise Failed(f"Invalid archive: {exc}") from None
    limit = rt.settings.max_images
    if limit is not None and placed.images_count > limit:
        raise Failed(f"{placed.images_count} images uploaded, but this node can only process up to {limit}.")
    rt.tasks.update(uuid, run_id=job.run_id, imagesCount=placed.images_count)
    return project, placed.input_flags


def _run_engine(
    rt: WorkerRuntime,
    job: Job,
    record: dict[str, str],
    workdir: Path,
    project: Path,
    input_flags: dict[str, Path],
    out: Flusher,
) -> None:
    """Run the engine over the project folder: resumed from the task's checkpoint when it has a usable one,
    saving a new checkpoint after each stage that ends."""
    say = out.write
    options = _engine_options(rt, record, say)
    resumed = _resume(rt, job, record, project, say)
    if resumed.rerun_from:
        options = resume.with_rerun_from(options, resumed.rerun_from)
    command = rt.engine.command(options, project.parent, job.uuid, input_flags)
    command.env[RUN_ID_VARIABLE] = job.run_id  # progress datagrams of a superseded run are told apart
    engine_tail: deque[str] = deque(maxlen=NO_SPACE_TAIL)
    saver = _checkpointer(rt, job, record, project, say, resumed)

    def engine_console(lines: list[str]) -> None:
        engine_tail.extend(lines)
        out.write(lines)
        if saver is not None:
            for stage in finished_stages(lines):
                saver.stage_finished(stage)

    run = Run(command, engine_console, project / "task_output.txt", workdir / "engine.pgid")
    job.run = run
    _check(job)
    _stage(rt, job, "engine")
    if saver is not None:
        saver.start()
        job.checkpointer = saver
    try:
        run.start()
    except OSError as exc:
        raise Failed(f"Could not start process ({exc.strerror or exc})") from None
    code = run.wait()
    _check(job)
    if code != 0:
        say([f"Engine exited with code {code}."])
        if any(NO_SPACE in line for line in engine_tail):
            raise Failed(_no_space(rt, workdir))
        raise Failed(exit_code_message(code if code > 0 else 128 - code))


def _finish(
    rt: WorkerRuntime, job: Job, record: dict[str, str], workdir: Path, project: Path, out: Flusher
) -> str:
    """Post-process, zip and store the results, then COMPLETED."""
    uuid = job.uuid
    say = out.write
    if record.get("skipPostProcessing") != "1":
        _stage(rt, job, "postprocessing")
        postprocess(project, lambda text: say([text]), adopt=lambda tool: _adopt(job, tool))
    rt.tasks.set_progress(uuid, 93, run_id=job.run_id)
    _check(job)

    zip_path = workdir / "all.zip"
    outputs = json.loads(record["outputs"]) if record.get("outputs") else None
    say(["Compressing all.zip"])
    _stage(rt, job, "zipping")
    _stop_checkpoints(job)  # the last one in flight may still finish while post-processing ran
    out.release()
    if not out.drain(CONSOLE_DRAIN_SECONDS):
        raise Failed("Could not store the console (Redis unavailable)")
    _write_console(rt, job, project / "task_output.txt")
    files.build_all_zip(project, zip_path, outputs, check=lambda: _check(job))
    rt.tasks.set_progress(uuid, 97, run_id=job.run_id)
    _check(job)
    _stage(rt, job, "storing results")
    _store_results(rt, job, project, workdir, zip_path)
    _check(job)
    # results are stored: the scratch is free before clients see COMPLETED
    shutil.rmtree(workdir, ignore_errors=True)

    out.close(CONSOLE_DRAIN_SECONDS)  # every console line is stored before clients see COMPLETED
    started = int(rt.tasks.field(uuid, "startedAt") or now_ms())
    ended = now_ms()
    done = rt.tasks.transition(
        uuid,
        TaskStatus.COMPLETED,
        run_id=job.run_id,
        progress=100,
        processingTime=ended - started,
        resultsRun=job.run_id,
    )
    if not done.ok:
        raise Stop()
    metrics.task_ended(rt.tasks.r, "completed", started, ended)
    event(
        log,
        "task.finished",
        uuid=uuid,
        worker=rt.id,
        run=job.run_id,
        outcome="completed",
        seconds=(ended - started) / 1000,
    )
    return "completed"


# --- checkpoints and resume ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Resumed:
    """The checkpoint a run continues from (None: it starts over) and the stage it reruns from."""

    manifest: checkpoints.Manifest | None = None
    rerun_from: str | None = None


def finished_stages(lines: list[str]) -> list[str]:
    """The ODM stages whose "Finished <stage> stage" line is among `lines`, in order."""
    found = []
    for line in lines:
        match = STAGE_LINE.search(ANSI.sub("", line))
        if match and match.group(1) == "Finished" and match.group(2) in resume.STAGES:
            found.append(match.group(2))
    return found


def _resume(rt: WorkerRuntime, job: Job, record: dict[str, str], project: Path, say: Any) -> Resumed:
    """Restore the task's last complete checkpoint into `project` when the run can continue from it.

    A checkpoint that cannot be used is never an error: the run starts over, and the console says why.
    """
    if not rt.settings.checkpoints:
        return Resumed()
    try:
        manifest = checkpoints.load(rt.store, job.uuid)
    except checkpoints.CheckpointError as exc:
        return _start_over(rt, job, say, f"The checkpoint cannot be used ({exc})", drop=True)
    except StorageError as exc:
        return _start_over(rt, job, say, f"The checkpoint could not be read ({exc})", drop=False)
    if manifest is None:
        return Resumed()
    after = f"The checkpoint after stage {manifest.stage}"
    engine = rt.engine_info.name if rt.engine_info else rt.engine.name
    if manifest.engine != engine:
        return _start_over(rt, job, say, f"{after} was made by the {manifest.engine} engine", drop=True)
    table = (rt.engine_info.rerun_stages if rt.engine_info else None) or resume.load_table()
    options = json.loads(record.get("options") or "[]")
    chosen = resume.plan(manifest.stage, manifest.options, options, table)
    if chosen.rerun_from is None:
        return _start_over(rt, job, say, f"{after} does not apply: {chosen.reason}", drop=True)
    # the stages rerun write their folders again from nothing: what the checkpoint has of them stays out
    manifest = dataclasses.replace(
        manifest, files=resume.outside(manifest.files, resume.folders_from(chosen.rerun_from))
    )
    try:
        restored = checkpoints.restore(rt.store, manifest, project, stop=job.cancelled.is_set)
    except checkpoints.Stopped:
        raise Stop() from None
    except checkpoints.CheckpointError as exc:
        return _start_over(rt, job, say, f"{after} cannot be used ({exc})", drop=True)
    except StorageError as exc:
        return _start_over(rt, job, say, f"{after} could not be read ({exc})", drop=False)
    say(
        [
            f"Resuming from checkpoint after stage {manifest.stage} (saved at {checkpoints.saved_at_text(manifest)}, "
            f"{restored / 1e6:.1f} MB restored): rerunning from stage {chosen.rerun_from} ({chosen.reason})."
        ]
    )
    event(
        log,
        "task.resumed",
        uuid=job.uuid,
        worker=rt.id,
        run=job.run_id,
        stage=manifest.stage,
        rerun_from=chosen.rerun_from,
    )
    return Resumed(manifest, chosen.rerun_from)


def _start_over(rt: WorkerRuntime, job: Job, say: Any, why: str, drop: bool) -> Resumed:
    say([f"{why}: starting over."])
    event(log, "task.checkpoint_unused", uuid=job.uuid, worker=rt.id, run=job.run_id, reason=why)
    if drop:  # it will not apply to any later run either
        rt.store.delete_prefix(checkpoints.checkpoint_prefix(job.uuid))
    return Resumed()


def _checkpointer(
    rt: WorkerRuntime, job: Job, record: dict[str, str], project: Path, say: Any, resumed: Resumed
) -> checkpoints.Checkpointer | None:
    if not rt.settings.checkpoints:
        return None
    restored = resumed.manifest.files if resumed.manifest is not None else {}
    saved_stage = None
    if resumed.rerun_from:  # the stages before it are in the checkpoint already
        index = resume.STAGES.index(resumed.rerun_from)
        saved_stage = resume.STAGES[index - 1] if index else None
    base = checkpoints.Manifest(
        uuid=job.uuid,
        run=job.run_id,
        stage=resume.STAGES[0],
        saved_at=0,
        engine=rt.engine_info.name if rt.engine_info else rt.engine.name,
        options=json.loads(record.get("options") or "[]"),
        files=dict(restored),
    )
    cap = rt.settings.checkpoint_max_mb
    return checkpoints.Checkpointer(
        rt.store,
        base,
        project,
        say=lambda text: say([text]),
        owns=lambda: rt.tasks.field(job.uuid, "runId") == job.run_id,
        cancelled=job.cancelled,
        max_bytes=cap * 1024 * 1024 if cap else None,
        saved_stage=saved_stage,
    )


def _stop_checkpoints(job: Job) -> None:
    saver = job.checkpointer
    if saver is not None:
        saver.close()
        job.checkpointer = None


def _stage(rt: WorkerRuntime, job: Job, stage: str) -> None:
    event(log, "task.stage", uuid=job.uuid, worker=rt.id, run=job.run_id, stage=stage)


def _fetch_inputs(rt: WorkerRuntime, job: Job, record: dict[str, str], inputs: Path, say: Any) -> None:
    listed = rt.store.list(inputs_prefix(job.uuid))
    _parallel(
        job, [lambda k=key, n=size: _get(rt, k, n, inputs / k.rsplit("/", 1)[-1]) for key, size in listed]
    )
    zipurl = record.get("zipurl")
    if zipurl:
        say([f"Downloading {redact_url(zipurl)}"])  # a presigned or user:pass@ URL carries secrets
        try:
            files.fetch_url(
                zipurl,
                inputs / "zipurl-download.zip",
                rt.settings.blocked_networks,
                max_bytes=rt.settings.zip_max_bytes or None,
            )
        except (files.FetchError, ValueError) as exc:
            raise Failed(f"Could not download {redact_url(zipurl)}: {exc}") from None


def _engine_options(rt: WorkerRuntime, record: dict[str, str], say: Any) -> list[dict[str, Any]]:
    options: list[dict[str, Any]] = json.loads(record.get("options") or "[]")
    options = optionlib.cap_max_concurrency(options, rt.settings.max_concurrency)
    known = {o["name"] for o in (rt.engine_info.options if rt.engine_info else [])}
    split = next((o["value"] for o in options if o["name"] == "split"), None)
    if split is not None and "sm-cluster" in known and not any(o["name"] == "sm-cluster" for o in options):
        cluster = sm_cluster_url(rt, record)
        if cluster:
            options.append({"name": "sm-cluster", "value": cluster})
            say([f"Split-merge: submodels are sent back to the farm at {redact_url(rt.settings.public_url)}"])
        else:
            say(["Split-merge: ODM_FARM_PUBLIC_URL is not set, so submodels run on this worker only."])
    return options


def sm_cluster_url(rt: WorkerRuntime, record: dict[str, str] | None = None) -> str:
    """The URL ODM's split-merge client uses: this worker's loopback proxy, which adds the token itself.

    Never the public URL with ?token=: ODM's arguments show in `ps`, in its console banner and in all.zip.
    """
    if rt.cluster is None:
        return ""
    record = record or {}
    # submodels of a user's task are that user's (the proxy names them to the API)
    return rt.cluster.url_for(record.get("runId", ""), record.get("owner"))


def _store_results(rt: WorkerRuntime, job: Job, project: Path, workdir: Path, zip_path: Path) -> None:
    from shared.assets import collect_assets

    prefix = results_prefix(job.uuid, job.run_id)
    uploads = {
        prefix + "assets/" + name: path for name, path in collect_assets(project, workdir / "assets").items()
    }
    if (project / "images.json").exists():
        uploads[prefix + "images.json"] = project / "images.json"
    _parallel(job, [lambda k=key, p=path: _put(rt, k, p) for key, path in uploads.items()])
    # all.zip last, once every other object is stored: its presence is what "results ready" means to the
    # download route
    _put(rt, prefix + "all.zip", zip_path)


def _parallel(job: Job, calls: list[Any]) -> None:
    """Run store transfers side by side (each is at least one round trip); returns when all are done.

    The first failure (raised here) or a cancel stops the rest: calls not started are dropped, those under
    way finish first.
    """
    if not calls:
        return
    pool = ThreadPoolExecutor(max_workers=min(STORE_PARALLEL, len(calls)), thread_name_prefix="store")
    try:
        pending = {pool.submit(call) for call in calls}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()
            _check(job)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _put(rt: WorkerRuntime, key: str, path: Path) -> None:
    # a small file is one PUT through the store's writer; a big one goes in parallel parts (put_file)
    if path.stat().st_size <= SMALL_OBJECT:
        with path.open("rb") as source:
            rt.store.put_stream(key, source)
    else:
        rt.store.put_file(key, path)


def _get(rt: WorkerRuntime, key: str, size: int, path: Path) -> None:
    # a small object is one streamed GET; a big one is fetched in parallel ranges (get_to_file)
    if size > SMALL_OBJECT:
        rt.store.get_to_file(key, path)
        return
    partial = path.with_name(path.name + ".part")
    with partial.open("wb") as out:
        for chunk in rt.store.iter_range(key):
            out.write(chunk)
    os.replace(partial, path)


def _no_space(rt: WorkerRuntime, workdir: Path) -> str:
    """The message for a full scratch disk; frees this run's scratch at once, whatever keep_failed_scratch says."""
    for name in ("project", "inputs", "all.zip", "assets"):
        target = workdir / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    return f"Not enough disk space on worker {rt.id}"


def _adopt(job: Job, run: Run) -> None:
    """A post-processing tool becomes the job's process: cancel, max runtime and shutdown kill it."""
    job.run = run
    _check(job)  # after the assignment: a cancel that came before it is seen here, one after it kills `run`


def _check(job: Job) -> None:
    if job.cancelled.is_set():
        raise Stop()


def _push(rt: WorkerRuntime, job: Job, lines: list[str], first: int | None = None) -> None:
    # defence in depth: whatever the engine prints, no secret this node knows is stored or shown
    lines = [redact_text(line, rt.settings.secrets) for line in lines]
    if not rt.tasks.append_output(job.uuid, job.run_id, lines, first):
        job.cancel("superseded")


def _write_console(rt: WorkerRuntime, job: Job, console_file: Path) -> None:
    """task_output.txt in all.zip is the whole console, including the farm's own lines."""
    console_file.write_text("\n".join(rt.tasks.output(job.uuid)) + "\n", encoding="utf-8")


def _fail(rt: WorkerRuntime, job: Job, message: str) -> bool:
    """FAILED with `message`; False when the run no longer owns the task (cancelled, superseded)."""
    _push(rt, job, [message])
    started = rt.tasks.field(job.uuid, "startedAt")
    ended = now_ms()
    elapsed = ended - int(started) if started else -1
    if not rt.tasks.transition(
        job.uuid, TaskStatus.FAILED, run_id=job.run_id, errorMessage=message, processingTime=elapsed
    ).ok:
        return False
    metrics.task_ended(rt.tasks.r, "failed", started, ended)
    shown = redact_text(message, rt.settings.secrets)
    event(log, "task.finished", uuid=job.uuid, worker=rt.id, run=job.run_id, outcome="failed", reason=shown)
    return True


def _notify(rt: WorkerRuntime, uuid: str, run_id: str) -> None:
    # images.json is read from the store only when a webhook goes out
    rt.notify_end(uuid, lambda: _images_json(rt, uuid, run_id))


def _images_json(rt: WorkerRuntime, uuid: str, run_id: str) -> Any:
    # images.json travels inside all.zip; a small copy is kept with the results for webhooks
    key = results_prefix(uuid, run_id) + "images.json"
    try:
        return json.loads(rt.store.get_bytes(key))
    except Exception:  # noqa: BLE001 - a webhook still goes out without it
        return []
