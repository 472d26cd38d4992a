"""Checking JSON documents against the shipped schemas (model.json, catalogs), and the id rule.

One validator: the `jsonschema` package when it is importable (it is a test dependency), else
`_fallback_errors`, which interprets the subset of JSON Schema our schemas use. Both report in
the same words (`path: problem`), and the tests run both over the same broken documents, so the
two cannot drift apart unnoticed. jsonschema is not a runtime dependency: Slicer's Python must
not have to grow for the engine to load a bundle.

JSON is parsed strictly: Python's `json` accepts `NaN` and `Infinity`, and `1e999` is infinity;
a non-finite number in a bundle or catalog is always an error (it gave all-background results).
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Any, List, Mapping, Optional, Union

from mednextv2.errors import InputError

# The model id is a folder name in the cache, a catalog key and model.json's `id`. `\Z`, not `$`:
# `$` also matches before a trailing newline. The schemas carry the same pattern (tested).
MODEL_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}\Z"
MODEL_ID_RE = re.compile(MODEL_ID_PATTERN)
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}


def model_id_problem(model_id: Any) -> Optional[str]:
    """Why `model_id` is not a valid model id, or None when it is."""
    if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id) or model_id.endswith("."):
        return (f"invalid model id {model_id!r}: use 1-64 lower-case letters, digits, '.', '_' or '-', "
                "starting with a letter or digit and not ending with '.'")
    if model_id.split(".")[0] in _WINDOWS_RESERVED:
        return f"invalid model id {model_id!r}: reserved file name on Windows"
    return None


# ---------------------------------------------------------------- text from untrusted documents
# Control characters and line separators: a label name with one could forge a field of a
# .seg.nrrd header; on a terminal, escape sequences can rewrite what was printed before.
_LINE_OR_CONTROL = frozenset({"Cc", "Zl", "Zp"})
_UNPRINTABLE = _LINE_OR_CONTROL | {"Cf", "Cs"}  # Cf: bidi overrides can reorder what a line shows


def control_characters(text: str) -> List[str]:
    """The control characters and line separators in `text`, as escapes (`'\\n'`), in order."""
    return [ascii(c)[1:-1] for c in text if not c.isprintable() and unicodedata.category(c) in _LINE_OR_CONTROL]


def printable(text: Any) -> str:
    """`text` as one line a terminal shows as written: each unprintable character becomes '?'."""
    text = str(text)
    if text.isascii() and text.isprintable():
        return text
    return "".join("?" if unicodedata.category(c) in _UNPRINTABLE else c for c in text)


# ---------------------------------------------------------------- strict JSON
def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


# model.json and catalogs are 4-6 levels deep; every reader of them recurses once per level.
MAX_JSON_DEPTH = 64


def loads_strict(text: Union[str, bytes], where: str) -> Any:
    """json.loads refusing NaN/Infinity, non-finite numbers and nesting deeper than
    MAX_JSON_DEPTH; InputError naming `where`."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{where}: not valid JSON ({e})") from e
    except RecursionError as e:
        raise InputError(f"{where}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)") from e
    if json_depth(data) > MAX_JSON_DEPTH:
        raise InputError(f"{where}: not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)")
    bad = non_finite_paths(data)
    if bad:
        raise InputError(f"{where}: numbers must be finite, got {', '.join(bad[:5])}")
    return data


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (a scalar: 0); iterative, so any depth is safe."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def non_finite_paths(value: Any, path: str = "") -> List[str]:
    """Where `value` holds an infinite or NaN float, as `path (value)`."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{_where(path)} ({value})"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_paths(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite_paths(v, f"{path}[{i}]")]
    return []


# ---------------------------------------------------------------- schemas
@lru_cache(maxsize=None)
def load_schema(name: str = "model.schema.json") -> Mapping[str, Any]:
    """A JSON schema shipped in `mednextv2/schemas/`."""
    return json.loads(resources.files("mednextv2").joinpath("schemas", name).read_text(encoding="utf-8"))


def schema_errors(value: Any, schema: Mapping[str, Any], engine: Optional[str] = None) -> List[str]:
    """Every problem of `value` against `schema`, as sorted `path: problem` lines.

    `engine` forces "jsonschema" or "fallback" (tests); by default jsonschema when importable."""
    if engine is None:
        try:
            import jsonschema  # noqa: F401
            engine = "jsonschema"
        except ImportError:
            engine = "fallback"
    errors = _jsonschema_errors(value, schema) if engine == "jsonschema" else _fallback_errors(value, schema, "", schema)
    return sorted(set(errors))


def _where(path: str) -> str:
    return path or "(top level)"


def _show(value: Any) -> str:
    return json.dumps(value)[:60]


def _field(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# The words of each problem, shared by both engines, so they report alike.
_WORDS = {
    "enum": "must be one of {schema[enum]}, got {shown}",
    "minimum": "must be >= {schema[minimum]}, got {value}",
    "maximum": "must be <= {schema[maximum]}, got {value}",
    "exclusiveMinimum": "must be > {schema[exclusiveMinimum]}, got {value}",
    "minLength": "must not be empty",
    "pattern": "{value!r} does not match {schema[pattern]}",
    "minItems": "needs at least {schema[minItems]} item(s), got {length}",
    "maxItems": "takes at most {schema[maxItems]} item(s), got {length}",
}


def _message(keyword: str, path: str, value: Any, schema: Mapping[str, Any]) -> List[str]:
    """The lines for one failed `keyword` of `schema` at `path`."""
    if keyword == "type":
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        return [f"{_where(path)}: expected {' or '.join(types)}, got {_show(value)}"]
    if keyword == "required":
        return [f"{_field(path, key)}: required field is missing" for key in schema["required"] if key not in value]
    if keyword == "additionalProperties":
        props = schema.get("properties", {})
        return [f"{_field(path, key)}: unknown field (allowed: {', '.join(props)})" for key in value if key not in props]
    if keyword in _WORDS:
        length = len(value) if isinstance(value, (list, str)) else None
        return [f"{_where(path)}: " + _WORDS[keyword].format(schema=schema, value=value, shown=_show(value), length=length)]
    return []


def _jsonschema_errors(value: Any, schema: Mapping[str, Any]) -> List[str]:
    import jsonschema

    errors: List[str] = []
    for error in jsonschema.Draft202012Validator(schema).iter_errors(value):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        errors += _message(error.validator, path, error.instance, error.schema) or [f"{_where(path)}: {error.message}"]
    return errors


# ---------------------------------------------------------------- the fallback
_JSON_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return name == "boolean"
    if name == "integer":  # JSON Schema: 2.0 is an integer
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, (int, float))
    return isinstance(value, _JSON_TYPES[name])


def _fallback_errors(value: Any, schema: Mapping[str, Any], path: str, root: Mapping[str, Any]) -> List[str]:
    """The keywords our schemas use: $ref (to $defs), type, enum, minimum, maximum,
    exclusiveMinimum, minLength, pattern, minItems, maxItems, items, required, properties,
    additionalProperties (false). jsonschema's documented semantics, nothing more."""
    if "$ref" in schema:
        return _fallback_errors(value, root["$defs"][schema["$ref"].rsplit("/", 1)[-1]], path, root)
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_type_ok(value, t) for t in types):
            return _message("type", path, value, schema)
    errors: List[str] = []
    checks = []
    if "enum" in schema and not any(_json_equal(value, e) for e in schema["enum"]):
        checks.append("enum")
    if _type_ok(value, "number"):
        checks += [k for k, bad in (("minimum", lambda m: value < m), ("maximum", lambda m: value > m),
                                    ("exclusiveMinimum", lambda m: value <= m)) if k in schema and bad(schema[k])]
    if isinstance(value, str):
        checks += [k for k, bad in (("minLength", lambda n: len(value) < n), ("pattern", lambda p: not re.search(p, value)))
                   if k in schema and bad(schema[k])]
    if isinstance(value, list):
        checks += [k for k, bad in (("minItems", lambda n: len(value) < n), ("maxItems", lambda n: len(value) > n))
                   if k in schema and bad(schema[k])]
        if "items" in schema:
            for i, item in enumerate(value):
                errors += _fallback_errors(item, schema["items"], f"{path}[{i}]", root)
    if isinstance(value, dict):
        if any(key not in value for key in schema.get("required", ())):
            checks.append("required")
        props = schema.get("properties", {})
        if schema.get("additionalProperties", True) is False and any(key not in props for key in value):
            checks.append("additionalProperties")
        for key, item in value.items():
            if key in props:
                errors += _fallback_errors(item, props[key], _field(path, key), root)
    for check in checks:
        errors += _message(check, path, value, schema)
    return errors


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b

