"""Hostile-input checks shared by the API and workers: file names, outbound URLs, output paths, project walks.

Errors::

    UnsafeInput (ValueError)   input refused; the message is meant for the client
    ├── InvalidFileName        an uploaded file name that cannot be used
    └── UnsafeUrl              a URL the node must not fetch or call

Network lists (``blocked_networks``) are strings such as ``"169.254.0.0/16"``; a malformed entry is a
configuration error and raises a plain ValueError naming it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import posixpath
import re
import socket
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_NAME_BYTES = 255  # what ext4, XFS and most filesystems allow for one name
MAX_OUTPUTS = 1000
MAX_OUTPUT_CHARS = 4096

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


class UnsafeInput(ValueError):
    """Input the node refuses; str(exc) is a message fit for the client."""


class InvalidFileName(UnsafeInput):
    """An uploaded file name that cannot be used."""


class UnsafeUrl(UnsafeInput):
    """A URL the node must not fetch (zipurl) or call (webhook)."""


# --- file names ---------------------------------------------------------------------------------


# Characters dropped from file names: controls (C0, DEL, C1), format characters (bidirectional overrides
# and isolates, zero-width characters, BOM, soft hyphen), surrogates, private use, unassigned code points,
# and line/paragraph separators. They make a name read as something else ("evil\u202egpj.exe" shows as
# "evilexe.jpg"), or break terminals, logs and zip listings.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _visible(text: str) -> str:
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if category in _DROPPED_CATEGORIES:
            continue
        kept.append(" " if category == "Zs" else ch)  # no-break and other spaces read as a space
    return "".join(kept)


def safe_filename(name: str) -> str:
    """The plain file name to store `name` under: last path component, only visible characters, NFC.

    Clients send paths ("C:\\photos\\a.jpg", "dir/a.jpg"); only the last component is kept. Control,
    format (bidi override, zero-width) and other invisible characters are dropped, and the name is put in
    one Unicode spelling (NFC), so the stored name is what anyone reading it sees; the original is not kept
    anywhere. A name whose part before the extension was only invisible characters becomes "_<ext>".
    Two names with the same safe form are one file: the later replaces the earlier, as a retried file does.
    The result is stable: safe_filename(safe_filename(x)) == safe_filename(x).

    Names starting with "." are refused: they are never images, and hidden files (".DS_Store", "._a.jpg"
    AppleDouble junk) would be fed to the engine as if they were.
    """
    if not isinstance(name, str):
        raise InvalidFileName("A file name is required.")
    raw = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFC", _visible(raw)).strip()
    raw_stripped = raw.strip()
    if base.startswith(".") and not raw_stripped.startswith(".") and base not in (".", ".."):
        base = "_" + base  # the name was invisible characters and an extension
    if base in ("", ".", ".."):
        raise InvalidFileName(f"Invalid file name {name!r}: it has no usable name part.")
    if base.startswith("."):
        raise InvalidFileName(f"Invalid file name {base!r}: names starting with '.' are not accepted.")
    if len(base.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidFileName(f"Invalid file name {base[:40]!r}...: longer than {MAX_NAME_BYTES} bytes.")
    return base


# --- URLs ---------------------------------------------------------------------------------------


def parse_networks(blocked_networks: Iterable[str | IPNetwork]) -> list[IPNetwork]:
    """The block list as network objects; a malformed entry raises ValueError naming it."""
    networks: list[IPNetwork] = []
    for entry in blocked_networks:
        if isinstance(entry, ipaddress.IPv4Network | ipaddress.IPv6Network):
            networks.append(entry)
            continue
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"invalid blocked network {entry!r}: {exc}") from None
    return networks


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address reaches in disguise (mapped, compatible, 6to4, NAT64, Teredo)."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # skip :: and ::1
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.append(address.teredo[1])
    return found


def address_blocked(address: str | IPAddress, networks: Iterable[IPNetwork]) -> str | None:
    """Why `address` is blocked (a short reason), or None when it may be reached."""
    if isinstance(address, str):
        # a scope id ("fe80::1%eth0") does not change which network the address is in
        address = ipaddress.ip_address(address.split("%", 1)[0])
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        candidates += _embedded_ipv4(address)
    else:
        candidates.append(ipaddress.IPv6Address(f"::ffff:{address}"))
    networks = list(networks)
    for candidate in candidates:
        for network in networks:
            if candidate.version == network.version and candidate in network:
                shown = address if candidate == address else f"{address} ({candidate})"
                return f"address {shown} is in blocked network {network}"
    return None


def _resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to; separate so tests can stand in for DNS."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def redact_url(url: str) -> str:
    """`url` without credentials or query string, for messages and logs (presigned URLs carry secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        query = "?..." if parts.query else ""
        return SplitResult(parts.scheme, netloc, parts.path, "", "").geturl() + query
    except ValueError:
        return "<unparsable URL>"


# --- secrets in text ----------------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@")
_SECRET_QUERY = re.compile(
    r"(?P<head>[?&;](?:token|access_token|password|secret|signature|x-amz-signature|x-amz-credential"
    r"|x-amz-security-token)=)[^&\s\"'#]+",
    re.IGNORECASE,
)
MASK = "***"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL passwords, secret query values (`token=`...) and every known secret masked.

    Defence in depth for console lines and log records: whatever a program prints, a secret the node knows
    (its token, S3 keys, the Redis password) is not stored or shown.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


class RedactingFormatter(logging.Formatter):
    """Wraps a log formatter so that no formatted line (message, request line, traceback) shows a secret."""

    def __init__(self, inner: logging.Formatter | None, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.secrets = list(secrets)

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(self.inner.format(record), self.secrets)


def redact_handlers(logger: logging.Logger, secrets: Iterable[str] = ()) -> None:
    """Make every handler of `logger` mask secrets (idempotent)."""
    secrets = list(secrets)
    for handler in logger.handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter, secrets))


