"""Task files on a worker: safe zip extraction, placing inputs in the project, all.zip, zipurl downloads.

Errors::

    BrokenArchive (ValueError)      a zip that cannot be read, or that would write outside its folder
    └── ArchiveTooLarge             a zip over the file-count or size limit (zip bombs)
    FetchError (RuntimeError)       a zipurl download failed (HTTP error, timeout, size limit)

`fetch_url` also raises `shared.safety.UnsafeUrl` (a ValueError) for a refused URL or redirect hop.
Every message is fit for a task's errorMessage.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin

import requests

from shared.assets import write_zip
from shared.safety import (
    InvalidFileName,
    IPNetwork,
    UnsafeInput,
    check_url,
    redact_url,
    safe_filename,
    walk_inside,
)
from workers.outbound import guarded_session

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_REDIRECTS = 5

# What ODM reads from images/ (opendm/context.py: supported_extensions and supported_video_extensions),
# plus .srt, the GPS track ODM reads beside a drone video.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".raw", ".dng", ".nef", ".jxl"}
    | {".mp4", ".mov", ".lrv", ".ts", ".srt"}
)
ALIGN_NAMES: frozenset[str] = frozenset({"align.las", "align.laz", "align.tif"})
SEED_NAME = "seed.zip"

# The contract's all.zip list; WebODM extracts all.zip and expects exactly this layout.
DEFAULT_OUTPUTS: tuple[str, ...] = (
    "odm_orthophoto/odm_orthophoto.tif",
    "odm_orthophoto/odm_orthophoto.tfw",
    "odm_orthophoto/odm_orthophoto.png",
    "odm_orthophoto/odm_orthophoto.wld",
    "odm_orthophoto/odm_orthophoto.mbtiles",
    "odm_orthophoto/odm_orthophoto.kmz",
    "odm_orthophoto/odm_orthophoto_extent.dxf",
    "odm_orthophoto/cutline.gpkg",
    "odm_georeferencing",
    "odm_texturing",
    "odm_dem/dsm.tif",
    "odm_dem/dtm.tif",
    "dsm_tiles",
    "dtm_tiles",
    "odm_dem/dsm.euclideand.tif",
    "odm_dem/dtm.euclideand.tif",
    "orthophoto_tiles",
    "potree_pointcloud",
    "entwine_pointcloud",
    "3d_tiles",
    "images.json",
    "cameras.json",
    "task_output.txt",
    "log.json",
    "odm_report",
)


class BrokenArchive(ValueError):
    """A zip that cannot be read or that tries to write outside its destination."""


class ArchiveTooLarge(BrokenArchive):
    """A zip with more files or more bytes than allowed."""


class FetchError(RuntimeError):
    """A download failed: HTTP error, timeout, connection error or size limit."""


# --- extraction ---------------------------------------------------------------------------------


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _is_junk(parts: tuple[str, ...]) -> bool:
    """macOS archive litter: resource forks under __MACOSX/, AppleDouble ._ files, .DS_Store."""
    return "__MACOSX" in parts or parts[-1] == ".DS_Store" or parts[-1].startswith("._")


def _entry_parts(name: str) -> tuple[str, ...]:
    # Windows tools write backslashes; zipfile only converts them on Windows.
    return tuple(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))


def _nested_target(name: str, dest: Path, real_dest: Path) -> Path:
    """Where a (non-flat) entry goes; BrokenArchive for names that would leave `dest`."""
    unified = name.replace("\\", "/")
    parts = _entry_parts(name)
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified) or ".." in parts:
        raise BrokenArchive(f"Archive entry {name!r} would be written outside the task folder.")
    target = dest.joinpath(*parts)
    # resolve() follows symlinks already in dest, so a planted link cannot redirect the write
    if not target.resolve().is_relative_to(real_dest):
        raise BrokenArchive(f"Archive entry {name!r} would be written outside the task folder.")
    return target


def _flat_target(name: str, dest: Path, taken: set[str]) -> Path | None:
    """Where a flat entry goes (base name, renamed on collision), or None to skip it."""
    try:
        base = safe_filename(_entry_parts(name)[-1])
    except InvalidFileName:
        log.info("skipping archive entry %r: not a usable file name", name)
        return None
    candidate, stem, suffix, n = base, Path(base).stem, Path(base).suffix, 1
    # two folders of one archive often hold the same camera file names; keep both
    while candidate in taken or (dest / candidate).exists():
        candidate = f"{stem}_{n}{suffix}"
        n += 1
    if candidate != base:
        log.warning("archive entry %r extracted as %s (name already taken)", name, candidate)
    taken.add(candidate)
    return dest / candidate


def size_text(size: int | None) -> str:
    """A byte count as people set it: "1 MB" for whole megabytes, else bytes."""
    if size is not None and size > 0 and size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MB"
    return f"{size} bytes"


def _copy_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int | None) -> int:
    written = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if budget is not None and written > budget:
                raise ArchiveTooLarge("Archive expands to more bytes than allowed.")
            dst.write(chunk)
    return written


def safe_extract(
    zip_path: Path,
    dest: Path,
    *,
    flat: bool = False,
    max_files: int = 100_000,
    max_total_bytes: int | None = None,
) -> list[Path]:
    """Extract `zip_path` into `dest` without ever writing outside it; returns the files written.

    Symlink entries and macOS litter are skipped. Non-flat: an absolute or '..' entry refuses the whole
    archive (BrokenArchive). Flat: each file's base name goes directly in `dest` (folders dropped,
    hidden files skipped, a repeated name gets a _N suffix), so hostile paths cannot matter.
    """
    label = zip_path.name
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise BrokenArchive(f"{label} is not a valid zip archive ({exc}).") from None
    except OSError as exc:
        raise BrokenArchive(f"{label} cannot be read ({exc.strerror or exc}).") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise ArchiveTooLarge(f"{label} holds {len(infos)} entries; at most {max_files} are allowed.")
        declared = sum(info.file_size for info in infos)
        if max_total_bytes is not None and declared > max_total_bytes:
            raise ArchiveTooLarge(
                f"{label} expands to {declared} bytes; at most {size_text(max_total_bytes)} are allowed."
            )
        dest.mkdir(parents=True, exist_ok=True)
        real_dest = dest.resolve()
        taken: set[str] = set()
        # every name is checked before anything is written, so a hostile archive writes nothing at all
        plan: list[tuple[zipfile.ZipInfo, Path, bool]] = []
        for info in infos:
            parts = _entry_parts(info.filename)
            if not parts or _is_junk(parts):
                continue
            if _is_symlink(info):
                log.warning("skipping symlink entry %r in %s", info.filename, label)
                continue
            is_dir = info.is_dir() or info.filename.replace("\\", "/").endswith("/")
            if flat:
                if is_dir:
                    continue
                target = _flat_target(info.filename, dest, taken)
                if target is None:
                    continue
            else:
                target = _nested_target(info.filename, dest, real_dest)
            plan.append((info, target, is_dir))
        written: list[Path] = []
        total = 0
        for info, target, is_dir in plan:
            try:
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                budget = None if max_total_bytes is None else max_total_bytes - total
                total += _copy_entry(zf, info, target, budget)
            except ArchiveTooLarge:
                target.unlink(missing_ok=True)
                raise ArchiveTooLarge(f"{label} expands to more than {size_text(max_total_bytes)}.") from None
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                # bad CRC, truncated data, unsupported compression, encrypted entry
                target.unlink(missing_ok=True)
                raise BrokenArchive(
                    f"{label}: entry {info.filename!r} cannot be extracted ({exc})."
                ) from None
            except OSError as exc:
                if exc.errno in (errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
                    raise BrokenArchive(
                        f"{label}: entry {info.filename!r} cannot be written ({exc.strerror})."
                    ) from None
                raise
            written.append(target)
        return written


# --- placing a task's inputs --------------------------------------------------------------------


@dataclass
class PlacedInputs:
    images_count: int
    input_flags: dict[str, Path] = field(default_factory=dict)  # "gcp"/"geo"/"align"/"split-image-groups"


def _is_gcp_file(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith(".txt") or lowered in ALIGN_NAMES


def _move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copyfile(src, dst)
        src.unlink()


def _input_flags(gcp_dir: Path) -> dict[str, Path]:
    flags: dict[str, Path] = {}
    for path in sorted(p for p in gcp_dir.iterdir() if p.is_file()):
        lowered = path.name.lower()
        if lowered == "geo.txt":
            flags["geo"] = path
        elif lowered == "image_groups.txt":
            flags["split-image-groups"] = path
        elif lowered.endswith(".txt"):
            flags.setdefault("gcp", path)
        elif lowered in ALIGN_NAMES:
            flags.setdefault("align", path)
    return flags


# Archives never expand into the last of the scratch disk: the engine and the results need room too.
SCRATCH_RESERVE = 256 * 1024 * 1024


def expansion_budget(project_dir: Path, max_total_bytes: int | None) -> int:
    """Bytes a task's archives may expand to: the setting, and never more than the scratch disk has free."""
    free = shutil.disk_usage(project_dir).free - SCRATCH_RESERVE
    return max(0, free if max_total_bytes is None else min(max_total_bytes, free))


