"""JSON Schema to llama.cpp GBNF, so that constrained generation always yields matching JSON.

Used for OpenAI's ``response_format`` (``json_object`` and ``json_schema``) and for
forced tool calls. Where a schema allows more than a grammar can say, the grammar
accepts a subset: every text it accepts validates, not every valid text is accepted.
Where a schema says what no grammar here can (the keywords below), the grammar is
looser there instead of failing: a coding agent sends every tool's schema with every
request, so one such keyword would otherwise fail them all. Only malformed schemas
(a 'type' that names no type, 'required' that is not a list of strings, ...) and
unsatisfiable ones raise ``SchemaError``; ``notes`` lists what was loosened.

What follows from that:

- Objects with ``properties`` (or ``required``) produce only those properties,
  required ones first, each group in the order of ``properties``. No other key is
  ever produced, whatever ``additionalProperties`` says (an absent one counts as
  false; OpenAI's strict mode demands false anyway). Objects with neither take any
  string keys, their values matching ``additionalProperties`` when it is a schema,
  and no keys when it is false.
- Arrays produce all of ``prefixItems`` (cut to ``maxItems``), then more items only
  where ``items`` allows them.
- ``integer`` bounds are exact. ``number`` bounds keep values within
  [ceil(minimum), floor(maximum)], with a fraction only below the top integer, and
  no exponent. Numbers have at most 16 integer and 16 fraction digits.
- Counts (``maxLength``, ``maxItems``, regex ``{m,n}``) above 2000 are lowered to
  2000, llama.cpp's limit (minimum counts above that: see below).
- ``pattern`` takes a regex subset, matched against the whole string: literals,
  classes, ``. \\d \\w \\s \\D \\W \\S``, groups, ``|`` and the usual quantifiers.
- ``format``: date, time, date-time and uuid; others are annotations and ignored.
- ``oneOf`` is treated as ``anyOf`` (branches are not checked for overlap), and
  ``enum``/``const`` values are checked against ``type`` only.
- Loosened, never enforced: ``not``, ``if``/``then``/``else``, ``multipleOf``,
  ``uniqueItems``, ``contains``/``minContains``/``maxContains``, ``dependentRequired``,
  ``dependentSchemas``, ``dependencies``, ``$dynamicRef``, ``$recursiveRef``. Objects
  without ``properties`` take keys matching ``propertyNames`` where it is expressible
  (any string otherwise), and values matching ``additionalProperties`` or any of the
  ``patternProperties`` schemas, whatever the key. Unknown keywords are ignored too.
- Parts that cannot be expressed accept any value of their ``type`` (any JSON value
  without one): a regex outside the subset (any string, lengths kept), ``$ref`` that is
  remote, an anchor, dangling or left-recursive, allOf branches that disagree on a
  keyword, ``anyOf`` with ``oneOf``, number bounds with no whole number between them
  or beyond 16 digits, minimum counts above 2000. ``pattern`` wins over ``minLength``
  and ``maxLength``; ``minProperties``/``maxProperties`` that the members contradict
  are dropped, and a property whose schema is ``false`` is never generated.
- Whitespace between tokens is one space, or a newline and up to 12 spaces or 6
  tabs, and none around the whole value.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

from shimmy.api.json_grammar_parts import (
    MAX_DIGITS,
    MAX_INT,
    MAX_REPEAT,
    SEPARATOR,
    RegexTranslator,
    comma_list,
    decimal_range,
    group,
    int_range,
    literal,
    repeat,
    seq,
)

Path = tuple[str | int, ...]

_BASE_RULES: dict[str, str] = {
    # Bounded: with unbounded whitespace small models can loop on spaces and newlines.
    "ws": r'( " " | "\n" ( " "{1,12} | "\t"{1,6} )? )?',
    "char": r'[^"\\\x00-\x1F\x7F] | "\\" ( ["\\/bfnrt] | "u" unicode-escape )',
    # No surrogate escapes: a lone one is not text, and a pair would count as two
    # characters here but as one for minLength and maxLength.
    "unicode-escape": r"[0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}",
    "string": r'"\"" char* "\""',
    "integer": r'"-"? ( "0" | [1-9] [0-9]{0,15} )',
    "fraction": r'"." [0-9]{1,16}',
    "number": r'integer fraction? ( [eE] [+-]? [0-9]{1,2} )?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": "object | array | string | number | boolean | null",
    "member": r'string ws ":" ws value',
    "object": r'"{" ws ( member ws ( "," ws member ws )* )? "}"',
    "array": r'"[" ws ( value ws ( "," ws value ws )* )? "]"',
    # Years 1000-2999 and no February 29th keep every date one that Python can parse.
    "date": r'[12] [0-9]{3} "-" ( ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | "1" [0-9] | "2" '
            r'[0-8] ) | ( "0" [13-9] | "1" [0-2] ) "-" ( "29" | "30" ) | ( "0" [13578] | "1" '
            r'[02] ) "-31" )',
    "time": r'( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,6} )? '
            r'( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )',
    "date-time": r'date "T" time',
    "uuid": r'[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
            r"[0-9a-fA-F]{12}",
    # A regex '.' inside a JSON string: any character but a newline.
    "regex-dot": r'[^"\\\x00-\x1F\x7F] | "\\" ["\\t]',
}

_TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
_TYPE_KEYWORDS: dict[str, set[str]] = {
    "object": {"properties", "required", "additionalProperties", "minProperties",
               "maxProperties", "unevaluatedProperties"},
    "array": {"items", "prefixItems", "additionalItems", "minItems", "maxItems",
              "unevaluatedItems"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
}
# Keywords no grammar here can express: ignored, so that a tool schema never fails a
# request; 'propertyNames' and 'patternProperties' still shape objects without 'properties'.
_LOOSENED = {"not", "if", "then", "else", "patternProperties", "dependentRequired",
             "dependentSchemas", "dependencies", "propertyNames", "contains", "minContains",
             "maxContains", "multipleOf", "uniqueItems", "$dynamicRef", "$recursiveRef"}
# Keywords that constrain nothing; everything not handled is ignored like these.
_ANNOTATIONS = {"title", "description", "default", "examples", "example", "$schema", "$id",
                "$comment", "$anchor", "deprecated", "readOnly", "writeOnly", "$defs",
                "definitions", "nullable"}
_LOWER_BOUNDS = {"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"}
_UPPER_BOUNDS = {"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"}
_FORMATS = {"date", "time", "date-time", "uuid"}

_QUOTE = r'"\""'
_RULE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_GBNF_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|\{[^}]*\}|([A-Za-z][\w-]*)')


class SchemaError(ValueError):
    """A malformed or unsatisfiable schema; the message starts with its JSON pointer."""

    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(f"{pointer}: {message}")
        self.pointer = pointer


class _Unsupported(SchemaError):
    """A part the grammar cannot express: it gets a looser rule instead of failing."""


def schema_to_gbnf(schema: dict[str, Any], notes: list[str] | None = None) -> str:
    """A grammar (root rule ``root``) for the JSON texts that match ``schema``.

    Each part of the schema that the grammar loosens is described in ``notes``.
    """
    rules = _Rules()
    return rules.render(_Converter(rules, schema, notes=notes).visit(schema, ()))


def tool_call_gbnf(tools: list[dict[str, Any]], name: str | None = None,
                   notes: list[str] | None = None) -> str:
    """A grammar for ``{"name": ..., "arguments": {...}}`` calling one of ``tools``.

    ``tools`` is OpenAI's list of ``{"type": "function", "function": {...}}``; with
    ``name``, only that tool may be called. Loosened parts are described in ``notes``.
    """
    rules = _Rules()
    calls = []
    for index, tool_name, parameters in _functions(tools):
        if name is not None and tool_name != name:
            continue
        base = f"#/tools/{index}/function/parameters"
        converter = _Converter(rules, parameters, base, root_hint=f"{tool_name}-arguments",
                               notes=notes)
        arguments = converter.visit(parameters, ())
        body = seq('"{" ws', literal('"name"'), 'ws ":" ws', literal(_dump(tool_name)),
                    'ws "," ws', literal('"arguments"'), 'ws ":" ws', arguments, 'ws "}"')
        calls.append(rules.add(f"{tool_name}-call", body))
    if not calls:
        raise SchemaError("#/tools", f"no tool is named {name!r}" if name else "no tools given")
    return rules.render(" | ".join(calls))


def _functions(tools: Any) -> Iterator[tuple[int, str, Any]]:
    """Each function tool's index in ``tools``, name and parameters schema."""
    if not isinstance(tools, list):
        raise SchemaError("#/tools", "'tools' must be a list")
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        pointer = f"#/tools/{index}"
        if not isinstance(tool, dict):
            raise SchemaError(pointer, "a tool must be an object")
        if tool.get("type", "function") != "function":
            continue
        if not isinstance(tool.get("function"), dict):
            raise SchemaError(pointer, "a function tool needs a 'function' object")
        function = tool["function"]
        tool_name = function.get("name")
        if not isinstance(tool_name, str) or not tool_name:
            raise SchemaError(f"{pointer}/function", "'name' must be a non-empty string")
        if tool_name in seen:
            raise SchemaError(f"{pointer}/function", f"the tool name {tool_name!r} is repeated")
        seen.add(tool_name)
        parameters = function.get("parameters")
        # Absent or empty parameters mean a function that takes no arguments.
        yield index, tool_name, parameters or {"type": "object", "properties": {}}


