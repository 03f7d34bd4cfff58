"""Hostile file names, URLs and output lists are refused with clear messages; good ones pass unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared import safety
from shared.safety import (
    InvalidFileName,
    UnsafeInput,
    UnsafeUrl,
    address_blocked,
    check_url,
    normalize_outputs,
    parse_networks,
    redact_url,
    safe_filename,
    walk_inside,
)
from shared.settings import Settings

DEFAULT_BLOCKED = Settings().blocked_networks

# --- file names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("IMG_0001.JPG", "IMG_0001.JPG"),
        ("seed.zip", "seed.zip"),
        ("../../etc/passwd", "passwd"),
        ("C:\\photos\\flight 1\\a.jpg", "a.jpg"),
        ("/abs/path/b.tif", "b.tif"),
        ("a\x00b.jpg", "ab.jpg"),
        ("line\nbreak.jpg", "linebreak.jpg"),
        ("vue aérienne 航拍.jpg", "vue aérienne 航拍.jpg"),
        ("  padded.jpg  ", "padded.jpg"),
        ("a..b.jpg", "a..b.jpg"),
    ],
)
def test_safe_filename_keeps_only_a_plain_name(raw: str, expected: str) -> None:
    assert safe_filename(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", ".", "..", "dir/", "photos\\..", "\x00", "   ", ".hidden", "._IMG_1.JPG", "x/.DS_Store"]
)
def test_safe_filename_refuses_names_without_a_usable_part(raw: str) -> None:
    with pytest.raises(InvalidFileName) as info:
        safe_filename(raw)
    assert "file name" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_safe_filename_refuses_too_long_names_in_bytes() -> None:
    assert safe_filename("a" * 251 + ".jpg") == "a" * 251 + ".jpg"  # 255 bytes is fine
    with pytest.raises(InvalidFileName, match="255 bytes"):
        safe_filename("a" * 252 + ".jpg")
    with pytest.raises(InvalidFileName):
        safe_filename("航" * 86)  # 258 bytes in UTF-8, 86 characters


def test_safe_filename_refuses_non_strings() -> None:
    with pytest.raises(InvalidFileName):
        safe_filename(None)  # type: ignore[arg-type]


# --- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/a.zip", "only http and https"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "only http and https"),
        ("http:///no-host", "no host"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.0.0/16"),
        ("http://[::ffff:169.254.169.254]/", "169.254.0.0/16"),
        ("http://[::ffff:a9fe:a9fe]/", "169.254.0.0/16"),
        ("http://[64:ff9b::a9fe:a9fe]/", "169.254.0.0/16"),  # NAT64
        ("http://[2002:a9fe:a9fe::1]/", "169.254.0.0/16"),  # 6to4
        ("http://2852039166/", "169.254.0.0/16"),  # decimal form of 169.254.169.254
        ("http://0251.0376.0251.0376/", "169.254.0.0/16"),  # octal form
        ("http://[fe80::1]/", "fe80::/10"),
        ("http://100.100.100.200/", "100.100.100.200/32"),
        ("http://0.0.0.0:8080/", "0.0.0.0/32"),
        ("http://host:99999/", "not allowed"),
    ],
)
def test_check_url_refuses_hostile_urls_with_the_default_block_list(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl) as info:
        check_url(url, DEFAULT_BLOCKED)
    message = str(info.value)
    assert "not allowed" in message
    assert reason in message


def test_check_url_allows_loopback_and_public_addresses_by_default() -> None:
    check_url("http://127.0.0.1:3000/task/new", DEFAULT_BLOCKED)
    check_url("https://[::1]/x", DEFAULT_BLOCKED)
    check_url("http://93.184.216.34/images.zip?sig=abc", DEFAULT_BLOCKED)
    check_url("HTTP://127.0.0.1/upper-case-scheme", DEFAULT_BLOCKED)


def test_check_url_refuses_a_name_that_resolves_into_a_blocked_network() -> None:
    with pytest.raises(UnsafeUrl, match="localhost.*not allowed|not allowed.*blocked network"):
        check_url("http://localhost:8000/hook", ["127.0.0.0/8", "::1/128"])


def test_check_url_checks_every_resolved_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(safety, "_resolve", lambda host, port: ["93.184.216.34", "169.254.169.254"])
    with pytest.raises(UnsafeUrl, match="169.254.169.254"):
        check_url("https://two-faced.example/", DEFAULT_BLOCKED)


def test_check_url_refuses_unresolvable_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(safety, "_resolve", fail)
    with pytest.raises(UnsafeUrl, match="cannot be resolved"):
        check_url("https://nowhere.invalid/", DEFAULT_BLOCKED)


def test_blocked_networks_may_be_written_in_ipv6_mapped_form() -> None:
    networks = parse_networks(["::ffff:10.0.0.0/104"])
    assert address_blocked("10.1.2.3", networks)
    assert address_blocked("192.168.1.1", networks) is None


def test_a_malformed_block_list_entry_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(ValueError, match="not-a-network"):
        parse_networks(["10.0.0.0/8", "not-a-network"])


def test_messages_do_not_leak_credentials_or_signatures() -> None:
    with pytest.raises(UnsafeUrl) as info:
        check_url("http://user:secret@169.254.169.254/x?X-Amz-Signature=abc", DEFAULT_BLOCKED)
    assert "secret" not in str(info.value)
    assert "abc" not in str(info.value)
    assert redact_url("https://u:p@h.example:8443/a/b.zip?sig=1") == "https://h.example:8443/a/b.zip?..."


# --- outputs ------------------------------------------------------------------------------------


def test_normalize_outputs_accepts_project_relative_paths() -> None:
    raw = json.dumps(
        ["odm_dem/dsm.tif", "./odm_report/", "odm_texturing/../odm_georeferencing", "odm_dem/dsm.tif"]
    )
    assert normalize_outputs(raw) == ["odm_dem/dsm.tif", "odm_report", "odm_georeferencing"]
    assert normalize_outputs(["odm_report\\report.pdf"]) == ["odm_report/report.pdf"]


@pytest.mark.parametrize("raw", [None, "", "  ", "null", "[]", []])
def test_normalize_outputs_empty_means_the_default_list(raw: object) -> None:
    assert normalize_outputs(raw) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('["../x"]', "leaves the project"),
        ('["odm_dem/../../x"]', "leaves the project"),
        ('["/etc"]', "relative to the project"),
        ('["\\\\etc\\\\passwd"]', "relative to the project"),
        ('["."]', "inside the project"),
        ('[""]', "empty"),
        ('["a\\u0000b"]', "Invalid output path"),
        ('{"a": 1}', "JSON list"),
        ('"odm_dem"', "JSON list"),
        ("[1, 2]", "not a string"),
        ('[["nested"]]', "not a string"),
        ("[not json", "not valid JSON"),
    ],
)
def test_normalize_outputs_refuses_bad_lists(raw: str, message: str) -> None:
    with pytest.raises(UnsafeInput, match=message):
        normalize_outputs(raw)


def test_normalize_outputs_limits_the_number_of_paths() -> None:
    with pytest.raises(UnsafeInput, match="at most"):
        normalize_outputs(json.dumps([f"f{i}" for i in range(safety.MAX_OUTPUTS + 1)]))


# --- walking a project --------------------------------------------------------------------------


def test_walk_inside_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "project"
    outside = tmp_path / "outside"
    (root / "report" / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "report" / "a.txt").write_text("a")
    (root / "report" / "sub" / "b.txt").write_text("b")
    (root / "other.txt").write_text("o")
    os.symlink(outside / "secret.txt", root / "report" / "leak.txt")
    os.symlink(outside, root / "report" / "leakdir")
    os.symlink(root / "other.txt", root / "report" / "alias.txt")
    os.symlink(root / "report", root / "report" / "loop")
    os.symlink(outside, root / "escape")

    found = [p.relative_to(root).as_posix() for p in walk_inside(root, root / "report")]
    assert found == ["report/a.txt", "report/alias.txt", "report/sub/b.txt"]
    assert list(walk_inside(root, root / "escape")) == []
    assert list(walk_inside(root, root / "missing")) == []
    assert list(walk_inside(root, root / "other.txt")) == [root / "other.txt"]


# Invisible and direction-changing characters: a name must read as what it is ("evil\u202egpj.exe" shows as
# "evilexe.jpg" in a browser or a terminal).
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("evil\u202egpj.exe", "evilgpj.exe"),  # right-to-left override
        ("a\u202db\u202c.jpg", "ab.jpg"),  # left-to-right override and pop
        ("\u2066img\u2069\u2067.jpg", "img.jpg"),  # isolates
        ("im\u200bg\u200c1\u200d.jpg", "img1.jpg"),  # zero-width space, non-joiner, joiner
        ("\ufeffbom.jpg", "bom.jpg"),
        ("\u200e\u200fmarks.jpg", "marks.jpg"),
        ("soft\u00adhyphen.jpg", "softhyphen.jpg"),
        ("tab\there\x7f\x1b[31m.jpg", "tabhere[31m.jpg"),  # C0, DEL and an ANSI escape
        ("c1\x85\x9b.jpg", "c1.jpg"),  # C1 controls
        ("line\u2028para\u2029.jpg", "linepara.jpg"),
        ("nb\u00a0space.jpg", "nb space.jpg"),  # other spaces become a plain space
        ("e\u0301t\u00e9.jpg", "\u00e9t\u00e9.jpg"),  # one spelling (NFC) for one name
        ("\u202e.jpg", "_.jpg"),  # a name of invisible characters keeps its extension
        ("\u200b\u200b.JPG", "_.JPG"),
    ],
)
def test_safe_filename_drops_control_bidi_and_invisible_characters(raw: str, expected: str) -> None:
    assert safe_filename(raw) == expected
    assert safe_filename(expected) == expected  # the stored form is stable: a retry maps to the same name


@pytest.mark.parametrize("raw", ["\u202e", "\u200b\u200c", "\x1b", "\u2066\u2069"])
def test_safe_filename_refuses_names_of_only_invisible_characters(raw: str) -> None:
    with pytest.raises(InvalidFileName, match="file name"):
        safe_filename(raw)


def test_safe_filename_leaves_no_format_or_control_character() -> None:
    import unicodedata

    every = "".join(chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp"))
    name = safe_filename("x" + every[:200] + "y.jpg")
    assert name == "xy.jpg"
    for start in range(0, len(every), 100):
        chunk = every[start : start + 100]
        assert safe_filename("p" + chunk + ".jpg") == "p.jpg"
