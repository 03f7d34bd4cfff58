#!/usr/bin/env python3
"""A stand-in for ODM's run.sh: ODM's command line, console lines, UDP progress and a small project tree."""

# Run as a script by the simulate engine (stdlib only; laspy + lazrs are used when importable):
#   python simulate_odm.py [ODM options] --project-path <root> <name>
# Test controls: env ODM_FARM_SIMULATE_SECONDS (total duration, default 5), ODM_FARM_SIMULATE_EXIT (exit code
# after the first stage), ODM_FARM_PROGRESS_PORT (UDP port, default 6367); an image named
# simulate-exit-<code>.<ext> or simulate-seconds-<n>.<ext> does the same for one dataset; ODM_FARM_SIMULATE_STAGE_MB
# makes each computed stage write that many MB more (simulate_ballast/<stage>.bin); an image named
# simulate-enospc.<ext> makes the openmvs stage write until the disk is "full": the write fails with ENOSPC
# (injected after 1 MB) and the run ends with Python's traceback, as ODM does when a disk fills up.

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import gzip
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

VERSION = "3.5.0"
CATALOG_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "odm-options.json"
INPUT_FLAGS = ("gcp", "geo", "align", "split-image-groups")
# ODM's stages in order; progress when each ends (ODM's stages/odm_app.py; split and merge pass through when
# not splitting), and its share of the run's duration, so a long run spends its time where ODM does.
STAGE_TABLE = [
    ("dataset", 5, 3),
    ("split", 5, 0.5),
    ("merge", 5, 0.5),
    ("opensfm", 25, 22),
    ("openmvs", 50, 28),
    ("odm_filterpoints", 52, 4),
    ("odm_meshing", 60, 8),
    ("mvs_texturing", 70, 10),
    ("odm_georeferencing", 80, 8),
    ("odm_dem", 90, 6),
    ("odm_orthophoto", 98, 6),
    ("odm_report", 100, 3),
    ("odm_postprocess", 100, 1),
]
STAGES = tuple(stage for stage, _, _ in STAGE_TABLE)
PROGRESS = {stage: progress for stage, progress, _ in STAGE_TABLE}
TIME_SHARE = {stage: share for stage, _, share in STAGE_TABLE}
CHILD_STAGES = {"opensfm": "opensfm detect_features", "openmvs": "DensifyPointCloud"}
PHOTO_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".raw", ".dng", ".nef"}
IMAGE_EXTENSIONS = PHOTO_EXTENSIONS | {".mp4", ".mov", ".lrv", ".ts"}  # ODM extracts frames from videos
EPSG = 32615  # WGS84 / UTM 15N, where the fake survey lies
ORIGIN = (576000.0, 5187500.0)  # UTM corner of the fake survey
LAT0, LON0 = 46.8422, -91.9940
EXTENT = 40.0  # metres covered by point cloud, orthophoto and DEMs


def log(level: str, message: str) -> None:
    print(f"{('[' + level + ']').ljust(9)} {message}", flush=True)


def on_signal(signum: int, _frame: Any) -> None:
    # Like ODM: warn and leave at once with 1. Children are not relayed the signal on purpose, so only a
    # process-group kill stops them (os.write: the print buffer may be mid-write when the signal lands).
    name = signal.Signals(signum).name
    with contextlib.suppress(OSError):  # nobody may read the console any more
        os.write(1, f"[WARNING] Caught {name} signal, attempting to exit gracefully...\n".encode())
    os._exit(1)


# ---------------------------------------------------------------- command line


def load_catalog() -> list[dict[str, Any]]:
    with CATALOG_PATH.open(encoding="utf-8") as f:
        return json.load(f)