class _Rules:
    """The grammar's named rules; rules with the same body share one name."""

    def __init__(self) -> None:
        self.bodies: dict[str, str] = {"root": "", **_BASE_RULES}
        self._names = {body: name for name, body in _BASE_RULES.items()}

    def add(self, hint: str, body: str) -> str:
        if _RULE_NAME.fullmatch(body):
            return body
        if body not in self._names:
            self.define(self.reserve(hint), body)
        return self._names[body]

    def reserve(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9]+", "-", hint).strip("-").lower() or "rule"
        if not base[0].isalpha():
            base = f"r-{base}"
        name, suffix = base, 2
        while name in self.bodies:
            name, suffix = f"{base}-{suffix}", suffix + 1
        self.bodies[name] = ""
        return name

    def define(self, name: str, body: str) -> None:
        self.bodies[name] = body
        self._names.setdefault(body, name)

    def render(self, root: str) -> str:
        self.bodies["root"] = root
        order, pending = [], ["root"]
        while pending:
            name = pending.pop(0)
            if name in order:
                continue
            order.append(name)
            pending.extend(m.group(1) for m in _GBNF_TOKEN.finditer(self.bodies[name])
                           if m.group(1))
        return "".join(f"{name} ::= {self.bodies[name]}\n" for name in order)


