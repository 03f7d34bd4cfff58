"""A run's progress as clients see it: ODM's UDP datagrams, or else the stage lines of ODM's console."""

from __future__ import annotations

import re

ENGINE_SHARE = 0.9  # the engine reports 0-100; the farm keeps the last tenth for post-processing and upload

# ODM's stages in order and the progress each reports when it finishes (ODM's stages/odm_app.py). split and
# merge only report theirs when the dataset is really split; otherwise they pass through.
STAGES = (
    ("dataset", 5.0),
    ("split", 75.0),
    ("merge", 100.0),
    ("opensfm", 25.0),
    ("openmvs", 50.0),
    ("odm_filterpoints", 52.0),
    ("odm_meshing", 60.0),
    ("mvs_texturing", 70.0),
    ("odm_georeferencing", 80.0),
    ("odm_dem", 90.0),
    ("odm_orthophoto", 98.0),
    ("odm_report", 100.0),
    ("odm_postprocess", 100.0),
)
WEIGHTS = dict(STAGES)
SPLIT_ONLY = ("split", "merge")
# ODM logs "Running <stage> stage" / "Finished <stage> stage" (opendm/types.py), after a level tag that may be
# coloured with ANSI escapes.
STAGE_LINE = re.compile(r"\b(Running|Finished) ([a-z_]+) stage\s*$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
NOT_SPLIT = "Normal dataset, will process all at once"


class StageProgress:
    """Follows one run's console; feed() returns the ODM progress (0-100) its stage lines show, if any."""

    def __init__(self) -> None:
        self.splitting = True

    def feed(self, lines: list[str]) -> float | None:
        best: float | None = None
        for line in lines:
            text = ANSI.sub("", line)
            if NOT_SPLIT in text:
                self.splitting = False
            match = STAGE_LINE.search(text)
            if not match or match.group(2) not in WEIGHTS:
                continue
            value = self._value(match.group(1), match.group(2))
            if value is not None:
                best = value if best is None else max(best, value)
        return best

    def _value(self, verb: str, stage: str) -> float | None:
        if verb == "Finished":
            if stage in SPLIT_ONLY and not self.splitting:
                return None
            return WEIGHTS[stage]
        # a stage starting: the ones before it are done (split/merge aside, which may have passed through)
        names = [name for name, _ in STAGES if name not in SPLIT_ONLY]
        if stage not in names or names.index(stage) == 0:
            return None
        return WEIGHTS[names[names.index(stage) - 1]]
