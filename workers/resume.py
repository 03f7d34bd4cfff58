"""Where a run continues: ODM's stage order, which stage each option reruns from, and the stage to rerun from.

A run resumes from a checkpoint saved after stage S with `--rerun-from <stage after S>`. When the task's
options changed since the checkpoint was saved, it reruns from the earliest stage those options affect
instead, if that comes first (ODM's own table, `rerun_stages` in opendm/config.py, read from the install;
a bundled copy serves the simulate engine and older installs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.progress import STAGES as STAGE_WEIGHTS

STAGES: tuple[str, ...] = tuple(name for name, _ in STAGE_WEIGHTS)  # ODM's processopts, in order
TABLE_PATH = Path(__file__).resolve().parent.parent / "shared" / "data" / "odm-rerun-stages.json"
# options that choose which stages run, not what they compute: they never make a checkpoint stale
CONTROL_OPTIONS = frozenset({"rerun-from", "rerun", "rerun-all", "end-with"})
# added or capped by the worker itself, not by the user
FARM_OPTIONS = frozenset({"sm-cluster", "max-concurrency"})


# The folders each stage writes (ODM's ODM_Tree). A run that reruns from a stage starts without the folders of
# that stage and the later ones, as ODM's --rerun-all does for all of them: what an earlier run left there (an
# orthophoto a new skip-orthophoto no longer makes, a DEM cut short by a kill) must not reach the results.
STAGE_FOLDERS: dict[str, tuple[str, ...]] = {
    "split": ("submodels",),
    "opensfm": ("opensfm",),
    "openmvs": ("opensfm/undistorted/openmvs",),
    "odm_filterpoints": ("odm_filterpoints",),
    "odm_meshing": ("odm_meshing",),
    "mvs_texturing": ("odm_texturing", "odm_texturing_25d"),
    "odm_georeferencing": ("odm_georeferencing",),
    "odm_dem": ("odm_dem",),
    "odm_orthophoto": ("odm_orthophoto",),
    "odm_report": ("odm_report",),
    "odm_postprocess": ("3d_tiles", "entwine_pointcloud"),
}


def folders_from(stage: str) -> tuple[str, ...]:
    """The folders `stage` and every later stage write."""
    return tuple(f for name in STAGES[STAGES.index(stage) :] for f in STAGE_FOLDERS.get(name, ()))


def outside(files: dict[str, Any], folders: tuple[str, ...]) -> dict[str, Any]:
    """`files` (relative posix paths -> anything) without those in `folders`."""
    return {
        rel: value
        for rel, value in files.items()
        if not any(rel == f or rel.startswith(f + "/") for f in folders)
    }


def load_table(path: Path = TABLE_PATH) -> dict[str, str | None]:
    """The bundled option -> stage table (option names as in /options: dashes)."""
    with path.open(encoding="utf-8") as f:
        return dict(json.load(f)["stages"])


def table_from_odm(raw: dict[str, Any]) -> dict[str, str | None]:
    """ODM's `rerun_stages` (argparse dest names: underscores) as an option -> stage table."""
    table: dict[str, str | None] = {}
    for dest, stage in raw.items():
        name = str(dest).replace("_", "-")
        table[name] = str(stage) if stage in STAGES else None
    return table


def next_stage(stage: str) -> str | None:
    """The stage after `stage`; None after the last one."""
    index = STAGES.index(stage)
    return STAGES[index + 1] if index + 1 < len(STAGES) else None


def option_values(options: list[dict[str, Any]]) -> dict[str, Any]:
    return {o["name"]: o["value"] for o in options if o["name"] not in CONTROL_OPTIONS | FARM_OPTIONS}


def changed_options(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """Names of the options whose value differs (set, unset or changed), sorted."""
    old, new = option_values(before), option_values(after)
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))


def earliest_stage(names: list[str], table: dict[str, str | None]) -> str | None:
    """The first stage any of `names` affects; an option the table does not know affects the first stage."""
    indexes = []
    for name in names:
        if name not in table:
            indexes.append(0)
        elif table[name] is not None:
            indexes.append(STAGES.index(str(table[name])))
    return STAGES[min(indexes)] if indexes else None


@dataclass(frozen=True)
class Plan:
    """What a run does with a checkpoint: rerun from `rerun_from` (None: start over), and why."""

    rerun_from: str | None
    reason: str


def plan(
    saved_stage: str,
    saved_options: list[dict[str, Any]],
    options: list[dict[str, Any]],
    table: dict[str, str | None],
) -> Plan:
    """The stage to rerun from after a checkpoint of `saved_stage` saved with `saved_options`."""
    values = {o["name"]: o["value"] for o in options}
    if values.get("rerun-all") is True or values.get("rerun"):
        return Plan(
            None, "the options ask to rerun everything" if values.get("rerun-all") else "--rerun is set"
        )
    following = next_stage(saved_stage)
    candidates = [
        (following, f"the stage after {saved_stage}") if following else (STAGES[-1], "the last stage again")
    ]
    changed = changed_options(saved_options, options)
    affected = earliest_stage(changed, table)
    if affected is not None:
        candidates.append((affected, f"changed options ({', '.join(changed)}) affect stage {affected}"))
    asked = values.get("rerun-from")
    if asked in STAGES:
        candidates.append((str(asked), f"--rerun-from {asked} is set"))
    stage, reason = min(candidates, key=lambda c: STAGES.index(c[0]))
    if STAGES.index(stage) == 0:
        return Plan(None, reason)
    return Plan(stage, reason)


def with_rerun_from(options: list[dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    """The engine options with `--rerun-from stage` (replacing one the user set)."""
    kept = [o for o in options if o["name"] not in ("rerun-from", "rerun", "rerun-all")]
    return [*kept, {"name": "rerun-from", "value": stage}]
