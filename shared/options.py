"""ODM option catalog: argparse dump conversion, client option validation, catalog merging and capping.

Pure functions, no Flask or Celery: the API validates with them, the workers build catalogs with them.

A *catalog* is the `/options` list: entries with exactly ``name, type, value, domain, help``.
Validated options are typed ``[{"name": ..., "value": ...}]`` in catalog order.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

CATALOG_KEYS = ("name", "type", "value", "domain", "help")

# argparse entries NodeODM never offers to clients: the node sets them itself or they make no sense remotely.
DROPPED_ARGUMENTS = frozenset(
    {
        "-h",
        "--project-path",
        "--cmvs-maxImages",
        "--time",
        "--zip-results",
        "--pmvs-num-cores",
        "--start-with",
        "--gcp",
        "--images",
        "--geo",
        "--align",
        "--split-image-groups",
        "--copy-to",
        "--rerun-all",
        "--rerun",
        "--slam-config",
        "--video",
        "--version",
        "name",
    }
)

# Added with value true unless skipPostProcessing, as NodeODM does, so results carry EPT, COGs and glTF.
POST_PROCESSING_OPTIONS = ("pc-ept", "cog", "gltf")

MAX_OPTION_ITEMS = 1000
MAX_VALUE_CHARS = 64 * 1024
MAX_RAW_CHARS = 1024 * 1024
_SHOWN_VALUE_CHARS = 200

BUNDLED_CATALOG = Path(__file__).parent / "data" / "odm-options.json"


class InvalidOptions(ValueError):
    """The client's options cannot be used; str() is the message for the client.

    ``errors`` holds the per-option list (``[{"name", "error"}]``) when the message is that list as JSON.
    """

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


# --- JavaScript-compatible number handling (NodeODM's parseInt / parseFloat / String) ------------------

_JS_INT_PREFIX = re.compile(r"\s*([+-]?[0-9]+)", re.ASCII)
_JS_FLOAT_PREFIX = re.compile(
    r"\s*([+-]?(?:Infinity|[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?))", re.ASCII
)
_INT_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def js_parse_int(text: str) -> int | float:
    """JavaScript's parseInt(text, 10): the leading integer, NaN when there is none."""
    match = _JS_INT_PREFIX.match(text)
    return int(match.group(1)) if match else math.nan


def js_parse_float(text: str) -> float:
    """JavaScript's parseFloat(text): the leading decimal number, NaN when there is none."""
    match = _JS_FLOAT_PREFIX.match(text)
    if not match:
        return math.nan
    number = match.group(1)
    if number.lstrip("+-") == "Infinity":
        return -math.inf if number.startswith("-") else math.inf
    try:
        return float(number)
    except (ValueError, OverflowError):
        return math.nan


def js_number_string(number: int | float) -> str:
    """JavaScript's String(number): "18" for 18.0, "2.5", "1e-7", "1e+21", "NaN", "Infinity"."""
    if isinstance(number, bool):
        return "true" if number else "false"
    if isinstance(number, int):
        return str(number)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    parts = Decimal(repr(abs(number))).normalize().as_tuple()
    digits = "".join(str(d) for d in parts.digits)
    k = len(digits)
    n = k + int(parts.exponent)  # the value is 0.<digits> * 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        exponent = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent)}"
    return sign + text


# --- argparse dump -> catalog --------------------------------------------------------------------------


def _parse_choices(text: str) -> list[str] | None:
    try:
        choices = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(choices, (list, tuple)):
        return None
    return [
        c if isinstance(c, str) else js_number_string(c) if isinstance(c, (int, float)) else str(c)
        for c in choices
    ]


def _metavar_domain(metavar: str | None) -> str:
    if metavar is None:
        return ""
    return re.sub(r"[<>]$", "", re.sub(r"^[<>]", "", metavar)).strip()