def build_parser(catalog: list[dict[str, Any]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", allow_abbrev=False, description="ODM Farm's stand-in for OpenDroneMap."
    )
    parser.add_argument("--version", action="version", version=f"ODM {VERSION}")
    parser.add_argument("--project-path", metavar="<path>", required=True)
    parser.add_argument("name", metavar="<dataset name>", nargs="?", default="code")
    for flag in INPUT_FLAGS:
        parser.add_argument(f"--{flag}", metavar="<path string>", default=None)
    casts: dict[str, Callable[[str], Any]] = {"int": int, "float": float}
    for opt in catalog:
        flag, dest, kind = f"--{opt['name']}", opt["name"].replace("-", "_"), opt["type"]
        if kind == "bool":
            parser.add_argument(flag, dest=dest, action="store_true", help=opt["help"])
            continue
        cast = casts.get(kind, str)
        default = None if opt["value"] == "None" else cast(opt["value"])
        choices = opt["domain"] if kind == "enum" else None
        parser.add_argument(
            flag,
            dest=dest,
            type=cast,
            default=default,
            choices=choices,
            metavar=f"<{kind}>",
            help=opt["help"],
        )
    return parser


# ---------------------------------------------------------------- file formats


def png_bytes(width: int, height: int, rows: list[bytes], channels: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6 if channels == 4 else 2, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def tiff_bytes(
    width: int,
    height: int,
    bands: int,
    floating: bool,
    pixels: bytes,
    pixel_size: float,
    nodata: str | None = None,
) -> bytes:
    """A little-endian, one-strip, uncompressed GeoTIFF (uint8 or float32 samples) placed at ORIGIN."""
    short, long_, double, ascii_ = 3, 4, 12, 2
    fmt = {short: "H", long_: "I", double: "d"}
    tags: list[tuple[int, int, Any]] = [
        (256, long_, [width]),
        (257, long_, [height]),
        (258, short, [32 if floating else 8] * bands),
        (259, short, [1]),
        (262, short, [2 if bands >= 3 else 1]),
        (273, long_, [0]),
        (277, short, [bands]),
        (278, long_, [height]),
        (279, long_, [len(pixels)]),
        (284, short, [1]),
        (339, short, [3 if floating else 1] * bands),
        (33550, double, [pixel_size, pixel_size, 0.0]),
        (33922, double, [0.0, 0.0, 0.0, ORIGIN[0], ORIGIN[1] + EXTENT, 0.0]),
        # GeoKey directory: projected model, pixel-is-area, EPSG code of the projected system
        (34735, short, [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, EPSG]),
    ]
    if bands == 4:
        tags.append((338, short, [2]))  # the fourth band is unassociated alpha
    if nodata is not None:
        tags.append((42113, ascii_, nodata))  # GDAL_NODATA
    tags.sort(key=lambda tag: tag[0])

    def payload(kind: int, values: Any) -> bytes:
        if kind == ascii_:
            return values.encode("ascii") + b"\x00"
        return struct.pack(f"<{len(values)}{fmt[kind]}", *values)

    def count(kind: int, values: Any) -> int:
        return len(values) + 1 if kind == ascii_ else len(values)

    ifd_size = 2 + 12 * len(tags) + 4
    extra_size = sum((len(payload(k, v)) + 1) // 2 * 2 for _, k, v in tags if len(payload(k, v)) > 4)
    strip_offset = 8 + ifd_size + extra_size
    ifd, extra = [struct.pack("<H", len(tags))], []
    extra_offset = 8 + ifd_size
    for tag, kind, values in tags:
        if tag == 273:
            values = [strip_offset]
        data = payload(kind, values)
        if len(data) <= 4:
            ifd.append(struct.pack("<HHI", tag, kind, count(kind, values)) + data.ljust(4, b"\x00"))
        else:
            ifd.append(struct.pack("<HHII", tag, kind, count(kind, values), extra_offset))
            data = data.ljust((len(data) + 1) // 2 * 2, b"\x00")
            extra.append(data)
            extra_offset += len(data)
    ifd.append(struct.pack("<I", 0))
    return b"II*\x00" + struct.pack("<I", 8) + b"".join(ifd) + b"".join(extra) + pixels


def pdf_bytes(lines: list[str]) -> bytes:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    text = "BT /F1 11 Tf 72 740 Td 16 TL " + " ".join(f"({escape(line)}) '" for line in lines) + " ET"
    stream = text.encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


Point = tuple[float, float, float, int, int, int]  # easting, northing, elevation, red, green, blue


def survey_points(step: float = 2.0) -> list[Point]:
    """A gentle hill with a box-shaped 'building', in UTM coordinates."""
    points = []
    count = int(EXTENT / step)
    for i in range(count):
        for j in range(count):
            x, y = i * step + step / 2, j * step + step / 2
            z = 200.0 + 3.0 * math.sin(x / 9.0) * math.cos(y / 11.0)
            if 14 <= x <= 22 and 16 <= y <= 26:
                z += 6.0
            colour = (int(x * 1600) % 65536, int(y * 1600) % 65536, int(z * 150) % 65536)
            points.append((ORIGIN[0] + x, ORIGIN[1] + y, z, *colour))
    return points


def las_bytes(points: list[Point]) -> bytes:
    """LAS 1.2, point format 2 (XYZ + RGB), written by hand when laspy is not available."""
    scale, offset = 0.001, (ORIGIN[0], ORIGIN[1], 0.0)
    xs, ys, zs = ([p[k] for p in points] for k in range(3))
    today, n = datetime.date.today(), len(points)
    header = (
        struct.pack("<4sHHIHH8sBB", b"LASF", 0, 0, 0, 0, 0, bytes(8), 1, 2)  # ids, GUID, version 1.2
        + b"ODM Farm simulate".ljust(32, b"\x00")
        + f"ODM {VERSION}".encode().ljust(32, b"\x00")
        # creation day and year, header size, data offset, no VLRs, format 2 of 26 bytes, counts by return
        + struct.pack(
            "<HHHIIBHI5I", today.timetuple().tm_yday, today.year, 227, 227, 0, 2, 26, n, n, 0, 0, 0, 0
        )
        + struct.pack("<6d", scale, scale, scale, *offset)
        + struct.pack("<6d", max(xs), min(xs), max(ys), min(ys), max(zs), min(zs))
    )
    records = bytearray()
    for x, y, z, r, g, b in points:
        xyz = (round((x - offset[0]) / scale), round((y - offset[1]) / scale), round((z - offset[2]) / scale))
        # intensity, return 1 of 1, class 2 (ground), scan angle, user data, point source, RGB
        records += struct.pack("<iiiHBBbBH3H", *xyz, 100, 0b00001001, 2, 0, 0, 0, r, g, b)
    return header + bytes(records)


def write_laz(path: Path, points: list[Point]) -> bool:
    """A real LAZ through laspy + lazrs; False when they are missing.

    The cloud is the same every run, so the file is built once a day and copied afterwards: importing laspy
    (numpy) takes longer than a zero-second simulated run should.
    """
    folder = Path(os.environ.get("ODM_FARM_SIMULATE_CACHE") or tempfile.gettempdir())
    cache = folder / f"odm-farm-simulate-{VERSION}-{datetime.date.today()}-{len(points)}.laz"
    if cache.is_file():
        shutil.copyfile(cache, path)
        return True
    if not _build_laz(path, points):
        return False
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.part")
    with contextlib.suppress(OSError):
        shutil.copyfile(path, partial)
        os.replace(partial, cache)
    return True


def _build_laz(path: Path, points: list[Point]) -> bool:
    try:
        import laspy
        import lazrs  # noqa: F401  (laspy's LAZ backend)
        import numpy as np
    except ImportError:
        return False
    header = laspy.LasHeader(point_format=2, version="1.2")
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.array([ORIGIN[0], ORIGIN[1], 0.0])
    las = laspy.LasData(header)
    columns = np.array(points, dtype=np.float64)
    las.x, las.y, las.z = columns[:, 0], columns[:, 1], columns[:, 2]
    las.red, las.green, las.blue = (columns[:, k].astype(np.uint16) for k in (3, 4, 5))
    las.classification = np.full(len(points), 2, dtype=np.uint8)
    las.write(str(path), do_compress=True, laz_backend=laspy.LazBackend.Lazrs)
    return True


def ply_text(points: list[Point]) -> str:
    header = (
        "ply\nformat ascii 1.0\ncomment generated by ODM Farm simulate\n"
        f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    dx, dy = ORIGIN  # ODM keeps intermediate clouds in local coordinates
    return header + "".join(
        f"{x - dx:.3f} {y - dy:.3f} {z:.3f} {r >> 8} {g >> 8} {b >> 8}\n" for x, y, z, r, g, b in points
    )


def image_size(path: Path) -> tuple[int, int] | None:
    """Width and height read from a JPEG or PNG header; None for anything else."""
    try:
        with path.open("rb") as f:
            head = f.read(65536)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(head) and head[i] == 0xFF:
            marker, length = head[i + 1], struct.unpack(">H", head[i + 2 : i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height, width = struct.unpack(">HH", head[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None


# ---------------------------------------------------------------- the run


class Run:
    """One simulated ODM run over <project-path>/<name>."""

    def __init__(self, args: argparse.Namespace, seconds: float, exit_code: int | None, port: int) -> None:
        self.args = args
        self.project = Path(args.project_path) / args.name
        self.seconds = seconds
        self.exit_code = exit_code
        self.port = port
        self.pid = os.getpid()
        self.children: list[subprocess.Popen[bytes]] = []
        self.stage_log: list[dict[str, Any]] = []
        self.started = datetime.datetime.now()
        self.images = sorted(
            p
            for p in (self.project / "images").iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        self.points = survey_points()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.warned_progress = False

    def path(self, *parts: str) -> Path:
        target = self.project.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def send_progress(self, value: float) -> None:
        message = f"PGUP/{self.pid}/{self.args.name}/{float(value)}".encode()
        try:
            self.sock.sendto(message, ("127.0.0.1", self.port))
        except OSError as exc:  # nobody listening is fine; say so once
            if not self.warned_progress:
                log("WARNING", f"Failed to broadcast progress update on UDP port {self.port} ({exc})")
                self.warned_progress = True

    def spawn_child(self, label: str) -> None:
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.children.append(child)
        with (self.project / ".simulate-children").open("a", encoding="utf-8") as f:
            f.write(f"{child.pid}\n")
        log("INFO", f'running {label} "{self.project}" (simulated by pid {child.pid})')

    def kill_children(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        self.children.clear()

    def work(self, stage: str, start: float, end: float) -> None:
        """Sleep the stage's share of the duration, sending a few intermediate progress values."""
        share = self.seconds * TIME_SHARE[stage] / sum(TIME_SHARE.values())
        steps = 4 if TIME_SHARE[stage] >= 10 else 1
        for step in range(1, steps + 1):
            time.sleep(share / steps)
            if step < steps and end > start:
                self.send_progress(start + (end - start) * step / steps)

    def write_ballast(self, stage: str) -> None:
        """ODM_FARM_SIMULATE_STAGE_MB: each computed stage also writes that many MB of incompressible data,
        so that a project folder weighs something (checkpoint benchmarks)."""
        try:
            megabytes = float(os.environ.get("ODM_FARM_SIMULATE_STAGE_MB") or 0)
        except ValueError:
            megabytes = 0.0
        if megabytes <= 0:
            return
        target = self.path("simulate_ballast", f"{stage}.bin")
        left = int(megabytes * 1024 * 1024)
        with target.open("wb") as f:
            while left > 0:
                chunk = os.urandom(min(left, 1024 * 1024))
                f.write(chunk)
                left -= len(chunk)

    def read_image_list(self) -> None:
        """Later stages open the images OpenSfM listed by absolute path: a project folder moved to another
        path without its paths following fails here, as ODM would."""
        listing = self.project / "opensfm" / "image_list.txt"
        if not listing.exists():
            return
        for line in listing.read_text(encoding="utf-8").splitlines():
            if line and not Path(line).is_file():
                raise MissingImage(f"Cannot open image {line}: No such file or directory")

    def execute(self) -> int:
        rerun_from = STAGES.index(self.args.rerun_from) if self.args.rerun_from else len(STAGES)
        last = STAGES.index(self.args.end_with)
        previous = 0.0
        for index, stage in enumerate(STAGES[: last + 1]):
            started = datetime.datetime.now()
            log("INFO", f"Running {stage} stage")
            outputs = STAGE_OUTPUTS[stage](self)
            if index < rerun_from and outputs and all(p.exists() for p in outputs):
                log(
                    "WARNING",
                    f"Found existing {outputs[0].relative_to(self.project)}, skipping {stage} "
                    f"(use --rerun-from {stage} to compute it again)",
                )
            elif index < rerun_from < len(STAGES) and not outputs:
                # a stage with nothing to write (split and merge of a normal dataset, a DEM nobody asked
                # for...) passes through at once before the stage ODM was told to rerun from
                log("INFO", f"Nothing to do for {stage} before --rerun-from {self.args.rerun_from}")
            else:
                if stage == "openmvs" and any((self.project / "images").glob("simulate-enospc.*")):
                    fill_disk(self)
                if index > STAGES.index("opensfm"):
                    self.read_image_list()
                if stage in CHILD_STAGES:
                    self.spawn_child(CHILD_STAGES[stage])
                self.work(stage, previous, PROGRESS[stage])
                self.kill_children()
                STAGE_WRITERS[stage](self)
                self.write_ballast(stage)
            # ODM's split-merge runs a submodel's reconstruction on another node with this flag file: OpenSfM
            # stops after the reconstruction and ends the pipeline (stages/run_opensfm.py)
            stop_flag = self.project / "opensfm" / "split_merge_stop_at_reconstruction.txt"
            stop_here = stage == "opensfm" and stop_flag.exists()
            if stop_here:
                log("INFO", f"Stopping OpenSfM early because we found: {stop_flag}")
            log("INFO", f"Finished {stage} stage")
            self.send_progress(PROGRESS[stage])
            previous = PROGRESS[stage]
            self.stage_log.append(
                {
                    "name": stage,
                    "startTime": started.isoformat(),
                    "endTime": datetime.datetime.now().isoformat(),
                    "totalTime": round((datetime.datetime.now() - started).total_seconds(), 3),
                }
            )
            if index == 0 and self.exit_code is not None:
                return self.fail(self.exit_code)
            if stop_here:
                break
        if last < len(STAGES) - 1:
            log("INFO", "No more stages to run")
        log("INFO", f"ODM app finished - {time.strftime('%a %b %d %H:%M:%S %Y')}")
        self.write_log_json(None)
        return 0

    def fail(self, code: int) -> int:
        print("\n===== Dumping Info for Geeks (developers need this to fix bugs) =====", flush=True)
        print(f"Child returned {code}", flush=True)
        print("===== Done, human-readable information to follow... =====\n", flush=True)
        messages = {
            137: "Whoops! The process ran out of memory (simulated). Add RAM or lower the quality settings.",
            132: "Oh no! This CPU does not seem to be supported (simulated).",
            3: "A program required for processing could not be found (simulated installation issue).",
        }
        default = (
            "Uh oh! Processing stopped because of strange values in the reconstruction (simulated)."
            if code in (1, 134, 139)
            else "The program exited with an unexpected error code (simulated)."
        )
        log("ERROR", messages.get(code, default))
        self.write_log_json({"code": code, "message": messages.get(code, default)})
        return code

    def write_log_json(self, error: dict[str, Any] | None) -> None:
        ended = datetime.datetime.now()
        data: dict[str, Any] = {
            "odmVersion": VERSION,
            "cpus": os.cpu_count(),
            "images": len(self.images),
            "options": {k: v for k, v in vars(self.args).items() if k not in ("name", "project_path")},
            "startTime": self.started.isoformat(),
            "stages": self.stage_log,
            "processes": [],
            "success": error is None,
            "endTime": ended.isoformat(),
            "totalTime": round((ended - self.started).total_seconds(), 3),
        }
        if error is not None:
            data["error"] = error
        self.path("log.json").write_text(json.dumps(data, indent=4), encoding="utf-8")


# ---------------------------------------------------------------- stages


def write_dataset(run: Run) -> None:
    log("INFO", f"Loading dataset from: {run.project / 'images'}")
    log("INFO", f"Loading {len(run.images)} images")
    for flag in ("gcp", "geo", "align"):
        value = getattr(run.args, flag)
        if value:
            level = "INFO" if Path(value).is_file() else "WARNING"
            log(level, f"{flag.upper()} file {'found' if level == 'INFO' else 'not found'}: {value}")
    entries = []
    columns = max(1, math.ceil(math.sqrt(len(run.images))))
    for n, image in enumerate(run.images):
        width, height = image_size(image) or (4000, 3000)
        entries.append(
            {
                "filename": image.name,
                "mask": None,
                "width": width,
                "height": height,
                "camera_make": "DJI",
                "camera_model": "FC6310",
                "orientation": 1,
                "latitude": round(LAT0 + 0.00018 * (n // columns), 7),
                "longitude": round(LON0 + 0.00026 * (n % columns), 7),
                "altitude": 320.0,
                "band_name": "RGB",
                "band_index": 0,
                "fnumber": 2.8,
                "exposure_time": 0.001,
                "iso_speed": 100,
                "utc_time": 1700000000000.0 + 2000.0 * n,
                "exif_width": width,
                "exif_height": height,
                "camera_projection": "brown",
                "focal_ratio": 0.8333,
            }
        )
    run.path("images.json").write_text(json.dumps(entries, indent=4), encoding="utf-8")
    log("INFO", f"Wrote images database: {run.project / 'images.json'}")
    log("INFO", f"Found {len(entries)} usable images")
    log("INFO", f"Parsing SRS header: WGS84 UTM 15N (EPSG:{EPSG})")


def write_split(run: Run) -> None:
    log("INFO", "Normal dataset, will process all at once.")


def write_merge(run: Run) -> None:
    log("INFO", "Normal dataset, nothing to merge.")


def write_opensfm(run: Run) -> None:
    entries = json.loads((run.project / "images.json").read_text(encoding="utf-8"))
    sizes = {
        e.get("filename", str(n)): (e.get("width", 4000), e.get("height", 3000))
        for n, e in enumerate(entries)
    }
    cameras = {
        f"v2 dji fc6310 {w} {h} brown 0.8333": {
            "projection_type": "brown",
            "width": w,
            "height": h,
            "focal_x": 0.8333,
            "focal_y": 0.8333,
            "c_x": 0.0,
            "c_y": 0.0,
            "k1": 0.0,
            "k2": 0.0,
            "p1": 0.0,
            "p2": 0.0,
            "k3": 0.0,
        }
        for w, h in sizes.values()
    }
    shots = {
        name: {
            "camera": f"v2 dji fc6310 {w} {h} brown 0.8333",
            "rotation": [0.0, 0.0, 0.0],
            "translation": [0.0, 0.0, -120.0],
            "gps_position": [0.0, 0.0, 120.0],
        }
        for name, (w, h) in sizes.items()
    }
    reconstruction = [
        {
            "cameras": cameras,
            "shots": shots,
            "points": {},
            "reference_lla": {"latitude": LAT0, "longitude": LON0, "altitude": 200.0},
        }
    ]
    write_opensfm_dataset(run, entries, cameras)
    # as OpenSfM in ODM: the images by absolute path, read again by later stages (read_image_list)
    images = sorted(p for p in (run.project / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    run.path("opensfm", "image_list.txt").write_text("".join(f"{p}\n" for p in images), encoding="utf-8")
    log("INFO", f"Extracted features and matched {len(entries)} images")
    run.path("opensfm", "reconstruction.json").write_text(json.dumps(reconstruction), encoding="utf-8")
    run.path("opensfm", "tracks.csv").write_text(
        "OPENSFM_TRACKS_VERSION_v2\n"
        + "".join(
            f"{name}\t{n}\t{n}\t0.1\t0.1\t0.004\t120\t110\t100\t-1\t-1\n" for n, name in enumerate(shots)
        ),
        encoding="utf-8",
    )
    run.path("cameras.json").write_text(json.dumps(cameras, indent=4), encoding="utf-8")
    log("INFO", f"Reconstructed {len(shots)} shots, exported {run.project / 'cameras.json'}")


def write_opensfm_dataset(run: Run, entries: list[dict[str, Any]], cameras: dict[str, Any]) -> None:
    """What ODM's split-merge moves between nodes: exif, camera models, reference position (kept when seeded),
    features and matches per image (OpenSfM's npz / pickle formats, empty)."""
    for entry in entries:
        name = entry["filename"]
        exif = run.path("opensfm", "exif", f"{name}.exif")
        if not exif.exists():
            exif.write_text(
                json.dumps(
                    {
                        "make": entry.get("camera_make", "DJI"),
                        "model": entry.get("camera_model", "FC6310"),
                        "width": entry.get("width", 4000),
                        "height": entry.get("height", 3000),
                        "projection_type": "brown",
                        "focal_ratio": 0.8333,
                        "orientation": 1,
                        "capture_time": entry.get("utc_time", 0.0) / 1000.0,
                        "gps": {
                            "latitude": entry.get("latitude", LAT0),
                            "longitude": entry.get("longitude", LON0),
                            "altitude": entry.get("altitude", 320.0),
                            "dop": 10.0,
                        },
                        "camera": next(iter(cameras)),
                    },
                    indent=4,
                ),
                encoding="utf-8",
            )
        run.path("opensfm", "features", f"{name}.features.npz").write_bytes(npz_bytes())
        run.path("opensfm", "matches", f"{name}_matches.pkl.gz").write_bytes(gzip.compress(pickle.dumps({})))
    models = run.path("opensfm", "camera_models.json")
    if not models.exists():
        models.write_text(json.dumps(cameras, indent=4), encoding="utf-8")
    reference = run.path("opensfm", "reference_lla.json")
    if not reference.exists():
        reference.write_text(
            json.dumps({"latitude": LAT0, "longitude": LON0, "altitude": 200.0}, indent=4), encoding="utf-8"
        )


def npz_bytes() -> bytes:
    """A NumPy .npz holding an empty float32 (0, 4) `points` array, as OpenSfM's feature files do."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }"
    header = header.ljust(64 - 10 - 1) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("points.npy", npy)
    return buffer.getvalue()


def write_openmvs(run: Run) -> None:
    run.path(*OPENMVS_MODEL).write_text(ply_text(run.points), encoding="utf-8")
    log("INFO", f"Densified point cloud: {len(run.points)} points (pc-quality {run.args.pc_quality})")


def write_filterpoints(run: Run) -> None:
    run.path("odm_filterpoints", "point_cloud.ply").write_text(ply_text(run.points), encoding="utf-8")
    log("INFO", f"Filtered point cloud with std ratio {run.args.pc_filter}")


def write_meshing(run: Run) -> None:
    names = ["odm_25dmesh.ply"] + ([] if run.args.skip_3dmodel else ["odm_mesh.ply"])
    for name in names:
        run.path("odm_meshing", name).write_text(ply_text(run.points[::4]), encoding="utf-8")
        log("INFO", f"Wrote mesh {name} (octree depth {run.args.mesh_octree_depth})")


def write_texturing(run: Run) -> None:
    folders = ([] if run.args.skip_3dmodel else ["odm_texturing"]) + (
        [] if run.args.use_3dmesh else ["odm_texturing_25d"]
    )
    rows = [bytes(v for x in range(16) for v in (x * 16, y * 16, 128)) for y in range(16)]
    texture = "odm_textured_model_geo_material0000_map_Kd.png"
    grid = 5
    vertices = "".join(
        f"v {x * 10.0:.3f} {y * 10.0:.3f} {200.0 + (x * y) % 3:.3f}\n"
        for y in range(grid)
        for x in range(grid)
    )
    uvs = "".join(f"vt {x / (grid - 1):.4f} {y / (grid - 1):.4f}\n" for y in range(grid) for x in range(grid))
    faces = ""
    for y in range(grid - 1):
        for x in range(grid - 1):
            a, b, c, d = (y * grid + x + 1, y * grid + x + 2, (y + 1) * grid + x + 2, (y + 1) * grid + x + 1)
            faces += f"f {a}/{a} {b}/{b} {c}/{c}\nf {a}/{a} {c}/{c} {d}/{d}\n"
    for folder in folders:
        run.path(folder, texture).write_bytes(png_bytes(16, 16, rows, 3))
        run.path(folder, "odm_textured_model_geo.mtl").write_text(
            f"newmtl material0000\nKa 1.0 1.0 1.0\nKd 1.0 1.0 1.0\nKs 0.0 0.0 0.0\nd 1.0\nillum 2\nmap_Kd {texture}\n",
            encoding="utf-8",
        )
        run.path(folder, "odm_textured_model_geo.obj").write_text(
            f"mtllib odm_textured_model_geo.mtl\n{vertices}{uvs}usemtl material0000\n{faces}",
            encoding="utf-8",
        )
        log("INFO", f"Textured model written to {run.project / folder}")
    if run.args.gltf and folders:
        glb = run.path(folders[0], "odm_textured_model_geo.glb")
        glb.write_bytes(glb_bytes(grid))
        log("INFO", f"Generated glTF Binary: {glb}")


def glb_bytes(grid: int) -> bytes:
    """A binary glTF 2.0 of the textured grid's geometry: positions and triangle indices."""
    positions = [(x * 10.0, (x * y) % 3 * 1.0, -y * 10.0) for y in range(grid) for x in range(grid)]
    indices = []
    for y in range(grid - 1):
        for x in range(grid - 1):
            a, b, c, d = y * grid + x, y * grid + x + 1, (y + 1) * grid + x + 1, (y + 1) * grid + x
            indices += [a, b, c, a, c, d]
    index_data = struct.pack(f"<{len(indices)}H", *indices).ljust((len(indices) * 2 + 3) // 4 * 4, b"\x00")
    position_data = b"".join(struct.pack("<3f", *p) for p in positions)
    binary = index_data + position_data
    document = {
        "asset": {"version": "2.0", "generator": f"ODM {VERSION} (simulate engine)"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 1}, "indices": 0}]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(indices) * 2, "target": 34963},
            {"buffer": 0, "byteOffset": len(index_data), "byteLength": len(position_data), "target": 34962},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5123, "count": len(indices), "type": "SCALAR"},
            {
                "bufferView": 1,
                "componentType": 5126,
                "count": len(positions),
                "type": "VEC3",
                "min": [min(p[k] for p in positions) for k in range(3)],
                "max": [max(p[k] for p in positions) for k in range(3)],
            },
        ],
    }
    text = json.dumps(document, separators=(",", ":")).encode()
    text = text.ljust((len(text) + 3) // 4 * 4, b" ")
    chunks = (
        struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\x00") + binary
    )
    return b"glTF" + struct.pack("<II", 2, 12 + len(chunks)) + chunks


def write_georeferencing(run: Run) -> None:
    laz = run.path("odm_georeferencing", "odm_georeferenced_model.laz")
    if write_laz(laz, run.points):
        log("INFO", f"Georeferenced point cloud: {laz}")
    else:
        las = laz.with_suffix(".las")
        las.write_bytes(las_bytes(run.points))
        log(
            "WARNING",
            f"laspy/lazrs are not installed: wrote an uncompressed {las.name} instead of {laz.name}",
        )
    if run.args.pc_las:
        run.path("odm_georeferencing", "odm_georeferenced_model.las").write_bytes(las_bytes(run.points))
    if run.args.pc_csv:
        run.path("odm_georeferencing", "odm_georeferenced_model.csv").write_text(
            "X,Y,Z,Red,Green,Blue\n"
            + "".join(
                f"{x:.3f},{y:.3f},{z:.3f},{r >> 8},{g >> 8},{b >> 8}\n" for x, y, z, r, g, b in run.points
            ),
            encoding="utf-8",
        )
    run.path("odm_georeferencing", "coords.txt").write_text(
        f"WGS84 UTM 15N\n{ORIGIN[0]:.0f} {ORIGIN[1]:.0f}\n", encoding="utf-8"
    )
    if run.args.pc_ept:
        write_ept(run, laz)


def write_ept(run: Run, laz: Path) -> None:
    xs, ys, zs = ([p[k] for p in run.points] for k in range(3))
    bounds = [min(xs), min(ys), min(zs), max(xs), max(ys), max(zs)]
    side = max(bounds[3] - bounds[0], bounds[4] - bounds[1], bounds[5] - bounds[2]) / 2
    centre = [(bounds[k] + bounds[k + 3]) / 2 for k in range(3)]
    cube = [c - side for c in centre] + [c + side for c in centre]
    schema = [
        {"name": n, "type": "signed", "size": 4, "scale": 0.001, "offset": o}
        for n, o in (("X", ORIGIN[0]), ("Y", ORIGIN[1]), ("Z", 0.0))
    ]
    schema += [{"name": n, "type": "unsigned", "size": 2} for n in ("Red", "Green", "Blue")]
    ept = {
        "bounds": cube,
        "boundsConformed": bounds,
        "dataType": "laszip",
        "hierarchyType": "json",
        "points": len(run.points),
        "schema": schema,
        "span": 128,
        "srs": {"authority": "EPSG", "horizontal": str(EPSG)},
        "version": "1.0.0",
    }
    run.path("entwine_pointcloud", "ept.json").write_text(json.dumps(ept, indent=2), encoding="utf-8")
    run.path("entwine_pointcloud", "ept-hierarchy", "0-0-0-0.json").write_text(
        json.dumps({"0-0-0-0": len(run.points)}), encoding="utf-8"
    )
    if laz.exists():
        run.path("entwine_pointcloud", "ept-data", "0-0-0-0.laz").write_bytes(laz.read_bytes())
    log("INFO", "Built Entwine Point Tile index in entwine_pointcloud/")


def dem_pixels(size: int, with_objects: bool) -> bytes:
    values = []
    step = EXTENT / size
    for row in range(size):
        for col in range(size):
            x, y = (col + 0.5) * step, EXTENT - (row + 0.5) * step
            z = 200.0 + 3.0 * math.sin(x / 9.0) * math.cos(y / 11.0)
            if with_objects and 14 <= x <= 22 and 16 <= y <= 26:
                z += 6.0
            values.append(-9999.0 if row == 0 and col == 0 else z)
    return struct.pack(f"<{len(values)}f", *values)


def write_dem(run: Run) -> None:
    if not (run.args.dsm or run.args.dtm):
        log("INFO", "DEM will not be generated")
        return
    size = 32
    for kind, wanted in (("dsm", run.args.dsm), ("dtm", run.args.dtm)):
        if wanted:
            target = run.path("odm_dem", f"{kind}.tif")
            target.write_bytes(
                tiff_bytes(
                    size, size, 1, True, dem_pixels(size, kind == "dsm"), EXTENT / size, nodata="-9999"
                )
            )
            log("INFO", f"Generated {kind.upper()} at {run.args.dem_resolution} cm/px: {target}")


def write_orthophoto(run: Run) -> None:
    if run.args.skip_orthophoto:
        log("WARNING", "--skip-orthophoto is set, no orthophoto will be generated")
        return
    size = 64
    rows = []
    for y in range(size):
        row = bytearray()
        for x in range(size):
            inside = (x - 31.5) ** 2 + (y - 31.5) ** 2 <= 31.5**2  # a round survey, nodata outside
            row += bytes((x * 4, y * 4, 96, 255)) if inside else bytes(4)
        rows.append(bytes(row))
    pixel = EXTENT / size
    run.path("odm_orthophoto", "odm_orthophoto.tif").write_bytes(
        tiff_bytes(size, size, 4, False, b"".join(rows), pixel)
    )
    # world file: pixel size, rotations, negative row size, centre of the upper-left pixel
    run.path("odm_orthophoto", "odm_orthophoto.tfw").write_text(
        f"{pixel:.10f}\n0.0000000000\n0.0000000000\n{-pixel:.10f}\n"
        f"{ORIGIN[0] + pixel / 2:.10f}\n{ORIGIN[1] + EXTENT - pixel / 2:.10f}\n",
        encoding="utf-8",
    )
    if run.args.orthophoto_png:
        run.path("odm_orthophoto", "odm_orthophoto.png").write_bytes(png_bytes(size, size, rows, 4))
    if run.args.orthophoto_cutline:
        # what split-merge blends submodel orthophotos with (ODM's orthophoto.compute_cutline / feather_raster)
        write_cutline(run.path("odm_orthophoto", "cutline.gpkg"))
        cut: list[bytes] = []
        feathered: list[bytes] = []
        for y, line in enumerate(rows):
            cut_row, feather_row = bytearray(line), bytearray(line)
            for x in range(size):
                distance = 31.5 - math.hypot(x - 31.5, y - 31.5)  # pixels inside the survey's edge
                if distance < 4:  # the cutline runs 4 pixels inside the edge
                    cut_row[x * 4 + 3] = 0
                feather_row[x * 4 + 3] = int(line[x * 4 + 3] * min(1.0, max(0.0, distance / 8)))
            cut.append(bytes(cut_row))
            feathered.append(bytes(feather_row))
        for name, data in (("odm_orthophoto_cut.tif", cut), ("odm_orthophoto_feathered.tif", feathered)):
            run.path("odm_orthophoto", name).write_bytes(
                tiff_bytes(size, size, 4, False, b"".join(data), pixel)
            )
        log("INFO", "Computed cutline, cut and feathered orthophotos")
    log("INFO", f"Orthophoto written ({size}x{size}, compression {run.args.orthophoto_compression})")


def write_cutline(path: Path) -> None:
    """A GeoPackage with one polygon layer `cutline` (EPSG:32615): the survey's edge, 4 pixels inside."""
    path.unlink(missing_ok=True)
    centre = (ORIGIN[0] + EXTENT / 2, ORIGIN[1] + EXTENT / 2)
    radius = EXTENT / 2 - 4 * EXTENT / 64
    ring = [
        (
            centre[0] + radius * math.cos(2 * math.pi * k / 32),
            centre[1] + radius * math.sin(2 * math.pi * k / 32),
        )
        for k in range(32)
    ]
    ring.append(ring[0])
    wkb = (
        struct.pack("<BII", 1, 3, 1)
        + struct.pack("<I", len(ring))
        + b"".join(struct.pack("<2d", *p) for p in ring)
    )
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    envelope = (min(xs), max(xs), min(ys), max(ys))
    blob = (
        b"GP" + bytes([0, 0b00000011]) + struct.pack("<i4d", EPSG, *envelope) + wkb
    )  # LE header, xy envelope
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            PRAGMA application_id = 1196444487; PRAGMA user_version = 10200;
            CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY,
              organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL,
              description TEXT);
            CREATE TABLE gpkg_contents (table_name TEXT PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT,
              description TEXT DEFAULT '', last_change DATETIME, min_x DOUBLE, min_y DOUBLE, max_x DOUBLE,
              max_y DOUBLE, srs_id INTEGER);
            CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
              geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
              PRIMARY KEY (table_name, column_name));
            CREATE TABLE cutline (fid INTEGER PRIMARY KEY AUTOINCREMENT, geom POLYGON);
            """
        )
        db.executemany(
            "INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", ""),
                ("Undefined geographic SRS", 0, "NONE", 0, "undefined", ""),
                ("WGS 84 / UTM zone 15N", EPSG, "EPSG", EPSG, "EPSG:32615", ""),
            ],
        )
        db.execute(
            "INSERT INTO gpkg_contents VALUES ('cutline', 'features', 'cutline', '', ?, ?, ?, ?, ?, ?)",
            (
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                envelope[0],
                envelope[2],
                envelope[1],
                envelope[3],
                EPSG,
            ),
        )
        db.execute(
            "INSERT INTO gpkg_geometry_columns VALUES ('cutline', 'geom', 'POLYGON', ?, 0, 0)", (EPSG,)
        )
        db.execute("INSERT INTO cutline (geom) VALUES (?)", (blob,))
        db.commit()


def write_shots(run: Run) -> None:
    """odm_report/shots.geojson: one point per reconstructed camera, as ODM exports it for the report and merge."""
    try:
        reconstructions = json.loads(
            (run.project / "opensfm" / "reconstruction.json").read_text(encoding="utf-8")
        )
        images = json.loads((run.project / "images.json").read_text(encoding="utf-8"))
        entries = {e["filename"]: e for e in images}
        shots = [
            (name, shot, r.get("cameras", {})) for r in reconstructions for name, shot in r["shots"].items()
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log("WARNING", f"Cannot extract shots ({exc})")
        return
    features = []
    for name, shot, cameras in sorted(shots, key=lambda item: item[0]):
        entry = entries.get(name, {})
        camera = cameras.get(shot["camera"], {})
        features.append(
            {
                "type": "Feature",
                "properties": {
                    "filename": name,
                    "camera": shot["camera"],
                    "focal": camera.get("focal_x", 0.8333),
                    "width": camera.get("width", entry.get("width", 4000)),
                    "height": camera.get("height", entry.get("height", 3000)),
                    "capture_time": entry.get("utc_time", 0.0) / 1000.0,
                    "translation": shot["translation"],
                    "rotation": shot["rotation"],
                },
                "geometry": {
                    "type": "Point",
                    "coordinates": [entry.get("longitude", LON0), entry.get("latitude", LAT0), 120.0],
                },
            }
        )
    target = run.path("odm_report", "shots.geojson")
    target.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")
    log("INFO", f"Wrote {target}")


def write_report(run: Run) -> None:
    write_shots(run)  # ODM writes it before looking at --skip-report
    if run.args.skip_report:
        log("WARNING", "--skip-report is set, the report will not be generated")
        return
    lines = [
        "ODM Farm simulated processing report",
        f"ODM {VERSION} (simulate engine)",
        f"Dataset: {run.args.name}",
        f"Images: {len(run.images)}",
        f"Processed: {time.strftime('%Y-%m-%d %H:%M:%S')}",
    ]
    run.path("odm_report", "report.pdf").write_bytes(pdf_bytes(lines))
    run.path("odm_report", "stats.json").write_text(
        json.dumps({"images": len(run.images), "points": len(run.points)}), encoding="utf-8"
    )
    log("INFO", f"Wrote report to {run.project / 'odm_report' / 'report.pdf'}")


def write_postprocess(run: Run) -> None:
    log("INFO", "Post-processing finished")


def georeferenced_outputs(run: Run) -> list[Path]:
    """The point cloud as written: LAZ, or the LAS written instead when laspy is missing."""
    folder = run.project / "odm_georeferencing"
    found = [
        p
        for p in (folder / "odm_georeferenced_model.laz", folder / "odm_georeferenced_model.las")
        if p.exists()
    ]
    return found[:1] or [folder / "odm_georeferenced_model.laz"]


OPENMVS_MODEL = ("opensfm", "undistorted", "openmvs", "scene_dense_dense_filtered.ply")
STAGE_WRITERS: dict[str, Callable[[Run], None]] = {
    "dataset": write_dataset,
    "split": write_split,
    "merge": write_merge,
    "opensfm": write_opensfm,
    "openmvs": write_openmvs,
    "odm_filterpoints": write_filterpoints,
    "odm_meshing": write_meshing,
    "mvs_texturing": write_texturing,
    "odm_georeferencing": write_georeferencing,
    "odm_dem": write_dem,
    "odm_orthophoto": write_orthophoto,
    "odm_report": write_report,
    "odm_postprocess": write_postprocess,
}
# What must exist for a stage to count as done (ODM skips such stages unless told to rerun them).
STAGE_OUTPUTS: dict[str, Callable[[Run], list[Path]]] = {
    "dataset": lambda r: [r.project / "images.json"],
    "split": lambda r: [],
    "merge": lambda r: [],
    "opensfm": lambda r: [r.project / "opensfm" / "reconstruction.json"],
    "openmvs": lambda r: [r.project.joinpath(*OPENMVS_MODEL)],
    "odm_filterpoints": lambda r: [r.project / "odm_filterpoints" / "point_cloud.ply"],
    "odm_meshing": lambda r: [r.project / "odm_meshing" / "odm_25dmesh.ply"],
    "mvs_texturing": lambda r: [
        r.project
        / ("odm_texturing_25d" if r.args.skip_3dmodel else "odm_texturing")
        / "odm_textured_model_geo.obj"
    ],
    "odm_georeferencing": lambda r: georeferenced_outputs(r),
    "odm_dem": lambda r: [r.project / "odm_dem" / f"{k}.tif" for k in ("dsm", "dtm") if getattr(r.args, k)],
    "odm_orthophoto": lambda r: (
        [] if r.args.skip_orthophoto else [r.project / "odm_orthophoto" / "odm_orthophoto.tif"]
    ),
    "odm_report": lambda r: [] if r.args.skip_report else [r.project / "odm_report" / "report.pdf"],
    "odm_postprocess": lambda r: [],
}


# ---------------------------------------------------------------- entry point


def fill_disk(run: Run) -> None:
    """Write the dense cloud until the disk is full; the full disk is injected after 1 MB."""
    target = run.path("opensfm", "undistorted", "openmvs", "scene_dense.mvs")
    with target.open("wb") as f:
        for _ in range(16):
            f.write(os.urandom(64 * 1024))
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))


def controls(images_dir: Path, env: dict[str, str]) -> tuple[float, int | None]:
    """Duration and forced exit code: image names win over the environment."""
    seconds, exit_code = 5.0, None
    try:
        seconds = max(0.0, float(env.get("ODM_FARM_SIMULATE_SECONDS", "5")))
    except ValueError:
        log("WARNING", "ODM_FARM_SIMULATE_SECONDS is not a number, using 5 seconds")
    if re.fullmatch(r"-?\d+", env.get("ODM_FARM_SIMULATE_EXIT", "").strip()):
        exit_code = int(env["ODM_FARM_SIMULATE_EXIT"])
    for entry in sorted(images_dir.iterdir()):
        if match := re.fullmatch(r"simulate-seconds-(\d+(?:\.\d+)?)\.[^.]+", entry.name):
            seconds = float(match.group(1))
        if match := re.fullmatch(r"simulate-exit-(\d+)\.[^.]+", entry.name):
            exit_code = int(match.group(1))
    return seconds, exit_code


class MissingImage(Exception):
    """An image a finished stage listed is not where it was."""


def main(argv: list[str] | None = None) -> int:
    # a parent that ignores SIGTERM passes that on through exec; a cancel must still stop us
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    args = build_parser(load_catalog()).parse_args(argv)
    log("INFO", f"Initializing ODM {VERSION} - {time.strftime('%a %b %d %H:%M:%S %Y')}")
    log("INFO", "==============")
    for key, value in sorted(vars(args).items()):
        log("INFO", f"{key}: {value}")
    log("INFO", "==============")
    project = Path(args.project_path) / args.name
    images_dir = project / "images"
    if not images_dir.is_dir() or not any(
        p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in images_dir.iterdir()
    ):
        log("INFO", "Running dataset stage")
        log("ERROR", f"Not enough supported images in {images_dir}")
        return 1
    seconds, exit_code = controls(images_dir, dict(os.environ))
    try:
        port = int(os.environ.get("ODM_FARM_PROGRESS_PORT", "6367"))
    except ValueError:
        port = 6367
    run = Run(args, seconds, exit_code, port)
    try:
        return run.execute()
    except MissingImage as exc:
        log("ERROR", str(exc))
        return 1
    finally:
        run.kill_children()
        run.sock.close()


if __name__ == "__main__":
    sys.exit(main())