def place_inputs(
    inputs_dir: Path,
    project_dir: Path,
    *,
    max_files: int = 100_000,
    max_total_bytes: int | None = None,
) -> PlacedInputs:
    """Move a task's input files into its project folder and find the engine's input flags.

    `seed.zip` is extracted into the project root (first, so uploaded files win) and removed; other zips
    contribute their images (flat, to images/) and their .txt/align files (to gcp/) and are removed;
    loose .txt and align.las|laz|tif go to gcp/, everything else to images/. `max_files` applies to each
    archive; `max_total_bytes` (capped by the free scratch space) to all of a task's archives together.
    ArchiveTooLarge stops at the limit: what was extracted so far is the caller's scratch to remove.
    """
    images_dir = project_dir / "images"
    gcp_dir = project_dir / "gcp"
    images_dir.mkdir(parents=True, exist_ok=True)
    gcp_dir.mkdir(parents=True, exist_ok=True)
    budget = expansion_budget(project_dir, max_total_bytes)
    disk_bound = max_total_bytes is None or budget < max_total_bytes

    files = []
    for path in sorted(p for p in inputs_dir.iterdir() if p.is_file()):
        try:
            if safe_filename(path.name) == path.name:
                files.append(path)
                continue
        except UnsafeInput:
            pass
        log.warning("ignoring input %r: not a plain file name", path.name)
    seeds = [p for p in files if p.name.lower() == SEED_NAME]
    archives = [p for p in files if p.suffix.lower() == ".zip" and p not in seeds]
    loose = [p for p in files if p.suffix.lower() != ".zip"]

    def extract(archive: Path, dest: Path, flat: bool) -> list[Path]:
        nonlocal budget
        try:
            written = safe_extract(archive, dest, flat=flat, max_files=max_files, max_total_bytes=budget)
        except ArchiveTooLarge as exc:
            if disk_bound and "entries" not in str(exc):
                raise ArchiveTooLarge(
                    f"{archive.name} does not fit in the worker's free scratch space."
                ) from None
            if max_total_bytes is not None and budget < max_total_bytes:  # earlier archives used a part
                raise ArchiveTooLarge(
                    f"{exc} A task's archives may expand to at most {size_text(max_total_bytes)} together."
                ) from None
            raise
        budget -= sum(path.stat().st_size for path in written)
        return written

    for seed in seeds:
        extract(seed, project_dir, flat=False)
        seed.unlink()
    for archive in archives:
        staging = Path(tempfile.mkdtemp(prefix=".unzip-", dir=project_dir))
        try:
            extracted = extract(archive, staging, flat=True)
            for path in extracted:
                if _is_gcp_file(path.name):
                    _move(path, gcp_dir / path.name)
                elif path.suffix.lower() in IMAGE_SUFFIXES:
                    _move(path, images_dir / path.name)
                else:
                    log.info("ignoring %s from %s: not an image", path.name, archive.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        archive.unlink()
    for path in loose:
        _move(path, (gcp_dir if _is_gcp_file(path.name) else images_dir) / path.name)

    images_count = sum(1 for p in images_dir.iterdir() if p.is_file())
    return PlacedInputs(images_count=images_count, input_flags=_input_flags(gcp_dir))


# --- all.zip ------------------------------------------------------------------------------------


def build_all_zip(
    project_dir: Path,
    zip_path: Path,
    outputs: list[str] | None = None,
    check: Callable[[], None] | None = None,
) -> list[str]:
    """Write all.zip from the existing entries of `outputs` (default: DEFAULT_OUTPUTS); returns arcnames.

    Folders are added recursively; arcnames are relative to `project_dir`; nothing outside the project
    (by '..' or by symlink) is ever added; missing entries are skipped. `check` runs before each file and
    may raise to stop (a cancel must not wait for a large project to be zipped).
    """
    entries = DEFAULT_OUTPUTS if outputs is None else outputs

    def members() -> Iterable[tuple[Path, str]]:
        for entry in entries:
            relative = PurePosixPath(entry)
            if relative.is_absolute() or ".." in relative.parts:
                log.warning("skipping output %r: outside the project", entry)
                continue
            start = project_dir.joinpath(*relative.parts)
            for path in walk_inside(project_dir, start):
                if check is not None:
                    check()
                yield path, path.relative_to(project_dir).as_posix()

    return write_zip(zip_path, members())


# --- zipurl -------------------------------------------------------------------------------------


def fetch_url(
    url: str,
    dest: Path,
    blocked_networks: Iterable[str | IPNetwork],
    max_bytes: int | None = None,
    timeout: float = 60,
) -> int:
    """Download `url` to `dest`, following up to 5 redirects (each hop checked); returns the bytes written.

    `timeout` bounds connecting and each read, not the whole transfer (archives can be many GB).
    """
    networks = list(blocked_networks)
    shown = redact_url(url)
    session = guarded_session(networks)
    current = url
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            check_url(current, networks)
            response = session.get(current, stream=True, allow_redirects=False, timeout=timeout)
            with response:
                if response.is_redirect:
                    current = urljoin(current, response.headers["location"])
                    continue
                if not 200 <= response.status_code < 300:
                    status = f"{response.status_code} {response.reason or ''}".strip()
                    raise FetchError(f"Download of {shown} failed: HTTP {status}.")
                return _save(response, dest, shown, max_bytes)
        raise FetchError(f"Download of {shown} failed: more than {MAX_REDIRECTS} redirects.")
    except requests.Timeout:
        raise FetchError(f"Download of {shown} failed: no answer within {timeout:g} s.") from None
    except requests.ConnectionError as exc:
        raise FetchError(f"Download of {shown} failed: cannot connect ({_reason(exc)}).") from None
    except requests.RequestException as exc:
        raise FetchError(f"Download of {shown} failed: {_reason(exc)}.") from None
    finally:
        session.close()


def _save(response: requests.Response, dest: Path, shown: str, max_bytes: int | None) -> int:
    declared = response.headers.get("content-length", "")
    if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"Download of {shown} refused: {declared} bytes is over the limit of {max_bytes}.")
    written = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            for chunk in response.iter_content(CHUNK):
                written += len(chunk)
                if max_bytes is not None and written > max_bytes:
                    raise FetchError(f"Download of {shown} stopped: over the limit of {max_bytes} bytes.")
                out.write(chunk)
    except requests.RequestException as exc:
        # a stalled or cut transfer surfaces here (requests reports a read timeout as ConnectionError)
        dest.unlink(missing_ok=True)
        raise FetchError(f"Download of {shown} broke off after {written} bytes ({_reason(exc)}).") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return written


def _reason(exc: requests.RequestException) -> str:
    """The useful part of a requests error ("[Errno 111] Connection refused"), not urllib3's wrapping."""
    inner: object = exc.args[0] if exc.args else exc
    inner = getattr(inner, "reason", None) or inner
    text = str(inner)
    # urllib3 prefixes "<...HTTPConnection object at 0x...>: " or "HTTPConnectionPool(host=..., port=...): "
    text = re.sub(r"^<[^>]* object at 0x[0-9a-f]+>: ", "", text)
    return re.sub(r"^\w+\(host=[^)]*\): ", "", text)
