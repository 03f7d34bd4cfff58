"""Progress from ODM's console stage lines, for when its UDP datagrams go to another listener."""

from __future__ import annotations

from workers.progress import StageProgress


def test_stage_lines_give_odm_progress_including_coloured_ones() -> None:
    stages = StageProgress()
    assert stages.feed(["[INFO]    Initializing ODM 3.5.0", "[INFO]    Running dataset stage"]) is None
    assert stages.feed(["\x1b[39m[INFO]    Finished dataset stage\x1b[0m"]) == 5
    assert stages.feed(["[INFO]    Running opensfm stage"]) == 5
    assert stages.feed(["[INFO]    Finished opensfm stage", "[INFO]    Running openmvs stage"]) == 25
    assert stages.feed(["[INFO]    Finished odm_orthophoto stage"]) == 98
    assert stages.feed(["[INFO]    Running odm_unknown stage", "this stage"]) is None


def test_split_and_merge_count_only_when_the_dataset_is_split() -> None:
    normal = StageProgress()
    normal.feed(["[INFO]    Finished dataset stage", "[INFO]    Running split stage"])
    assert normal.feed(["[INFO]    Normal dataset, will process all at once.", "[INFO]    Finished split stage"]) is None
    split = StageProgress()
    assert split.feed(["[INFO]    Finished split stage"]) == 75