class _Converter:
    """Turns one schema document into rules; ``$ref`` pointers resolve within it."""

    def __init__(self, rules: _Rules, document: Any, base: str = "#",
                 root_hint: str = "top", notes: list[str] | None = None) -> None:
        self.rules = rules
        self.notes = [] if notes is None else notes
        self.document = document
        self.base = base
        self.root_hint = root_hint
        self._refs: dict[Path, str] = {}
        # References followed since the last '{' or '['; meeting one again means a
        # left-recursive rule, which llama.cpp rejects.
        self._unguarded: list[Path] = []
        self._inlining: list[Path] = []  # references being merged into an allOf

    def visit(self, schema: Any, path: Path, name: str | None = None) -> str:
        """The rule (or literal) for ``schema``; ``name`` forces the rule's name.

        A part that the grammar cannot express accepts any value of its types instead.
        """
        try:
            return self._visit(schema, path, name)
        except _Unsupported as err:
            self.notes.append(f"{err}; any value of its type is accepted there")
            return self._emit(path, self._loose(schema, path), name)

    def _visit(self, schema: Any, path: Path, name: str | None) -> str:
        if schema is True:
            return self._emit(path, "value", name)
        if not isinstance(schema, dict):
            raise self.error(path, "a schema that allows nothing" if schema is False
                             else "a schema must be an object or a boolean")
        self._note_loosened(schema, path)
        if "$ref" in schema:
            return self._emit(path, self._ref(schema, path), name)
        if "allOf" in schema:
            return self.visit(self._merge_all(schema, path), path, name)
        if "anyOf" in schema or "oneOf" in schema:
            return self._emit(path, self._any_of(schema, path), name)
        if "const" in schema or "enum" in schema:
            return self._emit(path, self._literals(schema, path), name)
        kinds = self._types(schema, path)
        if not kinds:
            return self._emit(path, "value", name)
        bodies = [self._typed(kind, schema, path) for kind in kinds]
        return self._emit(path, " | ".join(bodies), name)

    def error(self, path: Path, message: str) -> SchemaError:
        return SchemaError(self.pointer(path), message)

    def unsupported(self, path: Path, message: str) -> SchemaError:
        return _Unsupported(self.pointer(path), message)

    def note(self, path: Path, message: str) -> None:
        self.notes.append(f"{self.pointer(path)}: {message}")

    def pointer(self, path: Path) -> str:
        return self.base + "".join(
            "/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)

    def _emit(self, path: Path, body: str, name: str | None) -> str:
        if name is None:
            return self.rules.add(self._hint(path), body)
        self.rules.define(name, body)
        return name

    def _hint(self, path: Path) -> str:
        words: list[str] = []
        index = 0
        while index < len(path):
            part = path[index]
            if part in ("properties", "$defs", "definitions") and index + 1 < len(path):
                words.append(str(path[index + 1]))
                index += 1
            elif part in ("items", "additionalItems"):
                words.append("item")
            elif part == "additionalProperties":
                words.append("value")
            elif part == "prefixItems" and index + 1 < len(path):
                words.append(f"item{path[index + 1]}")
                index += 1
            elif part in ("anyOf", "oneOf") and index + 1 < len(path):
                words.append(str(path[index + 1]))
                index += 1
            index += 1
        return "-".join(words[-2:]) or self.root_hint

    def _note_loosened(self, schema: dict[str, Any], path: Path) -> None:
        for key in sorted(_LOOSENED & schema.keys()):
            if key == "uniqueItems" and (schema[key] is False or schema.get("maxItems", 2) <= 1):
                continue
            if key == "propertyNames" and "properties" not in schema and not \
                    schema.get("required"):
                continue  # it shapes the keys of a map
            self.note(path, f"'{key}' is not enforced")

    def _loose(self, schema: Any, path: Path) -> str:
        """Any value of the schema's types (any value at all when it names none)."""
        if not isinstance(schema, dict):
            return "value"
        kinds = self._types(schema, path)
        branches = schema.get("allOf")
        if not kinds and isinstance(branches, list):  # the types all typed branches share
            typed = [set(self._types(branch, path)) for branch in branches
                     if isinstance(branch, dict) and "type" in branch]
            kinds = [kind for kind in _TYPES if typed and all(kind in t for t in typed)]
        return " | ".join(kinds) or "value"

    # ---- references and combinators

    def _ref(self, schema: dict[str, Any], path: Path) -> str:
        if _constraints(schema, "$ref"):
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.visit({"allOf": [{"$ref": schema["$ref"]}, rest]}, path)
        target = self._resolve(schema["$ref"], path)
        if target in self._unguarded:
            raise self.unsupported(target, "$ref refers back to itself without an object or "
                                           "array in between")
        if target not in self._refs:
            self._refs[target] = self.rules.reserve(self._hint(target) or "ref")
            self._unguarded.append(target)
            try:
                self.visit(self._at(target), target, self._refs[target])
            finally:
                self._unguarded.pop()
        return self._refs[target]

    def _resolve(self, ref: Any, path: Path) -> Path:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise self.unsupported(path, f"only local '$ref' ('#/...') is supported, not "
                                         f"{ref!r}")
        fragment = unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            raise self.unsupported(path, f"'$ref' anchors are not supported: {ref!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in fragment.split("/")[1:]]
        try:
            self._at(tuple(parts))
        except (KeyError, IndexError, ValueError, TypeError):
            raise self.unsupported(path, f"'$ref' {ref!r} points at nothing") from None
        return tuple(parts)

    def _at(self, path: Path) -> Any:
        node = self.document
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def _deref(self, schema: Any, path: Path) -> dict[str, Any]:
        """``schema`` with its top-level ``$ref`` and ``allOf`` merged in."""
        if isinstance(schema, dict) and "$ref" in schema:
            target = self._resolve(schema["$ref"], path)
            if target in self._inlining:
                raise self.unsupported(target, "'$ref' refers back to itself through 'allOf'")
            self._inlining.append(target)
            try:
                resolved = self._deref(self._at(target), target)
            finally:
                self._inlining.pop()
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self._merge(resolved, rest, path) if rest else resolved
        if schema is True:
            return {}
        if not isinstance(schema, dict):
            raise self.error(path, "a schema that allows nothing" if schema is False
                             else "a schema must be an object or a boolean")
        return self._merge_all(schema, path) if "allOf" in schema else schema

    def _merge_all(self, schema: dict[str, Any], path: Path) -> dict[str, Any]:
        branches = schema["allOf"]
        if not isinstance(branches, list) or not branches:
            raise self.error(path, "'allOf' must be a non-empty list")
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        closed = [merged] if merged.get("additionalProperties") is False else []
        for index, branch in enumerate(branches):
            branch_path = (*path, "allOf", index)
            branch = self._deref(branch, branch_path)
            merged = self._merge(merged, branch, branch_path)
            if branch.get("additionalProperties") is False:
                closed.append(branch)
        for branch in closed:  # its additionalProperties: false also holds for the others
            self._restrict(merged, set(branch.get("properties", {})), path)
        return merged

    def _restrict(self, merged: dict[str, Any], allowed: set[str], path: Path) -> None:
        for required in merged.get("required", []):
            if required not in allowed:
                raise self.error(path, f"'{required}' is required but another allOf branch "
                                       "forbids it")
        properties = merged.get("properties", {})
        merged["properties"] = {k: v for k, v in properties.items() if k in allowed}

    def _merge(self, first: dict[str, Any], second: dict[str, Any], path: Path) -> dict[str, Any]:
        merged = dict(first)
        for key, value in second.items():
            if key not in merged or merged[key] == value:
                merged[key] = value
            elif key in _ANNOTATIONS or key in _LOOSENED:
                continue
            elif key == "properties":
                merged[key] = _merge_properties(merged[key], value)
            elif key == "required":
                merged[key] = list(dict.fromkeys([*merged[key], *value]))
            elif key == "type":
                merged[key] = self._common_types(merged[key], value, path)
            elif key in _LOWER_BOUNDS | _UPPER_BOUNDS and _is_number(merged[key]) and \
                    _is_number(value):
                merged[key] = (max if key in _LOWER_BOUNDS else min)(merged[key], value)
            elif key == "enum" and isinstance(value, list):
                merged[key] = [v for v in merged[key] if v in value]
            elif key in ("items", "additionalProperties", "unevaluatedProperties"):
                merged[key] = _both(merged[key], value)
            else:
                raise self.unsupported(path, f"'{key}' differs between allOf branches")
        return merged

    def _common_types(self, first: Any, second: Any, path: Path) -> list[str]:
        left, right = set(_as_list(first)), set(_as_list(second))
        for kinds in (left, right):
            if "number" in kinds:
                kinds.add("integer")
        common = [kind for kind in _TYPES if kind in left & right]
        if not common:
            raise self.error(path, "the allOf branches share no 'type'")
        return common

    def _any_of(self, schema: dict[str, Any], path: Path) -> str:
        if "anyOf" in schema and "oneOf" in schema:
            raise self.unsupported(path, "'anyOf' and 'oneOf' together are not supported")
        key = "anyOf" if "anyOf" in schema else "oneOf"
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            raise self.error(path, f"'{key}' must be a non-empty list")
        siblings = {k: v for k, v in schema.items() if k != key and k not in _ANNOTATIONS}
        alternatives = []
        for index, branch in enumerate(branches):
            branch_path = (*path, key, index)
            if siblings:
                branch = self._merge(siblings, self._deref(branch, branch_path), branch_path)
            alternatives.append(self.visit(branch, branch_path))
        return " | ".join(dict.fromkeys(alternatives))

    def _literals(self, schema: dict[str, Any], path: Path) -> str:
        values = schema["enum"] if "const" not in schema else [schema["const"]]
        if not isinstance(values, list) or not values:
            raise self.error(path, "'enum' must be a non-empty list")
        if "const" in schema and "enum" in schema:
            values = [v for v in values if v in schema["enum"]]
        if "type" in schema:
            kinds = self._types(schema, path)
            values = [v for v in values if _json_type(v) in kinds
                      or (_json_type(v) == "integer" and "number" in kinds)]
        if not values:
            raise self.error(path, "no 'enum' or 'const' value has the allowed 'type'")
        try:
            return " | ".join(dict.fromkeys(literal(_dump(v)) for v in values))
        except ValueError as err:
            raise self.error(path, f"'enum' or 'const' holds a non-JSON value: {err}") from None

    # ---- types

    def _types(self, schema: dict[str, Any], path: Path) -> list[str]:
        declared = schema.get("type")
        if declared is None:
            kinds = [kind for kind, keys in _TYPE_KEYWORDS.items() if keys & schema.keys()]
        else:
            kinds = _as_list(declared)
            if not kinds or not all(kind in _TYPES for kind in kinds):
                raise self.error(path, f"'type' must be one of {', '.join(_TYPES)} or a "
                                       f"non-empty list of them, not {declared!r}")
        if "number" in kinds and "integer" in kinds:
            kinds.remove("integer")
        return list(dict.fromkeys(kinds))

    def _typed(self, kind: str, schema: dict[str, Any], path: Path) -> str:
        if kind == "string":
            return self._string(schema, path)
        if kind == "integer":
            return self._integer(schema, path)
        if kind == "number":
            return self._number(schema, path)
        if kind == "object":
            with self._inside_container():
                return self._object(schema, path)
        if kind == "array":
            with self._inside_container():
                return self._array(schema, path)
        return kind  # boolean, null

    @contextmanager
    def _inside_container(self) -> Iterator[None]:
        saved, self._unguarded = self._unguarded, []
        try:
            yield
        finally:
            self._unguarded = saved

    def _string(self, schema: dict[str, Any], path: Path) -> str:
        low, high = self._count_range(schema, "minLength", "maxLength", path)
        pattern = schema.get("pattern")
        if pattern is not None:
            try:
                translated = self._pattern(pattern, path)
            except _Unsupported as err:  # the lengths still hold
                self.notes.append(f"{err}; any string is accepted there")
            else:
                if low or high is not None:
                    self.note(path, "'minLength' and 'maxLength' are not enforced beside "
                                    "'pattern'")
                return seq(_QUOTE, translated, _QUOTE)
        if schema.get("format") in _FORMATS and not low and high is None:
            return seq(_QUOTE, schema["format"], _QUOTE)
        return seq(_QUOTE, repeat("char", low, high), _QUOTE)

    def _pattern(self, pattern: Any, path: Path) -> str:
        if not isinstance(pattern, str):
            raise self.error(path, "'pattern' must be a string")

        def fail(message: str) -> SchemaError:
            return self.unsupported(path, f"'pattern' {pattern!r}: {message}")

        return RegexTranslator(pattern, self.rules, f"{self._hint(path)}-pattern", fail).run()

    def _integer(self, schema: dict[str, Any], path: Path) -> str:
        low, high = self._bounds(schema, path)
        if low is None and high is None:
            return "integer"
        return int_range(-MAX_INT if low is None else low, MAX_INT if high is None else high)

    def _number(self, schema: dict[str, Any], path: Path) -> str:
        low, high = self._bounds(schema, path)
        if low is None and high is None:
            return "number"
        parts = []
        if high is None or high >= 0:
            parts.append(decimal_range(max(low or 0, 0), high))
        if low is None or low < 0:
            smallest = 0 if high is None or high >= 0 else -high
            parts.append(seq('"-"', group(decimal_range(smallest, None if low is None
                                                           else -low))))
        return " | ".join(parts)

    def _bounds(self, schema: dict[str, Any], path: Path) -> tuple[int | None, int | None]:
        """The least and greatest whole numbers within the schema's bounds."""
        lows, highs = [], []
        minimum, maximum = (self._numeric(schema, key, path) for key in ("minimum", "maximum"))
        exclusive_min, exclusive_max = (schema.get(k) for k in ("exclusiveMinimum",
                                                                 "exclusiveMaximum"))
        if minimum is not None:  # draft 4 spells exclusive bounds as booleans
            lows.append(math.floor(minimum) + 1 if exclusive_min is True else math.ceil(minimum))
        if maximum is not None:
            highs.append(math.ceil(maximum) - 1 if exclusive_max is True else math.floor(maximum))
        if not isinstance(exclusive_min, bool) and exclusive_min is not None:
            lows.append(math.floor(self._numeric(schema, "exclusiveMinimum", path)) + 1)
        if not isinstance(exclusive_max, bool) and exclusive_max is not None:
            highs.append(math.ceil(self._numeric(schema, "exclusiveMaximum", path)) - 1)
        low, high = max(lows, default=None), min(highs, default=None)
        if (low is not None and low > MAX_INT) or (high is not None and high < -MAX_INT):
            raise self.unsupported(path, f"bounds beyond {MAX_DIGITS} digits are not "
                                         "supported")
        if low is not None and high is not None and low > high:
            raise self.unsupported(path, "no whole number lies within the bounds (fractions "
                                         "are generated only below a whole number that does)")
        return (None if low is None else max(low, -MAX_INT),
                None if high is None else min(high, MAX_INT))

    def _numeric(self, schema: dict[str, Any], key: str, path: Path) -> float | None:
        value = schema.get(key)
        if value is not None and not (_is_number(value) and math.isfinite(value)):
            raise self.error(path, f"'{key}' must be a number")
        return value

    def _count_range(self, schema: dict[str, Any], min_key: str, max_key: str,
                     path: Path) -> tuple[int, int | None]:
        low, high = schema.get(min_key, 0), schema.get(max_key)
        for key, value in ((min_key, low), (max_key, high)):
            if value is not None and not (_is_number(value) and value >= 0 and
                                          float(value).is_integer()):
                raise self.error(path, f"'{key}' must be a non-negative integer")
        low = int(low)
        if low > MAX_REPEAT:
            raise self.unsupported(path, f"'{min_key}' above {MAX_REPEAT} is not supported")
        if high is None:
            return low, None
        if high < low:
            raise self.error(path, f"'{max_key}' is below '{min_key}'")
        return low, min(int(high), MAX_REPEAT)

    def _object(self, schema: dict[str, Any], path: Path) -> str:
        properties = schema.get("properties")
        required = schema.get("required", [])
        if properties is not None and not isinstance(properties, dict):
            raise self.error(path, "'properties' must be an object")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.error(path, "'required' must be a list of strings")
        extra = schema.get("additionalProperties", schema.get("unevaluatedProperties", True))
        if properties is None and not required:
            return self._map(schema, extra, path)
        # A property whose schema is false may not appear: it is not generated.
        members = {name: (sub, (*path, "properties", name))
                   for name, sub in (properties or {}).items()
                   if sub is not False or name in required}
        for name in required:
            if name not in members:
                if extra is False:
                    raise self.error(path, f"'{name}' is required but not allowed")
                members[name] = (extra, (*path, "additionalProperties"))
        self._check_property_counts(schema, len(set(required)), len(members), path)
        kvs = {name: self._member(name, *members[name]) for name in members}
        mandatory = [kv for name, kv in kvs.items() if name in required]
        optional = [kv for name, kv in kvs.items() if name not in required]
        return seq('"{" ws', self._members(mandatory, optional, path), '"}"')

    def _member(self, name: str, schema: Any, path: Path) -> str:
        value = self.visit(schema, path)
        body = seq(literal(_dump(name)), 'ws ":" ws', value)
        return self.rules.add(f"{self._hint(path)}-kv", body)

    def _members(self, mandatory: list[str], optional: list[str], path: Path) -> str:
        first = f" {SEPARATOR} ".join(f"{kv} ws" for kv in mandatory)
        if mandatory:
            return seq(first, *(f"( {SEPARATOR} {kv} ws )?" for kv in optional))
        if not optional:
            return ""
        # The first member present takes no comma: one alternative per possible first.
        tails = [""]
        for kv in reversed(optional[1:]):
            tails.insert(0, self.rules.add(f"{self._hint(path)}-rest",
                                           seq(f"( {SEPARATOR} {kv} ws )?", tails[0])))
        firsts = [seq(kv, "ws", tail) for kv, tail in zip(optional, tails, strict=True)]
        return f"( {' | '.join(firsts)} )?"

    def _check_property_counts(self, schema: dict[str, Any], n_required: int, n_all: int,
                               path: Path) -> None:
        low, high = self._count_range(schema, "minProperties", "maxProperties", path)
        if low > n_required:
            self.note(path, "'minProperties' above the number of required properties is "
                            "not enforced")
        if high is not None and high < n_all:
            self.note(path, "'maxProperties' below the number of properties is not enforced")

    def _map(self, schema: dict[str, Any], extra: Any, path: Path) -> str:
        """An object without 'properties': keys from 'propertyNames' (any string when
        it cannot be expressed), values from 'additionalProperties' or, loosely, from
        any of 'patternProperties' whatever the key."""
        values = [(extra, (*path, "additionalProperties"))] if extra is not False else []
        patterns = schema.get("patternProperties")
        if isinstance(patterns, dict):
            values += [(sub, (*path, "patternProperties", key)) for key, sub in patterns.items()]
        key = self._property_name(schema, path)
        if not values or key is None:
            return '"{" ws "}"'
        value = " | ".join(dict.fromkeys(self.visit(sub, at) for sub, at in values))
        value = self.rules.add(f"{self._hint(path)}-value", value)
        member = self.rules.add(f"{self._hint(path)}-member", seq(key, 'ws ":" ws', value))
        low, high = self._count_range(schema, "minProperties", "maxProperties", path)
        if low > 1:  # a repeated key would leave fewer properties than were generated
            self.note(path, "'minProperties' above 1 without 'properties' is lowered to 1")
            low = 1
        return seq('"{" ws', comma_list(member, low, high), '"}"')

    def _property_name(self, schema: dict[str, Any], path: Path) -> str | None:
        """The rule for a key under 'propertyNames', or None when no key is allowed."""
        names = schema.get("propertyNames", True)
        if names is False:
            return None
        if not isinstance(names, dict) or not _constraints(names):
            return "string"
        try:
            return self.visit({**names, "type": "string"}, (*path, "propertyNames"))
        except SchemaError as err:
            self.notes.append(f"{err}; any string is accepted as a key there")
            return "string"

    def _array(self, schema: dict[str, Any], path: Path) -> str:
        items, prefix, prefix_key = schema.get("items"), schema.get("prefixItems"), "prefixItems"
        items_key = "items"
        if isinstance(items, list):  # the tuple form before draft 2020-12
            prefix, prefix_key = items, "items"
            items, items_key = schema.get("additionalItems"), "additionalItems"
        if prefix is not None and not isinstance(prefix, list):
            raise self.error(path, "'prefixItems' must be a list")
        low, high = self._count_range(schema, "minItems", "maxItems", path)
        prefix = (prefix or [])[:high]
        if items is None:  # JSON Schema allows anything here: produce only what is needed
            items = not prefix or low > len(prefix)
        heads = [self.visit(p, (*path, prefix_key, i)) for i, p in enumerate(prefix)]
        rest = None if items is False else self.visit(items, (*path, items_key))
        if rest is None and low > len(prefix):
            raise self.error(path, "'minItems' asks for more items than the schema allows")
        if not heads:
            return seq('"["', "ws", comma_list(rest, low, high) if rest else "", '"]"')
        extra_high = None if high is None else high - len(heads)
        extras = repeat(f"( {SEPARATOR} {rest} ws )", max(low - len(heads), 0),
                         extra_high) if rest else ""
        return seq('"[" ws', f" {SEPARATOR} ".join(f"{h} ws" for h in heads), extras, '"]"')


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _constraints(schema: dict[str, Any], *handled: str) -> bool:
    return any(key not in _ANNOTATIONS and key not in handled for key in schema)


def _both(first: Any, second: Any) -> Any:
    if first is False or second is False:
        return False
    if first is True:
        return second
    return first if second is True else {"allOf": [first, second]}


def _merge_properties(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    merged = dict(first)
    for name, schema in second.items():
        merged[name] = {"allOf": [merged[name], schema]} if name in merged else schema
    return merged


JSON_VALUE_GBNF: str = schema_to_gbnf({"type": "object"})
"""Any JSON object: for ``response_format: {"type": "json_object"}``."""