def _convert_entry(flag: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    default = kwargs.get("default")
    argtype = str(kwargs.get("type") or "").strip()
    value: str
    if argtype in ("<class 'int'>", "<type 'int'>"):
        kind = "int"
        value = js_number_string(js_parse_int(str(default))) if default is not None else "0"
    elif argtype in ("<class 'float'>", "<type 'float'>"):
        kind = "float"
        value = js_number_string(js_parse_float(str(default))) if default is not None else "0"
    else:
        kind = "string"
        value = str(default).strip() if default is not None else ""
    if default == "True":
        kind, value = "bool", "true"
    elif default == "False":
        kind, value = "bool", "false"

    domain: str | list[str] = _metavar_domain(kwargs.get("metavar"))
    choices = _parse_choices(str(kwargs["choices"])) if kwargs.get("choices") is not None else None
    if choices is not None:
        kind = "enum"
        domain = choices if value in choices else [value, *choices]

    help_text = str(kwargs.get("help") or "")
    choices_text = ", ".join(domain) if isinstance(domain, list) else domain
    help_text = (
        help_text.replace("%(choices)s", choices_text).replace("%(default)s", value).replace("%%", "%")
    )
    return {"name": flag[2:], "type": kind, "value": value, "domain": domain, "help": help_text}


def convert_argparse_dump(dump: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The /options catalog from ODM's recorded add_argument calls (args[0] -> {kwarg: str(value)}).

    Follows NodeODM's conversion; entries that are not `--long` flags (positionals, short-only) are skipped
    because the node could not pass them as `--name value`.
    """
    catalog = []
    for flag, kwargs in dump.items():
        if flag in DROPPED_ARGUMENTS or not flag.startswith("--") or len(flag) < 3:
            continue
        catalog.append(_convert_entry(flag, kwargs if isinstance(kwargs, dict) else {}))
    return catalog


def normalize_catalog(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each entry with exactly the five /options keys (PyODM's NodeOption(**o) crashes on any other key)."""
    normalized = []
    for entry in entries:
        item = {key: entry.get(key, "") for key in CATALOG_KEYS}
        item["help"] = item["help"] or ""
        normalized.append(item)
    return normalized


def load_bundled_catalog(path: Path | None = None) -> list[dict[str, Any]]:
    """The option list shipped with the package (shared/data/odm-options.json), used when no worker has
    published its own."""
    with open(path or BUNDLED_CATALOG, encoding="utf-8") as fh:
        return normalize_catalog(json.load(fh))


def merge_catalogs(catalogs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Options every engine accepts: same name and type in all lists, definition and order from the first,
    enum domains intersected (an enum no engine agrees on is left out)."""
    if not catalogs:
        return []
    others = [{entry["name"]: entry for entry in catalog} for catalog in catalogs[1:]]
    merged = []
    for entry in catalogs[0]:
        matches = [index.get(entry["name"]) for index in others]
        if any(m is None or m.get("type") != entry.get("type") for m in matches):
            continue
        item = copy.deepcopy(entry)
        if isinstance(item.get("domain"), list):
            for match in matches:
                assert match is not None
                theirs = match.get("domain")
                allowed = set(theirs) if isinstance(theirs, list) else set()
                item["domain"] = [choice for choice in item["domain"] if choice in allowed]
            if not item["domain"]:
                continue
        merged.append(item)
    return merged


def cap_max_concurrency(
    options: list[dict[str, Any]], cap: int | None, known: set[str] | None = None
) -> list[dict[str, Any]]:
    """`max-concurrency` limited to `cap` (added with the cap when absent: ODM's default may exceed a small
    worker). `known`, when given, is the engine's option names: nothing is added if it lacks the option."""
    if not cap or cap < 1:
        return [dict(o) for o in options]
    result = []
    found = False
    for option in options:
        option = dict(option)
        if option.get("name") == "max-concurrency":
            found = True
            value = option.get("value")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                option["value"] = min(int(value), cap)
            else:
                option["value"] = cap
        result.append(option)
    if not found and (known is None or "max-concurrency" in known):
        result.append({"name": "max-concurrency", "value": cap})
    return result


# --- client options -> typed options ---------------------------------------------------------------------


class _Rejected(Exception):
    """One option value failed conversion or its domain check; the message goes to the client."""


def _shown(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bool, int, float)):
        text = js_number_string(value)
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            text = type(value).__name__
    return text if len(text) <= _SHOWN_VALUE_CHARS else text[:_SHOWN_VALUE_CHARS] + "..."


def _to_int(value: Any) -> int:
    number: int
    if isinstance(value, bool):
        raise _Rejected("cannot convert to int")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and len(value) <= 1000 and _INT_TEXT.fullmatch(value.strip()):
        number = int(value.strip())
    elif isinstance(value, str) and len(value) <= 1000 and _FLOAT_TEXT.fullmatch(value.strip()):
        as_float = float(value.strip())
        if not (math.isfinite(as_float) and as_float.is_integer()):
            raise _Rejected("cannot convert to int")
        number = int(as_float)
    else:
        raise _Rejected("cannot convert to int")
    # ODM hands these to C++ tools; anything past 64 bits is a mistake, never a real setting
    if abs(number) > 2**63 - 1:
        raise _Rejected("cannot convert to int")
    return number


def _to_float(value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise _Rejected("cannot convert to float")
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str) and len(value) <= 1000 and _FLOAT_TEXT.fullmatch(value.strip()):
            number = float(value.strip())
        else:
            raise _Rejected("cannot convert to float")
    except OverflowError:
        raise _Rejected("cannot convert to float") from None
    if not math.isfinite(number):
        raise _Rejected("cannot convert to float")
    return number


def _to_bool(value: Any) -> bool:
    if value is True or value in ("true", "1") or (type(value) is int and value == 1):
        return True
    if value is False or value in ("false", "0") or (type(value) is int and value == 0):
        return False
    raise _Rejected("cannot convert to bool")


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return js_number_string(value)
    if isinstance(value, (dict, list)):
        try:
            return json.dumps(value)
        except (TypeError, ValueError, RecursionError):
            raise _Rejected("cannot convert to string") from None
    raise _Rejected("cannot convert to string")


_CONVERTERS = {"int": _to_int, "float": _to_float, "bool": _to_bool, "string": _to_string, "enum": _to_string}

_SIGNED = re.compile(r"^(positive |negative )?(integer|float)$", re.ASCII)
_PERCENT = re.compile(r"^percent$", re.ASCII)
_RANGE = re.compile(r"^(float|integer): ([\-+.\d]+) <= x <= ([\-+.\d]+)$", re.ASCII)
_COMPARE = re.compile(r"^(float|integer) (>=|>|<|<=) ([\-+.\d]+)$", re.ASCII)


def _as_number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and len(value) <= 1000 and _FLOAT_TEXT.fullmatch(value.strip()):
        number = float(value.strip())
        return number if math.isfinite(number) else None
    return None


def _bound(kind: str, text: str) -> float:
    return float(js_parse_int(text)) if kind == "integer" else js_parse_float(text)


def _in_domain(domain: Any, value: Any) -> bool:
    if isinstance(domain, list):
        return _to_string(value) in domain
    if not isinstance(domain, str) or not domain:
        return True
    if domain == "json":
        if not isinstance(value, str):
            return False
        try:
            json.loads(value)
        except (ValueError, RecursionError):
            return False
        return True
    numeric = (
        _SIGNED.match(domain) or _PERCENT.match(domain) or _RANGE.match(domain) or _COMPARE.match(domain)
    )
    if not numeric:
        return True  # string, path and any other free-form metavar accept anything
    number = _as_number(value)
    if number is None:
        return False
    if match := _SIGNED.match(domain):
        if match.group(1) == "positive ":
            return number >= 0
        if match.group(1) == "negative ":
            return number <= 0
        if match.group(2) == "integer":
            return isinstance(number, int) or float(number).is_integer()
        return math.isfinite(number)
    if _PERCENT.match(domain):
        return 0 <= number <= 100
    if match := _RANGE.match(domain):
        return _bound(match.group(1), match.group(2)) <= number <= _bound(match.group(1), match.group(3))
    match = _COMPARE.match(domain)
    assert match is not None
    bound = _bound(match.group(1), match.group(3))
    return {">=": number >= bound, ">": number > bound, "<=": number <= bound, "<": number < bound}[
        match.group(2)
    ]


def _check(entry: dict[str, Any], raw_value: Any) -> Any:
    if isinstance(raw_value, str) and len(raw_value) > MAX_VALUE_CHARS:
        raise _Rejected(f"Value too long ({len(raw_value)} characters, at most {MAX_VALUE_CHARS})")
    convert = _CONVERTERS.get(str(entry.get("type")), _to_string)
    try:
        value = convert(raw_value)
    except _Rejected as exc:
        raise _Rejected(f"Invalid value {_shown(raw_value)} ({exc})") from None
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise _Rejected(f"Value too long ({len(value)} characters, at most {MAX_VALUE_CHARS})")
    domain = entry.get("domain")
    if not _in_domain(domain, value):
        if isinstance(domain, list):
            raise _Rejected(f"Invalid value {_shown(value)} (not in enum)")
        raise _Rejected(f"Invalid value {_shown(value)} (out of domain: {domain})")
    return value


def _parse(raw: Any) -> list[Any]:
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidOptions("Invalid options: not UTF-8 text") from None
    if raw is None:
        return []
    if isinstance(raw, str):
        if not raw.strip():
            return []
        if len(raw) > MAX_RAW_CHARS:
            raise InvalidOptions(
                f"Invalid options: too large ({len(raw)} characters, at most {MAX_RAW_CHARS})"
            )
        try:
            raw = json.loads(raw)
        except RecursionError:
            raise InvalidOptions("Invalid options: nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, and int() digit limits on huge numbers
            raise InvalidOptions(str(exc)) from None
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidOptions(
            'Invalid options: expected a JSON list of {"name": ..., "value": ...} objects, '
            f"got {type(raw).__name__}"
        )
    if len(raw) > MAX_OPTION_ITEMS:
        raise InvalidOptions(f"Invalid options: too many ({len(raw)}, at most {MAX_OPTION_ITEMS})")
    return raw


def validate_options(
    raw: Any, catalog: list[dict[str, Any]], skip_post_processing: bool = False
) -> list[dict[str, Any]]:
    """The client's `options` field, checked against the catalog: typed [{"name", "value"}] in catalog order.

    Unknown names are dropped; for a repeated name the last one wins. Raises InvalidOptions when the field is
    malformed, or with all per-option failures as a JSON list ``[{"name", "error"}]``.
    """
    items = _parse(raw)
    known = {entry["name"]: entry for entry in catalog}
    given: dict[str, Any] = {}
    for index, item in enumerate(items):
        if not (isinstance(item, dict) and isinstance(item.get("name"), str) and "value" in item):
            raise InvalidOptions(
                f'Invalid options: item {index} is not an object with a "name" and a "value"'
            )
        if item["name"] in known:
            given[item["name"]] = item["value"]

    typed: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    for name in known:
        if name in given:
            try:
                typed[name] = _check(known[name], given[name])
            except _Rejected as exc:
                errors.append({"name": name, "error": str(exc)})
    if errors:
        raise InvalidOptions(json.dumps(errors, separators=(",", ":")), errors)

    chosen = [
        {"name": entry["name"], "value": typed[entry["name"]]} for entry in catalog if entry["name"] in typed
    ]
    if not skip_post_processing:
        # appended after the user's options in this order, as the reference does
        for name in POST_PROCESSING_OPTIONS:
            if name in known and known[name].get("type") == "bool" and name not in typed:
                chosen.append({"name": name, "value": True})
    return chosen
