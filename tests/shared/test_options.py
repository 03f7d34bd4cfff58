"""ODM option conversion (argparse dump -> /options), client option validation, merging and capping."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from shared.options import (
    MAX_OPTION_ITEMS,
    MAX_VALUE_CHARS,
    InvalidOptions,
    cap_max_concurrency,
    convert_argparse_dump,
    js_number_string,
    load_bundled_catalog,
    merge_catalogs,
    validate_options,
)

DATA = Path(__file__).resolve().parents[1] / "data"
CATALOG_KEYS = ["name", "type", "value", "domain", "help"]


def read(name: str) -> Any:
    return json.loads((DATA / name).read_text())


@pytest.fixture(scope="module")
def catalog() -> list[dict[str, Any]]:
    return load_bundled_catalog(DATA / "odm-options-catalog.json")


def entry(name: str, kind: str, domain: Any, value: str = "") -> dict[str, Any]:
    return {"name": name, "type": kind, "value": value, "domain": domain, "help": ""}


def rejection(raw: Any, catalog: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, str]]:
    with pytest.raises(InvalidOptions) as caught:
        validate_options(raw, catalog, **kwargs)
    errors = json.loads(str(caught.value))
    assert errors == caught.value.errors
    return errors


def one(kind: str, domain: Any, value: Any) -> Any:
    """Validate a single option of the given type and domain; its typed value."""
    result = validate_options([{"name": "o", "value": value}], [entry("o", kind, domain)])
    assert result == [{"name": "o", "value": result[0]["value"]}]
    return result[0]["value"]


def one_error(kind: str, domain: Any, value: Any) -> str:
    errors = rejection([{"name": "o", "value": value}], [entry("o", kind, domain)])
    assert [e["name"] for e in errors] == ["o"]
    return errors[0]["error"]


# --- conversion ------------------------------------------------------------------------------------------


def test_dump_example_converts_to_the_reference_catalog() -> None:
    converted = convert_argparse_dump(read("odm-argparse-dump-example.json"))
    expected = read("odm-options-catalog.json")

    assert len(converted) == 80
    assert [o["name"] for o in converted] == [o["name"] for o in expected]
    assert all(list(o) == CATALOG_KEYS for o in converted)
    assert [{k: v for k, v in o.items() if k != "help"} for o in converted] == expected
    assert all(o["help"] == "" for o in converted)  # the example dump carries no help texts


def test_conversion_rules() -> None:
    dump = {
        "-h": {"action": "help", "default": "==SUPPRESS=="},
        "name": {"metavar": "<dataset name>", "default": "code", "nargs": "?"},
        "--gcp": {"metavar": "<path string>", "default": "None"},
        "-s": {"metavar": "<string>"},
        "--ints": {
            "metavar": "<positive integer>",
            "type": "<class 'int'>",
            "default": "4",
            "help": "Cores. Default: %(default)s",
        },
        "--int-no-default": {"metavar": "<integer>", "type": "<class 'int'>"},
        "--float-whole": {"metavar": "<positive float>", "type": "<class 'float'>", "default": "18.0"},
        "--float-frac": {"metavar": "<float: -10 <= x <= 10>", "type": "<class 'float'>", "default": "-2.5"},
        "--float-tiny": {"metavar": "<float>", "type": "<class 'float'>", "default": "1e-07"},
        "--float-no-default": {"metavar": "<float>", "type": "<type 'float'>"},
        "--text": {"metavar": "<string>", "type": "<function url_string at 0x7f>", "default": " padded "},
        "--text-no-default": {"metavar": "<path>"},
        "--flag": {
            "action": "<class 'config.StoreTrue'>",
            "nargs": "0",
            "default": "False",
            "help": "A flag, 100%% off. Default: %(default)s",
        },
        "--on": {"action": "store_true", "default": "True"},
        "--choice": {
            "metavar": "<string>",
            "default": "b",
            "choices": "['a', 'b']",
            "help": "One of %(choices)s. Default: %(default)s",
        },
        "--choice-no-default": {"metavar": "<string>", "choices": "('x', 'y')"},
        "--numeric-choice": {"type": "<class 'int'>", "default": "2", "choices": "[1, 2, 4]"},
        "--odd-choice": {"metavar": "<string>", "default": "1", "choices": "range(0, 3)"},
        "--no-metavar": {"default": "x"},
    }
    by_name = {o["name"]: o for o in convert_argparse_dump(dump)}

    assert list(by_name) == [
        "ints",
        "int-no-default",
        "float-whole",
        "float-frac",
        "float-tiny",
        "float-no-default",
        "text",
        "text-no-default",
        "flag",
        "on",
        "choice",
        "choice-no-default",
        "numeric-choice",
        "odd-choice",
        "no-metavar",
    ]
    assert by_name["ints"] == {
        "name": "ints",
        "type": "int",
        "value": "4",
        "domain": "positive integer",
        "help": "Cores. Default: 4",
    }
    assert (by_name["int-no-default"]["type"], by_name["int-no-default"]["value"]) == ("int", "0")
    assert (by_name["float-whole"]["type"], by_name["float-whole"]["value"]) == ("float", "18")
    assert (by_name["float-frac"]["value"], by_name["float-frac"]["domain"]) == (
        "-2.5",
        "float: -10 <= x <= 10",
    )
    assert by_name["float-tiny"]["value"] == "1e-7"  # JavaScript's String(), as NodeODM renders it
    assert by_name["float-no-default"]["value"] == "0"
    assert by_name["text"] == {
        "name": "text",
        "type": "string",
        "value": "padded",
        "domain": "string",
        "help": "",
    }
    assert by_name["text-no-default"]["value"] == ""
    assert by_name["flag"] == {
        "name": "flag",
        "type": "bool",
        "value": "false",
        "domain": "",
        "help": "A flag, 100% off. Default: false",
    }
    assert (by_name["on"]["type"], by_name["on"]["value"]) == ("bool", "true")
    assert by_name["choice"] == {
        "name": "choice",
        "type": "enum",
        "value": "b",
        "domain": ["a", "b"],
        "help": "One of a, b. Default: b",
    }
    assert by_name["choice-no-default"]["domain"] == ["", "x", "y"]
    assert by_name["numeric-choice"]["domain"] == ["1", "2", "4"]
    assert (by_name["odd-choice"]["type"], by_name["odd-choice"]["domain"]) == ("string", "string")
    assert by_name["no-metavar"]["domain"] == ""


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (18.0, "18"),
        (2.5, "2.5"),
        (0.15, "0.15"),
        (-0.0, "0"),
        (1e-7, "1e-7"),
        (1.5e-6, "0.0000015"),
        (1e21, "1e+21"),
        (1.2345e20, "123450000000000000000"),
        (-3.0, "-3"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (12, "12"),
        (True, "true"),
    ],
)
def test_js_number_string(number: float, text: str) -> None:
    assert js_number_string(number) == text


def test_bundled_catalog_has_the_five_keys_and_help_texts() -> None:
    bundled = load_bundled_catalog()
    assert all(list(o) == CATALOG_KEYS for o in bundled)
    assert {o["name"] for o in bundled} >= {"dsm", "pc-ept", "cog", "gltf", "max-concurrency", "no-gpu"}
    assert any(o["help"] for o in bundled)


def test_catalog_without_help_gets_empty_help(catalog: list[dict[str, Any]]) -> None:
    assert all(list(o) == CATALOG_KEYS and o["help"] == "" for o in catalog)


# --- parsing the field -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, "", "   ", "[]", "null", [], b"[]"])
def test_empty_options(raw: Any, catalog: list[dict[str, Any]]) -> None:
    assert validate_options(raw, catalog, skip_post_processing=True) == []


def test_unparseable_json_answers_with_the_parser_message(catalog: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidOptions) as caught:
        validate_options("[{bogus", catalog)
    assert str(caught.value) == "Expecting property name enclosed in double quotes: line 1 column 3 (char 2)"
    with pytest.raises(InvalidOptions, match="Expecting value"):
        validate_options("dsm=true", catalog)


@pytest.mark.parametrize(
    "raw",
    [
        '{"name": "dsm", "value": true}',
        "5",
        '"dsm"',
        "true",
        5,
        2.5,
        True,
        {"name": "dsm", "value": True},
        ("dsm",),
        object(),
    ],
)
def test_options_that_are_not_a_list(raw: Any, catalog: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidOptions, match="expected a JSON list"):
        validate_options(raw, catalog)


@pytest.mark.parametrize(
    "items",
    [
        [1],
        ["dsm"],
        [None],
        [["dsm", True]],
        [{"name": 5, "value": 1}],
        [{"name": "dsm"}],
        [{"value": True}],
        [{"name": None, "value": True}],
        [{"name": "dsm", "value": True}, 7],
    ],
)
def test_items_that_are_not_name_value_objects(items: list[Any], catalog: list[dict[str, Any]]) -> None:
    for raw in (items, json.dumps(items)):
        with pytest.raises(InvalidOptions, match='is not an object with a "name" and a "value"'):
            validate_options(raw, catalog)


def test_undecodable_bytes(catalog: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidOptions, match="UTF-8"):
        validate_options(b"\xff\xfe[", catalog)


# --- selection, order, post-processing -------------------------------------------------------------------


def test_unknown_names_are_dropped_and_engine_order_kept(catalog: list[dict[str, Any]]) -> None:
    raw = json.dumps(
        [
            {"name": "dsm", "value": True},
            {"name": "no-such-option", "value": {"anything": [1, 2]}},
            {"name": "gcp", "value": "/etc/passwd"},
            {"name": "project-path", "value": "/"},
            {"name": "min-num-features", "value": "12000"},
            {"name": "feature-quality", "value": "ultra"},
            {"name": "not-an-option-with-a-bad-value", "value": None},
        ]
    )
    assert validate_options(raw, catalog, skip_post_processing=True) == [
        {"name": "min-num-features", "value": 12000},
        {"name": "feature-quality", "value": "ultra"},
        {"name": "dsm", "value": True},
    ]


def test_duplicates_last_wins(catalog: list[dict[str, Any]]) -> None:
    raw = [
        {"name": "mesh-size", "value": "bogus"},
        {"name": "mesh-size", "value": 1000},
        {"name": "dsm", "value": True},
        {"name": "dsm", "value": False},
    ]
    assert validate_options(raw, catalog, skip_post_processing=True) == [
        {"name": "mesh-size", "value": 1000},
        {"name": "dsm", "value": False},
    ]


def test_post_processing_additions(catalog: list[dict[str, Any]]) -> None:
    # appended after the user's options, in the reference's order: pc-ept, cog, gltf
    assert validate_options(None, catalog) == [
        {"name": "pc-ept", "value": True},
        {"name": "cog", "value": True},
        {"name": "gltf", "value": True},
    ]
    assert validate_options(
        '[{"name": "dsm", "value": true}, {"name": "pc-ept", "value": false}]', catalog
    ) == [
        {"name": "pc-ept", "value": False},
        {"name": "dsm", "value": True},
        {"name": "cog", "value": True},
        {"name": "gltf", "value": True},
    ]
    assert validate_options('[{"name": "dsm", "value": true}]', catalog, skip_post_processing=True) == [
        {"name": "dsm", "value": True}
    ]


def test_post_processing_only_adds_what_the_engine_knows() -> None:
    small = [entry("dsm", "bool", ""), entry("cog", "bool", ""), entry("gltf", "string", "string")]
    assert validate_options(None, small) == [{"name": "cog", "value": True}]


# --- types -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "typed"),
    [
        (12, 12),
        (12.0, 12),
        ("12", 12),
        (" 12", 12),
        ("12 ", 12),
        ("+12", 12),
        ("-3", -3),
        ("1e3", 1000),
        ("12.0", 12),
        (2**63 - 1, 2**63 - 1),
    ],
)
def test_int_accepts(value: Any, typed: int) -> None:
    result = one("int", "integer", value)
    assert result == typed and type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        "12abc",
        "abc",
        "",
        " ",
        "NaN",
        "nan",
        "inf",
        "Infinity",
        "12.5",
        12.5,
        None,
        [],
        [12],
        {},
        {"a": 1},
        "1_000",
        "\u0661\u0662",
        "0x10",
        10**30,
        -(10**30),
        1e300,
        math.nan,
        math.inf,
        "9" * 5000,
    ],
)
def test_int_rejects(value: Any) -> None:
    assert one_error("int", "integer", value).endswith("(cannot convert to int)")


@pytest.mark.parametrize(
    ("value", "typed"),
    [
        (2.5, 2.5),
        ("2.5", 2.5),
        (3, 3.0),
        (" 4 ", 4.0),
        ("1e-3", 0.001),
        (".5", 0.5),
        ("-0.5", -0.5),
    ],
)
def test_float_accepts(value: Any, typed: float) -> None:
    result = one("float", "float", value)
    assert result == typed and type(result) is float


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        "NaN",
        "nan",
        "inf",
        "-Infinity",
        "2.5x",
        "",
        None,
        [],
        {"v": 1},
        math.nan,
        math.inf,
        10**400,
        "1_0",
        "0x1p3",
    ],
)
def test_float_rejects(value: Any) -> None:
    assert one_error("float", "float", value).endswith("(cannot convert to float)")


def test_json_nan_and_infinite_numbers_are_rejected(catalog: list[dict[str, Any]]) -> None:
    errors = rejection('[{"name": "crop", "value": NaN}, {"name": "mesh-size", "value": 1e999}]', catalog)
    assert errors == [
        {"name": "mesh-size", "error": "Invalid value Infinity (cannot convert to int)"},
        {"name": "crop", "error": "Invalid value NaN (cannot convert to float)"},
    ]


@pytest.mark.parametrize(
    ("value", "typed"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        (1, True),
        (0, False),
    ],
)
def test_bool_accepts(value: Any, typed: bool) -> None:
    assert one("bool", "", value) is typed


@pytest.mark.parametrize("value", ["yes", "True", "FALSE", "", 2, -1, 1.0, 0.0, None, [], {}, [True]])
def test_bool_rejects(value: Any) -> None:
    assert one_error("bool", "", value).endswith("(cannot convert to bool)")


@pytest.mark.parametrize(
    ("value", "typed"),
    [
        ("x y", "x y"),
        (5, "5"),
        (2.5, "2.5"),
        (5.0, "5"),
        (True, "true"),
        ({"a": [1, "b"]}, '{"a": [1, "b"]}'),
        ([1, 2], "[1, 2]"),
        ("", ""),
    ],
)
def test_string_conversion(value: Any, typed: str) -> None:
    assert one("string", "string", value) == typed


@pytest.mark.parametrize("value", [None, math.nan])
def test_string_rejects(value: Any) -> None:
    assert one_error("string", "string", value).endswith("(cannot convert to string)")


def test_enum(catalog: list[dict[str, Any]]) -> None:
    assert one("enum", ["a", "b", "3"], "a") == "a"
    assert one("enum", ["a", "b", "3"], 3) == "3"
    assert one_error("enum", ["a", "b"], "bogus") == "Invalid value bogus (not in enum)"
    assert one_error("enum", ["a", "b"], True) == "Invalid value true (not in enum)"
    assert one_error("enum", ["a", "b"], {"a": 1}) == 'Invalid value {"a": 1} (not in enum)'
    assert one_error("enum", ["a", "b"], None) == "Invalid value null (cannot convert to string)"
    assert validate_options('[{"name": "rerun-from", "value": ""}]', catalog, skip_post_processing=True) == [
        {"name": "rerun-from", "value": ""}
    ]


# --- domains ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "domain", "good", "bad"),
    [
        ("int", "integer", [-5, 0, 7], []),
        ("float", "integer", [2.0, -3], [2.5]),
        ("int", "positive integer", [0, 1, 10**9], [-1]),
        ("float", "positive integer", [0, 150.5], [-0.5]),
        ("int", "negative integer", [0, -4], [1]),
        ("float", "float", [-1e300, 0, 2.5], []),
        ("float", "positive float", [0, 0.1], [-0.1]),
        ("float", "negative float", [0, -0.1], [0.1]),
        ("float", "percent", [0, 55.5, 100], [-1, 100.01]),
        ("int", "integer: 1 <= x <= 14", [1, 7, 14], [0, 15, -1]),
        ("float", "float: -10 <= x <= 10", [-10, -2.5, 10], [-10.5, 10.01]),
        ("float", "float: 0.5 <= x <= 1.5", [0.5, 1.5], [0.49, 1.51]),
        ("float", "float > 0.0", [0.001, 5], [0, -1]),
        ("float", "float >= 1.0", [1, 2], [0.99]),
        ("int", "integer < 10", [9, -100], [10]),
        ("int", "integer <= 10", [10], [11]),
        ("string", "positive integer", ["5", " 0 "], ["-1", "abc", "", "NaN"]),
        ("string", "json", ['{"a": 1}', "[]", "3", 5, {"a": 1}, [1]], ["", "not json", "{'a': 1}", "[1,"]),
    ],
)
def test_domain_checks(kind: str, domain: str, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        one(kind, domain, value)
    for value in bad:
        assert one_error(kind, domain, value).endswith(f"(out of domain: {domain})"), value


@pytest.mark.parametrize(
    "domain", ["string", "path", "", "path string", "PROJ4 string", "<weird>", "integer?"]
)
def test_free_form_domains_accept_anything(domain: str) -> None:
    for value in ["", "--flag", "$(touch /tmp/x)", "a\nb", "-5", "x" * 1000]:
        assert one("string", domain, value) == value


def test_domain_message(catalog: list[dict[str, Any]]) -> None:
    errors = rejection('[{"name": "mesh-octree-depth", "value": 15}]', catalog)
    assert errors == [
        {"name": "mesh-octree-depth", "error": "Invalid value 15 (out of domain: integer: 1 <= x <= 14)"}
    ]


def test_all_errors_collected_in_engine_order_as_compact_json(catalog: list[dict[str, Any]]) -> None:
    raw = json.dumps(
        [
            {"name": "dsm", "value": "yes"},
            {"name": "feature-quality", "value": "bogus"},
            {"name": "mesh-size", "value": True},
            {"name": "crop", "value": -1},
            {"name": "cameras", "value": "not json"},
            {"name": "min-num-features", "value": 5},
        ]
    )
    with pytest.raises(InvalidOptions) as caught:
        validate_options(raw, catalog)
    assert str(caught.value) == json.dumps(
        [
            {"name": "feature-quality", "error": "Invalid value bogus (not in enum)"},
            {"name": "cameras", "error": "Invalid value not json (out of domain: json)"},
            {"name": "mesh-size", "error": "Invalid value true (cannot convert to int)"},
            {"name": "crop", "error": "Invalid value -1 (out of domain: positive float)"},
            {"name": "dsm", "error": "Invalid value yes (cannot convert to bool)"},
        ],
        separators=(",", ":"),
    )


# --- hostile sizes ---------------------------------------------------------------------------------------


def test_too_many_items(catalog: list[dict[str, Any]]) -> None:
    items = [{"name": "dsm", "value": True}] * (MAX_OPTION_ITEMS + 1)
    with pytest.raises(InvalidOptions, match="too many"):
        validate_options(json.dumps(items), catalog)
    assert validate_options(items[:MAX_OPTION_ITEMS], catalog, skip_post_processing=True) == [
        {"name": "dsm", "value": True}
    ]


def test_too_long_value(catalog: list[dict[str, Any]]) -> None:
    long = "x" * (MAX_VALUE_CHARS + 1)
    errors = rejection([{"name": "primary-band", "value": long}], catalog)
    assert errors == [
        {
            "name": "primary-band",
            "error": f"Value too long ({MAX_VALUE_CHARS + 1} characters, at most {MAX_VALUE_CHARS})",
        }
    ]
    big_json = {"k": "x" * MAX_VALUE_CHARS}
    assert "too long" in rejection([{"name": "cameras", "value": big_json}], catalog)[0]["error"]


def test_too_large_field(catalog: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidOptions, match="too large"):
        validate_options("[" + " " * (2 * 1024 * 1024) + "]", catalog)


def test_deeply_nested_input_is_an_error_not_a_crash(catalog: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidOptions, match="nested too deeply"):
        validate_options("[" * 200_000 + "]" * 200_000, catalog)
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    errors = rejection([{"name": "primary-band", "value": nested}], catalog)
    assert errors == [{"name": "primary-band", "error": "Invalid value list (cannot convert to string)"}]


def test_number_with_too_many_digits(catalog: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidOptions, match="digits"):
        validate_options('[{"name": "mesh-size", "value": ' + "9" * 5000 + "}]", catalog)


def test_error_messages_show_at_most_a_short_value(catalog: list[dict[str, Any]]) -> None:
    errors = rejection([{"name": "feature-quality", "value": "z" * 10_000}], catalog)
    assert len(errors[0]["error"]) < 300


# --- merging and capping ---------------------------------------------------------------------------------


def test_merge_catalogs() -> None:
    first = [
        entry("a", "int", "integer", "1"),
        entry("e", "enum", ["x", "y", "z"], "x"),
        entry("t", "int", "integer"),
        entry("only-first", "bool", ""),
        entry("none", "enum", ["p"]),
    ]
    second = [
        entry("e", "enum", ["z", "x", "w"], "z"),
        entry("a", "int", "positive integer", "9"),
        entry("t", "float", "float"),
        entry("none", "enum", ["q"]),
        entry("only-second", "bool", ""),
    ]
    third = [
        entry("a", "int", "integer"),
        entry("e", "enum", ["x", "z", "y"]),
        entry("t", "int", "integer"),
        entry("none", "enum", ["p"]),
    ]
    before = copy.deepcopy(first)

    merged = merge_catalogs([first, second, third])

    assert merged == [entry("a", "int", "integer", "1"), entry("e", "enum", ["x", "z"], "x")]
    merged[1]["domain"].append("mutated")
    assert first == before
    assert merge_catalogs([]) == []
    assert merge_catalogs([first]) == first


def test_cap_max_concurrency() -> None:
    options = [{"name": "dsm", "value": True}, {"name": "max-concurrency", "value": 16}]
    before = copy.deepcopy(options)

    assert cap_max_concurrency(options, 4) == [
        {"name": "dsm", "value": True},
        {"name": "max-concurrency", "value": 4},
    ]
    assert cap_max_concurrency(options, 32) == options
    assert cap_max_concurrency(options, None) == options
    assert cap_max_concurrency([], 4) == [{"name": "max-concurrency", "value": 4}]
    assert cap_max_concurrency([], None) == []
    assert cap_max_concurrency([], 4, known={"dsm"}) == []
    assert cap_max_concurrency([], 4, known={"max-concurrency"}) == [{"name": "max-concurrency", "value": 4}]
    assert options == before


def _random_value(rng: Any, depth: int = 0) -> Any:
    kinds = ["int", "float", "bool", "none", "str", "numstr", "huge", "nan"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-(10**6), 10**6)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "str":
        return "".join(rng.choice("ab -$();'\"\\\x00é{}[]") for _ in range(rng.randint(0, 12)))
    if kind == "numstr":
        return rng.choice(["1", "-1", "0.5", "1e400", "  7 ", "0x10", "true", "False", "inf", "NaN"])
    if kind == "huge":
        return 10 ** rng.randint(18, 400)
    if kind == "nan":
        return rng.choice([float("inf"), float("-inf")])
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {str(i): _random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def test_any_value_of_any_type_gives_options_or_a_clear_error(catalog: list[dict[str, Any]]) -> None:
    """The reference node dies on a numeric value; here every input is a task or an InvalidOptions."""
    import random

    rng = random.Random(20261127)
    names = [o["name"] for o in catalog] + ["unknown", "", "--dsm"]
    outcomes = {"valid": 0, "refused": 0}
    for _ in range(3000):
        items = [{"name": rng.choice(names), "value": _random_value(rng)} for _ in range(rng.randint(0, 6))]
        raw: Any = items if rng.random() < 0.3 else json.dumps(items, allow_nan=True)
        try:
            result = validate_options(raw, catalog, skip_post_processing=rng.random() < 0.5)
        except InvalidOptions as exc:
            outcomes["refused"] += 1
            assert str(exc)
            continue
        outcomes["valid"] += 1
        json.dumps(result, allow_nan=False)  # what is stored must be plain JSON
        known = {o["name"]: o for o in catalog}
        for option in result:
            kind = known[option["name"]]["type"]
            value = option["value"]
            assert {"bool": bool, "int": int, "float": float}.get(kind, str) is type(value) or (
                kind == "float" and type(value) is int), (option, kind)
    assert outcomes["valid"] > 100 and outcomes["refused"] > 100, outcomes