def check_url(url: str, blocked_networks: Iterable[str | IPNetwork]) -> None:
    """Refuse (UnsafeUrl) a URL that is not http(s), has no host, or resolves into a blocked network.

    Every resolved address is checked, not just the first, since the HTTP client may pick any of them.
    This does not stop a DNS answer that changes between this check and the connection; the workers'
    outbound sessions therefore check the connected peer address again.
    """
    networks = parse_networks(blocked_networks)
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    if not isinstance(url, str) or not url.strip():
        raise UnsafeUrl("A URL is required.")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"URL {shown} is not allowed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl(f"URL {shown} is not allowed: only http and https URLs are accepted.")
    host = parts.hostname
    if not host:
        raise UnsafeUrl(f"URL {shown} is not allowed: it has no host.")
    try:
        addresses = _resolve(host, port or (443 if scheme == "https" else 80))
    except (OSError, UnicodeError, ValueError) as exc:
        raise UnsafeUrl(f"URL {shown} is not allowed: host {host!r} cannot be resolved ({exc}).") from None
    if not addresses:
        raise UnsafeUrl(f"URL {shown} is not allowed: host {host!r} has no address.")
    for address in addresses:
        reason = address_blocked(address, networks)
        if reason:
            raise UnsafeUrl(f"URL {shown} is not allowed: {reason}.")


# --- task outputs -------------------------------------------------------------------------------


def normalize_outputs(raw: str | list | None) -> list[str] | None:
    """A task's `outputs` field as clean project-relative paths, or None for "the default list".

    Accepts the JSON string clients send (or an already-parsed list). An empty list means the default,
    as in the reference. Paths are normalised ("a/../b" -> "b"); absolute paths, paths leaving the
    project and the project itself are refused.
    """
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            raw = json.loads(raw)
        except RecursionError:
            raise UnsafeInput("Invalid outputs: nested too deeply.") from None
        except ValueError as exc:
            raise UnsafeInput(f"Invalid outputs: not valid JSON ({exc}).") from None
        if raw is None:
            return None
    if not isinstance(raw, list):
        raise UnsafeInput("Invalid outputs: expected a JSON list of paths.")
    if len(raw) > MAX_OUTPUTS:
        raise UnsafeInput(f"Invalid outputs: at most {MAX_OUTPUTS} paths are accepted.")
    paths: list[str] = []
    for item in raw:
        if not isinstance(item, str):
            raise UnsafeInput(f"Invalid outputs: {item!r} is not a string.")
        paths.append(_normalize_output(item))
    return list(dict.fromkeys(paths)) or None


def _normalize_output(item: str) -> str:
    if "\x00" in item or len(item) > MAX_OUTPUT_CHARS:
        raise UnsafeInput(f"Invalid output path {item[:80]!r}.")
    path = item.strip().replace("\\", "/")
    if not path:
        raise UnsafeInput("Invalid output path: empty.")
    if path.startswith("/"):
        raise UnsafeInput(f"Invalid output path {item!r}: must be relative to the project folder.")
    path = posixpath.normpath(path)
    if path == ".." or path.startswith("../"):
        raise UnsafeInput(f"Invalid output path {item!r}: leaves the project folder.")
    if path == ".":
        raise UnsafeInput(f"Invalid output path {item!r}: must name a file or folder inside the project.")
    return path


# --- walking a project without leaving it -------------------------------------------------------


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symlink resolved, is `root` or below it."""
    try:
        return _inside_real(path, root.resolve())
    except (OSError, RuntimeError):
        return False


def _inside_real(path: Path, real_root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(real_root)
    except (OSError, RuntimeError):  # symlink loops
        return False


def walk_inside(root: Path, start: Path) -> Iterator[Path]:
    """Files at or under `start` (sorted, lexically under `start`) whose real location is inside `root`.

    Symlinked folders are not descended into (no cycles, no escapes); a symlinked file is yielded only
    when its target is inside `root`.
    """
    real_root = root.resolve()
    if not _inside_real(start, real_root):
        return
    if start.is_file():
        yield start
        return
    if not start.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_file() and _inside_real(path, real_root):
                yield path
