"""JSON Schema to GBNF: grammars parse in llama.cpp, accept what they should, and steer
the real model into schema-valid JSON."""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from shimmy.api.json_grammar import (
    JSON_VALUE_GBNF,
    SchemaError,
    schema_to_gbnf,
    tool_call_gbnf,
)

# ---- a small GBNF interpreter, to check which texts a grammar accepts

Node = tuple[Any, ...]


class Gbnf:
    """Parses the one-rule-per-line GBNF that the converter writes and matches whole texts."""

    def __init__(self, text: str) -> None:
        self.rules: dict[str, Node] = {}
        for line in text.splitlines():
            name, body = line.split(" ::= ", 1)
            assert name not in self.rules, f"rule {name} defined twice"
            self.rules[name] = _BodyParser(body).parse()
        self.text = ""
        self.memo: dict[tuple[str, int], frozenset[int]] = {}

    def accepts(self, text: str) -> bool:
        self.text, self.memo = text, {}
        return len(text) in self._ends(("ref", "root"), 0)

    def _ends(self, node: Node, pos: int) -> frozenset[int]:
        kind = node[0]
        if kind == "lit":
            return frozenset([pos + len(node[1])]) if self.text.startswith(node[1], pos) else _NONE
        if kind == "cls":
            if pos >= len(self.text):
                return _NONE
            point = ord(self.text[pos])
            inside = any(low <= point <= high for low, high in node[2])
            return frozenset([pos + 1]) if inside != node[1] else _NONE
        if kind == "ref":
            return self._rule(node[1], pos)
        if kind == "seq":
            positions = frozenset([pos])
            for item in node[1]:
                positions = frozenset().union(*(self._ends(item, p) for p in positions))
            return positions
        if kind == "alt":
            return frozenset().union(*(self._ends(branch, pos) for branch in node[1]))
        return self._repeat(node[1], node[2], node[3], pos)

    def _rule(self, name: str, pos: int) -> frozenset[int]:
        key = (name, pos)
        if key not in self.memo:
            self.memo[key] = _NONE  # a left-recursive call matches nothing
            self.memo[key] = self._ends(self.rules[name], pos)
        return self.memo[key]

    def _repeat(self, item: Node, low: int, high: int | None, pos: int) -> frozenset[int]:
        current, seen, result, count = {pos}, set(), set(), 0
        while True:
            if count >= low:
                result |= current
                fresh = current - seen
                if not fresh:
                    break
                seen |= current
                current = fresh  # positions met before were already expanded
            if count == high or not current:
                break
            current = set().union(*(self._ends(item, p) for p in current))
            count += 1
        return frozenset(result)


_NONE: frozenset[int] = frozenset()


class _BodyParser:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def parse(self) -> Node:
        node = self._alternatives()
        assert self.pos == len(self.text), f"trailing text in {self.text!r}"
        return node

    def _peek(self) -> str | None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else None

    def _alternatives(self) -> Node:
        branches = [self._sequence()]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._sequence())
        return ("alt", branches)

    def _sequence(self) -> Node:
        items = []
        while self._peek() not in (None, "|", ")"):
            items.append(self._postfix(self._atom()))
        return ("seq", items)

    def _atom(self) -> Node:
        char = self.text[self.pos]
        self.pos += 1
        if char == '"':
            chars = []
            while self.text[self.pos] != '"':
                chars.append(self._char())
            self.pos += 1
            return ("lit", "".join(chars))
        if char == "[":
            return self._class()
        if char == "(":
            node = self._alternatives()
            assert self._peek() == ")"
            self.pos += 1
            return node
        match = re.compile(r"[A-Za-z0-9-]+").match(self.text, self.pos - 1)
        assert match, f"unexpected {char!r} in {self.text!r}"
        self.pos = match.end()
        return ("ref", match.group())

    def _class(self) -> Node:
        negated = self.text[self.pos] == "^"
        self.pos += negated
        ranges = []
        while self.text[self.pos] != "]":
            low = high = ord(self._char())
            if self.text[self.pos] == "-" and self.text[self.pos + 1] != "]":
                self.pos += 1
                high = ord(self._char())
            ranges.append((low, high))
        self.pos += 1
        return ("cls", negated, ranges)

    def _char(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        if char != "\\":
            return char
        code = self.text[self.pos]
        self.pos += 1
        width = {"x": 2, "u": 4, "U": 8}.get(code)
        if width:
            self.pos += width
            return chr(int(self.text[self.pos - width:self.pos], 16))
        return {"t": "\t", "r": "\r", "n": "\n"}.get(code, code)

    def _postfix(self, node: Node) -> Node:
        while True:
            char = self._peek()
            if char in ("*", "+", "?"):
                self.pos += 1
                low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
            elif char == "{":
                match = re.compile(r"\{(\d+)(,(\d*))?\}").match(self.text, self.pos)
                assert match
                self.pos = match.end()
                low = int(match.group(1))
                high = low if match.group(2) is None else (
                    int(match.group(3)) if match.group(3) else None)
            else:
                return node
            node = ("rep", node, low, high)


class Sampler:
    """Random texts from a grammar, closing structures once deep so that each one ends."""

    CHARS = [chr(c) for c in range(0x20, 0x7F)] + list("é😀\u2028\t\n\x01")

    def __init__(self, grammar: Gbnf, seed: int) -> None:
        self.grammar, self.rng = grammar, random.Random(seed)
        self.sizes = dict.fromkeys(grammar.rules, math.inf)
        while any(self.sizes[name] > self._size(body) for name, body in grammar.rules.items()):
            self.sizes.update((name, self._size(body)) for name, body in grammar.rules.items())

    def text(self) -> str:
        return self._expand(("ref", "root"), 0)

    def _size(self, node: Node) -> float:
        """The length of the shortest text the node matches."""
        kind = node[0]
        if kind in ("lit", "cls"):
            return len(node[1]) if kind == "lit" else 1
        if kind == "ref":
            return self.sizes[node[1]]
        if kind in ("seq", "alt"):
            sizes = [self._size(item) for item in node[1]]
            return sum(sizes) if kind == "seq" else min(sizes)
        return node[2] * self._size(node[1]) if node[2] else 0

    def _expand(self, node: Node, depth: int) -> str:
        kind, deep = node[0], depth > 30
        if kind == "lit":
            return node[1]
        if kind == "cls":
            return self._char(node[1], node[2])
        if kind == "ref":
            return self._expand(self.grammar.rules[node[1]], depth + 1)
        if kind == "seq":
            return "".join(self._expand(item, depth) for item in node[1])
        if kind == "alt":
            branch = min(node[1], key=self._size) if deep else self.rng.choice(node[1])
            return self._expand(branch, depth)
        low, high = node[2], node[3]
        count = low if deep else self.rng.randint(low, min(high if high is not None else low + 3,
                                                           low + 3))
        return "".join(self._expand(node[1], depth + 1) for _ in range(count))

    def _char(self, negated: bool, ranges: list[tuple[int, int]]) -> str:
        if negated:
            allowed = [c for c in self.CHARS
                       if not any(low <= ord(c) <= high for low, high in ranges)]
            return self.rng.choice(allowed)
        low, high = self.rng.choice(ranges)
        return chr(self.rng.randint(low, min(high, low + 500)))


def accepts(gbnf: str, value: Any, **dump: Any) -> bool:
    """Whether the grammar accepts ``value`` written as JSON (``dump``: json.dumps options)."""
    return Gbnf(gbnf).accepts(json.dumps(value, ensure_ascii=False, **dump))


def test_interpreter_follows_repetition_and_recursion() -> None:
    grammar = Gbnf('root ::= "(" root ")" | "x"{2,3} [^a-c]?\n')
    assert grammar.accepts("((xx))") and grammar.accepts("xxxd")
    assert not grammar.accepts("((xx)") and not grammar.accepts("xxxxa")


# ---- schemas used below

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 16},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10},
                           "zip": {"type": "string", "maxLength": 5}},
            "required": ["city"],
        },
    },
    "required": ["name", "age"],
}
NUMBERS = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9},
           "minItems": 2, "maxItems": 4}
COLOR = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "size": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, {"type": "null"}]},
    },
    "required": ["color", "size"],
    "additionalProperties": False,
}
TREE = {
    "$ref": "#/$defs/node",
    "$defs": {"node": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 6},
                       "children": {"type": "array", "items": {"$ref": "#/$defs/node"},
                                    "maxItems": 2}},
        "required": ["name", "children"],
    }},
}
LABEL = {
    "type": "object",
    "properties": {"word": {"type": "string", "maxLength": 5},
                   "code": {"type": "string", "pattern": r"^[A-Z]{3}-\d{2}$"},
                   "day": {"type": "string", "format": "date"}},
    "required": ["word", "code", "day"],
}
KITCHEN_SINK = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "at": {"type": "string", "format": "date-time"},
        "time": {"type": "string", "format": "time"},
        "score": {"type": "number", "minimum": -1.5, "exclusiveMaximum": 10},
        "ratio": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "count": {"type": "integer", "exclusiveMinimum": -20, "maximum": 2000},
        "big": {"type": "integer", "minimum": 5},
        "tuple": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}],
                  "items": {"type": "number"}, "maxItems": 4},
        "free": {"type": "object"},
        "ints": {"type": "object", "additionalProperties": {"type": "integer"},
                 "maxProperties": 3},
        "none": {"type": "object", "additionalProperties": False},
        "pick": {"oneOf": [{"$ref": "#/definitions/point"}, {"const": [1, {"a": None}]}]},
        "both": {"allOf": [{"$ref": "#/definitions/point"},
                           {"properties": {"z": {"type": "number"}}, "required": ["z"]}]},
        "anything": {},
        "nullable": {"type": ["string", "null"], "maxLength": 3},
        "regex": {"type": "string", "pattern": r"^(ab|c\.d)+[^\s\"]{0,3}\\\w*?$"},
        "bounded": {"type": "string", "minLength": 2, "maxLength": 100000},
    },
    "definitions": {"point": {"type": "object", "properties": {"x": {"type": "number"},
                                                               "y": {"type": "number"}},
                              "required": ["x", "y"]}},
}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "maxLength": 12},
                                      "unit": {"enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add", "description": "Adds two numbers",
        "parameters": {"type": "object",
                       "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                      "b": {"type": "integer", "minimum": -99, "maximum": 99}},
                       "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "ping"}},
    {"type": "code_interpreter"},
]
PARAMETERS = {tool["function"]["name"]: tool["function"].get("parameters", {})
              for tool in TOOLS if "function" in tool}
ALL_SCHEMAS = {"person": PERSON, "numbers": NUMBERS, "color": COLOR, "tree": TREE,
               "label": LABEL, "kitchen-sink": KITCHEN_SINK}


# ---- the real model

@pytest.fixture(scope="module")
def sampler() -> Any:
    from shimmy.engine import library

    return library.load()


@pytest.fixture(scope="module")
def model(sampler: Any, model_path: Path) -> Any:
    return sampler.Model(str(model_path))


@pytest.fixture(scope="module")
def engine(sampler: Any, model: Any) -> Any:
    # One thread: ggml's spinning barrier makes two threads slow on a busy 2-core box.
    return sampler.BatchEngine(model, 1024, 1, 1, 256)


def generate(engine: Any, model: Any, gbnf: str, prompt: str, seed: int,
             max_tokens: int = 200) -> tuple[str, str]:
    sampling = {"temperature": 0.8, "seed": seed, "grammar": gbnf}
    engine.start(0, model.tokenize(prompt, True, False), sampling, [], max_tokens)
    pieces, finish = [], None
    while finish is None:
        for event in engine.step():
            _slot, text, finish = event[:3]
            pieces.append(text)
    return "".join(pieces), finish


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def validate(instance: Any, schema: dict[str, Any]) -> None:
    validator(schema).validate(instance)


ALL_GRAMMARS = {
    "json-object": JSON_VALUE_GBNF,
    **{name: schema_to_gbnf(schema) for name, schema in ALL_SCHEMAS.items()},
    "tools": tool_call_gbnf(TOOLS),
    "one-tool": tool_call_gbnf(TOOLS, name="add"),
}


@pytest.mark.parametrize("name", ALL_GRAMMARS)
def test_grammar_parses_in_llama_cpp(model: Any, name: str) -> None:
    assert model.grammar_error(ALL_GRAMMARS[name]) is None, ALL_GRAMMARS[name]


@pytest.mark.parametrize("name", ALL_GRAMMARS)
def test_rule_names_are_valid_and_bodies_shared(name: str) -> None:
    lines = ALL_GRAMMARS[name].splitlines()
    names = [line.split(" ::= ")[0] for line in lines]
    bodies = [line.split(" ::= ", 1)[1] for line in lines]
    assert names[0] == "root"
    assert all(re.fullmatch(r"[a-zA-Z0-9-]+", n) for n in names)
    assert len(set(bodies)) == len(bodies), "identical rules were not shared"


GENERATION = [
    ("person", PERSON, "Return a JSON object describing a person:", [0]),
    ("numbers", NUMBERS, "Return a JSON array of small numbers:", [0, 3]),
    ("color", COLOR, "Return a JSON object with a color and a size:", [0, 2]),
    ("tree", TREE, 'A JSON tree: {"name": "a", "children": [{"name": "b", "children": []}]}\n'
                   "Another JSON tree:", [2]),
]


@pytest.mark.parametrize(("schema", "prompt", "seed"), [
    pytest.param(schema, prompt, seed, id=f"{name}-{seed}")
    for name, schema, prompt, seeds in GENERATION for seed in seeds])
def test_generation_matches_schema(engine: Any, model: Any, schema: dict[str, Any], prompt: str,
                                   seed: int) -> None:
    gbnf = schema_to_gbnf(schema)
    text, finish = generate(engine, model, gbnf, prompt, seed)
    assert finish == "stop", text
    validate(json.loads(text), schema)
    assert Gbnf(gbnf).accepts(text)  # the interpreter agrees with llama.cpp


def test_json_object_mode_generates_an_object(engine: Any, model: Any) -> None:
    text, finish = generate(engine, model, JSON_VALUE_GBNF,
                            'Reply with JSON. {"ok": true} is an example. Now a new one:', 1)
    assert finish == "stop", text
    assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(("name", "prompt", "seed"), [
    (None, 'Call a tool as {"name": ..., "arguments": ...} to get the weather in Paris:', 0),
    ("add", 'Call a tool as {"name": ..., "arguments": ...} to add 2 and 3:', 0),
])
def test_generated_tool_call_matches_its_tool(engine: Any, model: Any, name: str | None,
                                              prompt: str, seed: int) -> None:
    text, finish = generate(engine, model, tool_call_gbnf(TOOLS, name), prompt, seed)
    assert finish == "stop", text
    call = json.loads(text)
    assert set(call) == {"name", "arguments"}
    assert call["name"] == name if name else call["name"] in PARAMETERS
    validate(call["arguments"], PARAMETERS[call["name"]] or {"type": "object",
                                                             "maxProperties": 0})


# ---- what the grammars accept


@pytest.mark.parametrize("name", [*ALL_SCHEMAS, "json-object"])
def test_every_text_a_grammar_allows_validates(name: str) -> None:
    check = validator(ALL_SCHEMAS.get(name, {"type": "object"}))
    grammar = Gbnf(ALL_GRAMMARS[name])
    sampler = Sampler(grammar, seed=len(name))
    for _ in range(100):
        text = sampler.text()
        assert grammar.accepts(text)
        check.validate(json.loads(text))


def test_every_tool_call_a_grammar_allows_validates() -> None:
    sampler = Sampler(Gbnf(ALL_GRAMMARS["tools"]), seed=1)
    checks = {name: validator(schema or {"maxProperties": 0})
              for name, schema in PARAMETERS.items()}
    names = set()
    for _ in range(100):
        call = json.loads(sampler.text())
        names.add(call["name"])
        checks[call["name"]].validate(call["arguments"])
    assert names == set(PARAMETERS)


def test_json_object_mode_accepts_objects_only() -> None:
    value = {"a": [1, -2.5e3, True, None, "x\"\\\n\u00e9\U0001F600"], "": {"b": {}}}
    for dump in ({}, {"indent": 2}, {"indent": "\t"}, {"separators": (",", ":")}):
        assert accepts(JSON_VALUE_GBNF, value, **dump)
    grammar = Gbnf(JSON_VALUE_GBNF)
    assert grammar.accepts(r'{"u": "\u00e9\/"}')
    for text in ["[]", '"x"', "1", '{"a": 1,}', '{"a" 1}', '{"a": "\x01"}', r'{"a": "\q"}',
                 r'{"a": "\ud800"}', '{"a": 01}', ' {"a": 1}', '{"a": 1} ', "{   }",
                 '{\n\n"a": 1}', "{\n" + " " * 13 + "}"]:
        assert not grammar.accepts(text), text


@pytest.mark.parametrize(("low", "high"), [(0, 120), (-20, 35), (-105, -7), (7, 7), (0, 0),
                                           (-1, 1), (15, 1234), (-3000, 0)])
def test_integer_bounds_are_exact(model: Any, low: int, high: int) -> None:
    gbnf = schema_to_gbnf({"type": "integer", "minimum": low, "maximum": high})
    assert model.grammar_error(gbnf) is None
    grammar = Gbnf(gbnf)
    for value in range(low - 150, high + 150):
        assert grammar.accepts(str(value)) == (low <= value <= high), value
    assert not grammar.accepts("-0") and not grammar.accepts("007")


def test_integer_with_one_bound_and_exclusive_bounds() -> None:
    above = Gbnf(schema_to_gbnf({"type": "integer", "exclusiveMinimum": 9}))
    assert [v for v in range(-20, 20) if above.accepts(str(v))] == list(range(10, 20))
    assert above.accepts("9" * 16) and not above.accepts("1" * 17)
    below = Gbnf(schema_to_gbnf({"type": "integer", "maximum": 2.5,
                                 "exclusiveMaximum": 3}))
    assert [v for v in range(-20, 20) if below.accepts(str(v))] == list(range(-20, 3))
    draft4 = Gbnf(schema_to_gbnf({"type": "integer", "minimum": 0, "exclusiveMinimum": True}))
    assert not draft4.accepts("0") and draft4.accepts("1")


def test_number_bounds_hold() -> None:
    schema = {"type": "number", "minimum": -1.5, "exclusiveMaximum": 10}
    grammar = Gbnf(schema_to_gbnf(schema))
    inside = ["-1", "-0.99", "0", "0.5", "8.75", "9", "-0"]
    # -1.5 and 9.5 are valid, but bounds are kept to whole numbers, fractions below the top.
    outside = ["-1.5", "9.5", "-2", "10", "10.0", "9e1", "1.", ".5", "12"]
    assert all(grammar.accepts(text) for text in inside)
    assert not any(grammar.accepts(text) for text in outside)
    for text in inside:
        validate(json.loads(text), schema)
    unit = Gbnf(schema_to_gbnf({"type": "number", "minimum": 0, "maximum": 1}))
    assert unit.accepts("0.25") and unit.accepts("1") and not unit.accepts("1.5")
    assert not unit.accepts("-0.1")


def test_plain_numbers_are_json_numbers() -> None:
    grammar = Gbnf(schema_to_gbnf({"type": "number"}))
    for text in ["0", "-0", "12.5", "1e5", "-3.25E-12"]:
        assert grammar.accepts(text), text
    for text in ["01", "+1", "1.", ".1", "1e", "NaN", "Infinity", "1" * 17]:
        assert not grammar.accepts(text), text


def test_strings_escape_and_count_characters() -> None:
    gbnf = schema_to_gbnf({"type": "string", "minLength": 2, "maxLength": 3})
    grammar = Gbnf(gbnf)
    for value in ["ab", '"\\é', "\n\t\u0001", "😀😀"]:
        assert accepts(gbnf, value), value
    assert grammar.accepts(json.dumps("é\u0001\x7f"))  # an escape is one character
    assert not grammar.accepts(json.dumps("😀"))  # surrogate pairs are left out
    for value in ["a", "abcd", "\\\\\\\\"]:  # 4 backslashes, written as 8
        assert not accepts(gbnf, value)
    assert not grammar.accepts('"a\nb"')  # a raw control character


@pytest.mark.parametrize("value", ['say "hi"', "back\\slash", "tab\tnew\nline", "ünï😀",
                                   "\u2028", "\x7f", 'mix \\" of "\\ all'])
def test_enum_and_const_strings_are_escaped(model: Any, value: str) -> None:
    for schema in ({"enum": [value, "other"]}, {"const": value}):
        gbnf = schema_to_gbnf(schema)
        assert model.grammar_error(gbnf) is None
        assert accepts(gbnf, value)
        assert not accepts(gbnf, value + "x")
        assert all(" ::= " in line for line in gbnf.splitlines())  # nothing raw breaks a line


def test_enum_of_mixed_values_keeps_only_allowed_types() -> None:
    gbnf = schema_to_gbnf({"type": ["integer", "null"], "enum": [1, "1", None, 2.5, True]})
    assert accepts(gbnf, 1) and accepts(gbnf, None)
    assert not accepts(gbnf, "1") and not accepts(gbnf, 2.5) and not accepts(gbnf, True)
    const = schema_to_gbnf({"const": {"a": [1, {"b": None}], "c\"": "é"}})
    assert accepts(const, {"a": [1, {"b": None}], "c\"": "é"}, separators=(",", ":"))


def test_property_names_are_escaped(model: Any) -> None:
    key = 'we"ird\\key ü\n😀'
    schema = {"type": "object", "properties": {key: {"type": "boolean"}, "ok": {"type": "null"}},
              "required": [key]}
    gbnf = schema_to_gbnf(schema)
    assert model.grammar_error(gbnf) is None
    assert accepts(gbnf, {key: True}) and accepts(gbnf, {key: False, "ok": None})
    assert not accepts(gbnf, {"ok": None})


def test_object_members_required_first_then_optional_in_order() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"},
                                               "c": {"type": "integer"}, "d": {"type": "integer"}},
              "required": ["c", "a"]}
    grammar = Gbnf(schema_to_gbnf(schema))
    for chosen in itertools.chain.from_iterable(
            itertools.combinations("bd", n) for n in range(3)):
        assert grammar.accepts(json.dumps(dict.fromkeys(["a", "c", *chosen], 1))), chosen
    assert not grammar.accepts(json.dumps({"a": 1}))
    assert not grammar.accepts(json.dumps({"a": 1, "c": 1, "e": 1}))  # never extra keys
    assert not grammar.accepts(json.dumps({"a": 1, "c": 1, "d": 1, "b": 1}))


def test_object_with_optional_members_only() -> None:
    schema = {"type": "object", "properties": {k: {"type": "null"} for k in "xyz"},
              "additionalProperties": True}
    grammar = Gbnf(schema_to_gbnf(schema))
    for n in range(4):
        for chosen in itertools.combinations("xyz", n):
            assert grammar.accepts(json.dumps(dict.fromkeys(chosen))), chosen
    assert not grammar.accepts('{"x": null,}') and not grammar.accepts('{, "x": null}')


def test_free_objects_and_maps() -> None:
    sink = schema_to_gbnf(KITCHEN_SINK)
    base = {"free": {"any": [1, {"x": None}]}, "ints": {"a": 1, "b": -2}, "none": {}}
    assert accepts(sink, base)
    for bad in ({"ints": {"a": "1"}}, {"ints": {"a": 1, "b": 2, "c": 3, "d": 4}},
                {"none": {"a": 1}}):
        assert not accepts(sink, bad), bad


def test_arrays_respect_counts_and_prefixes() -> None:
    numbers = Gbnf(schema_to_gbnf(NUMBERS))
    for n in range(7):
        assert numbers.accepts(json.dumps([3] * n)) == (2 <= n <= 4)
    assert not numbers.accepts("[3, 0]")
    sink = schema_to_gbnf(KITCHEN_SINK)
    assert accepts(sink, {"tuple": ["s", True]}) and accepts(sink, {"tuple": ["s", False, 1, 2]})
    assert not accepts(sink, {"tuple": ["s"]}) and not accepts(sink, {"tuple": [True, "s"]})
    assert not accepts(sink, {"tuple": ["s", True, 1, 2, 3]})
    draft7_tuple = schema_to_gbnf({"type": "array", "items": [{"const": 1}],
                                   "additionalItems": False})
    assert accepts(draft7_tuple, [1]) and not accepts(draft7_tuple, [1, 1])


def test_any_of_all_of_and_refs() -> None:
    sink = schema_to_gbnf(KITCHEN_SINK)
    assert accepts(sink, {"pick": {"x": 1, "y": 2}})
    assert accepts(sink, {"pick": [1, {"a": None}]}, separators=(",", ":"))
    assert not accepts(sink, {"pick": {"x": 1}})
    assert accepts(sink, {"both": {"x": 1, "y": 2, "z": 3}})
    assert not accepts(sink, {"both": {"x": 1, "y": 2}})
    assert accepts(sink, {"anything": [None, {"k": "v"}]}) and accepts(sink, {"nullable": None})
    color = schema_to_gbnf(COLOR)
    assert accepts(color, {"color": "red", "size": None})
    assert not accepts(color, {"color": "pink", "size": 1})


def test_recursive_refs_nest() -> None:
    grammar = Gbnf(schema_to_gbnf(TREE))
    leaf = {"name": "c", "children": []}
    tree = {"name": "a", "children": [{"name": "b", "children": [leaf, leaf]}, leaf]}
    assert grammar.accepts(json.dumps(tree)) and grammar.accepts(json.dumps(tree, indent=2))
    assert not grammar.accepts(json.dumps({"name": "a", "children": [leaf, leaf, leaf]}))
    linked = {"$defs": {"item": {"type": "object", "properties": {"next": {
        "anyOf": [{"$ref": "#/$defs/item"}, {"type": "null"}]}}, "required": ["next"]}},
        "$ref": "#/$defs/item"}
    chain = Gbnf(schema_to_gbnf(linked))
    assert chain.accepts('{"next": {"next": {"next": null}}}')
    root_ref = schema_to_gbnf({"type": "array", "items": {"$ref": "#"}, "maxItems": 2})
    assert accepts(root_ref, [[], [[]]]) and not accepts(root_ref, [1])


@pytest.mark.parametrize(("pattern", "good", "bad"), [
    (r"^[A-Z]{3}-\d{2}$", ["ABC-12"], ["AB-12", "ABC-123", "abc-12"]),
    (r"^(ab|c\.d)+$", ["ab", "c.dab"], ["", "cxd", "abc"]),
    (r'^[^\s"]{0,3}\\\w*?$', ["\\", "x+!\\_a1"], ['"\\', "a b\\", "abcd\\", "é\\"]),
    (r"^[^a]$", ["é", '"', "\\"], ["a", "\n"]),
    (r"^a.c$", ["abc", 'a"c', "a\\c", "a\tc"], ["a\nc", "ac"]),
    (r"^[\u00e9\x41-\x43\]\-]+$", ["éAB]-"], ["D"]),
    (r"\D\S\W", ["a-!"], ["1-!", "a !", "a-b"]),
    (r"(?:x|(?P<name>y)){2}z?", ["xy", "yyz"], ["x", "xyzz"]),
    (r"^$", [""], ["a"]),
    (r"^[ -~]{2}$", ['"\\', "  "], ["é!"]),
    # Nested counts multiply in llama.cpp unless the inner part is a rule of its own.
    (r"^(a{1,50}b){1,100}$", ["ab" * 100, "a" * 50 + "b"], ["a" * 51 + "b", "b"]),
])
def test_pattern_subset(model: Any, pattern: str, good: list[str], bad: list[str]) -> None:
    gbnf = schema_to_gbnf({"type": "string", "pattern": pattern})
    assert model.grammar_error(gbnf) is None
    for value in good:
        assert re.search(pattern, value), value
        assert accepts(gbnf, value), value
    for value in bad:
        assert not accepts(gbnf, value), value


def test_formats() -> None:
    sink = schema_to_gbnf(KITCHEN_SINK)
    good = {"id": "123e4567-e89b-12d3-a456-426614174000", "at": "2024-02-28T23:59:59.5+01:00",
            "time": "12:00:00Z"}
    assert accepts(sink, good)
    validate(good, KITCHEN_SINK)
    for bad in ({"id": "123e4567"}, {"at": "2024-02-30T00:00:00Z"}, {"time": "24:00:00Z"},
                {"at": "2024-01-01 00:00:00Z"}):
        assert not accepts(sink, bad), bad
    unknown = schema_to_gbnf({"type": "string", "format": "email"})
    assert accepts(unknown, "not an email")


def test_counts_above_llama_cpp_limit_are_lowered(model: Any) -> None:
    gbnf = schema_to_gbnf({"type": "string", "maxLength": 100000})
    assert "char{0,2000}" in gbnf
    items = schema_to_gbnf({"type": "array", "items": {"type": "string", "maxLength": 1999},
                            "minItems": 3, "maxItems": 5000})
    assert model.grammar_error(items) is None
    assert accepts(items, ["a", "b", "c" * 1999]) and not accepts(items, ["a", "b"])


# ---- errors


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "object", "properties": {"age": {"type": "int"}}},
     "#/properties/age: 'type' must be"),
    ({"properties": {"x": 3}}, "#/properties/x: a schema must be"),
    ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "#/allOf/1: the allOf branches"),
    ({"allOf": [{"properties": {"a": {}}, "additionalProperties": False},
                {"required": ["b"]}]}, "#: 'b' is required but another allOf branch"),
    ({"type": "string", "maxLength": -1}, "'maxLength' must be a non-negative integer"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "'maxItems' is below 'minItems'"),
    ({"type": "array", "prefixItems": [{}], "items": False, "minItems": 2}, "'minItems' asks"),
    ({"type": "object", "required": ["a"], "additionalProperties": False},
     "'a' is required but not allowed"),
    ({"enum": []}, "'enum' must be a non-empty list"),
    ({"type": "string", "enum": [1, 2]}, "no 'enum' or 'const' value"),
    ({"const": float("nan")}, "non-JSON value"),
    ({"anyOf": [], "type": "string"}, "'anyOf' must be a non-empty list"),
])
def test_schema_errors_name_the_pointer(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError) as caught:
        schema_to_gbnf(schema)
    assert message in str(caught.value)
    assert str(caught.value).startswith("#")


# ---- what the grammar cannot express is loosened, never refused


LOOSENED = [
    # (schema, a note's words, JSON values the grammar accepts, values it refuses)
    ({"properties": {"a": {"not": {"type": "string"}}}}, "#/properties/a: 'not' is not",
     [{"a": "s"}, {"a": [1]}], []),
    ({"type": "array", "items": {"type": "integer", "multipleOf": 2}},
     "#/items: 'multipleOf' is not", [[1, 2]], [["2"]]),
    ({"type": "array", "uniqueItems": True, "items": {"type": "boolean"}},
     "#: 'uniqueItems' is not", [[True, True]], [[1]]),
    ({"properties": {"a/b~c": {"if": {}, "then": {"type": "null"}}}},
     "#/properties/a~1b~0c: 'if' is not", [{"a/b~c": 1}], []),
    ({"type": "object", "properties": {"a": {"type": "integer"}},
      "dependentRequired": {"a": ["b"]}, "dependentSchemas": {}},
     "'dependentRequired' is not", [{"a": 1}, {}], [{"a": "1"}]),
    ({"type": "array", "contains": {"const": 1}, "minContains": 1, "maxItems": 2},
     "'contains' is not", [[], [2, 3]], [[1, 2, 3]]),
    ({"$dynamicRef": "#meta"}, "'$dynamicRef' is not", [1, {"a": None}], []),
    ({"type": "object", "propertyNames": {"pattern": "^[a-z]+$"}},
     "", [{"ab": 1, "c": [None]}, {}], [{"A": 1}, {"a1": 1}]),
    ({"type": "object", "propertyNames": {"enum": ["x", "y"]},
      "additionalProperties": {"type": "integer"}}, "", [{"x": 1, "y": 2}], [{"z": 1}]),
    ({"type": "object", "propertyNames": {"pattern": "(?=a)"}},
     "lookarounds", [{"b": 1}], []),
    ({"type": "object", "propertyNames": False}, "", [{}], [{"a": 1}]),
    ({"type": "object", "patternProperties": {"^n": {"type": "integer"}},
      "additionalProperties": False}, "'patternProperties' is not",
     [{"n1": 1, "x": 2}], [{"n": "s"}]),
    ({"$ref": "https://example.com/schema"}, "#: only local '$ref'", [1, "s"], []),
    ({"$ref": "#/$defs/missing", "type": "string"}, "points at nothing", ["s"], [1]),
    ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
     "#/$defs/a: $ref refers", [None, [1]], []),
    ({"$defs": {"a": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/a"}]}},
      "properties": {"p": {"$ref": "#/$defs/a"}}}, "#/$defs/a: $ref refers", [{"p": 1}], []),
    ({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
     "#/$defs/a: '$ref' refers back to itself through 'allOf'", [True], []),
    ({"type": "string", "pattern": "^(?=a)a$", "maxLength": 2}, "lookarounds",
     ["", "zz"], ["zzz", 1]),
    ({"type": "string", "pattern": r"(a)\1"}, "'\\1' is not supported", ["b"], []),
    ({"type": "string", "pattern": "a^b"}, "anchors are supported only", ["x"], []),
    ({"type": "string", "pattern": "(a"}, "missing ')'", ["x"], []),
    ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "'maxLength' are not",
     ["aaaa"], ["b"]),
    ({"allOf": [{"type": "string", "format": "date"}, {"format": "uuid"}]},
     "'format' differs", ["x"], [1]),
    ({"type": "integer", "anyOf": [{"minimum": 1}], "oneOf": [{"maximum": 0}]},
     "'anyOf' and 'oneOf' together", [5, -5], ["5"]),
    ({"type": "number", "minimum": 0.2, "maximum": 0.8}, "#: no whole number", [0.5, 7], []),
    ({"type": "integer", "minimum": 10**20}, "bounds beyond 16 digits", [1], [1.5]),
    ({"type": "string", "minLength": 5000}, "'minLength' above 2000", ["s"], []),
    ({"type": "object", "minProperties": 2}, "'minProperties' above 1", [{"a": 1}], []),
    ({"type": "object", "properties": {"a": {"type": "null"}, "b": {"type": "null"}},
      "maxProperties": 1}, "'maxProperties' below", [{"a": None, "b": None}], []),
    ({"type": "object", "properties": {"a": {"type": "null"}}, "minProperties": 2},
     "'minProperties' above the number", [{}], []),
    ({"properties": {"x": False, "y": {"type": "null"}}}, "", [{"y": None}, {}],
     [{"x": None}]),
]


@pytest.mark.parametrize(("schema", "note", "good", "bad"), LOOSENED,
                         ids=[str(i) for i in range(len(LOOSENED))])
def test_what_cannot_be_expressed_is_loosened(schema: dict[str, Any], note: str,
                                              good: list[Any], bad: list[Any]) -> None:
    notes: list[str] = []
    gbnf = schema_to_gbnf(schema, notes)
    assert any(note in line and line.startswith("#") for line in notes) if note else \
        not any("loosened" in line for line in notes), notes
    for value in good:
        assert accepts(gbnf, value), (value, gbnf)
    for value in bad:
        assert not accepts(gbnf, value), (value, gbnf)


def test_loosened_grammars_parse_in_llama_cpp(model: Any) -> None:
    for schema, _note, _good, _bad in LOOSENED:
        gbnf = schema_to_gbnf(schema)
        assert model.grammar_error(gbnf) is None, (schema, gbnf)


def test_loosened_keyword_in_one_tool_keeps_the_others_exact() -> None:
    tools = [*TOOLS, {"type": "function", "function": {
        "name": "f", "parameters": {"properties": {"x": {"not": {}}}}}}]
    notes: list[str] = []
    grammar = Gbnf(tool_call_gbnf(tools, notes=notes))
    assert notes == ["#/tools/4/function/parameters/properties/x: 'not' is not enforced"]
    assert grammar.accepts(json.dumps({"name": "f", "arguments": {"x": [1]}}))
    assert not grammar.accepts(json.dumps({"name": "add", "arguments": {"a": "1", "b": 2}}))


# ---- the real agents' tools (tests/data/agents: captured by scripts/capture_agent_request.py)

AGENTS = Path(__file__).parent / "data" / "agents"


def agent_tools() -> dict[str, dict[str, Any]]:
    """Every function tool the two captured agents send, as OpenAI function tools."""
    tools = {}
    claude = json.loads((AGENTS / "claude-code-first-request.json").read_text())["body"]
    for tool in claude["tools"]:
        tools[f"claude-{tool['name']}"] = {"name": tool["name"],
                                           "parameters": tool["input_schema"]}
    codex = json.loads((AGENTS / "codex-first-request.json").read_text())["body"]
    for tool in codex["tools"]:
        for function in tool.get("tools", [tool]):  # a namespace holds functions
            if function["type"] == "function":
                tools[f"codex-{function['name']}"] = {"name": function["name"],
                                                      "parameters": function["parameters"]}
    return tools


AGENT_TOOLS = agent_tools()


def test_agents_send_the_expected_tools() -> None:
    assert len([n for n in AGENT_TOOLS if n.startswith("claude-")]) >= 20
    assert {"claude-Bash", "claude-TaskCreate", "codex-exec_command"} <= set(AGENT_TOOLS)


@pytest.mark.parametrize("name", AGENT_TOOLS)
def test_every_agent_tool_converts(name: str) -> None:
    tool = {"type": "function", "function": AGENT_TOOLS[name]}
    notes: list[str] = []
    Gbnf(tool_call_gbnf([tool], notes=notes))
    assert all("is not enforced" in line for line in notes), notes


def test_all_agent_tools_together_parse_in_llama_cpp(model: Any) -> None:
    for agent in ("claude-", "codex-"):
        tools = [{"type": "function", "function": tool} for name, tool in AGENT_TOOLS.items()
                 if name.startswith(agent)]
        gbnf = tool_call_gbnf(tools)
        assert model.grammar_error(gbnf) is None, gbnf


def test_task_metadata_takes_any_string_keys() -> None:
    tool = {"type": "function", "function": AGENT_TOOLS["claude-TaskCreate"]}
    grammar = Gbnf(tool_call_gbnf([tool]))
    arguments = {"subject": "s", "description": "d", "metadata": {"k": [1, {"x": None}]}}
    assert grammar.accepts(json.dumps({"name": "TaskCreate", "arguments": arguments}))
    assert not grammar.accepts(json.dumps({"name": "TaskCreate", "arguments": {
        **arguments, "metadata": [1]}}))


def test_annotations_and_unknown_keywords_are_ignored() -> None:
    gbnf = schema_to_gbnf({"title": "t", "description": "d", "x-vendor": 1, "examples": [1],
                           "type": "boolean", "default": True, "$schema": "x"})
    assert accepts(gbnf, True) and not accepts(gbnf, 1)


# ---- tool calls


def test_tool_call_grammar_pairs_each_name_with_its_arguments() -> None:
    grammar = Gbnf(tool_call_gbnf(TOOLS))
    assert grammar.accepts(json.dumps({"name": "add", "arguments": {"a": 1, "b": -2}}))
    assert grammar.accepts(json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}}))
    assert grammar.accepts(json.dumps({"name": "ping", "arguments": {}}))
    assert not grammar.accepts(json.dumps({"name": "add", "arguments": {"city": "Oslo"}}))
    assert not grammar.accepts(json.dumps({"name": "get_weather", "arguments": {"a": 1, "b": 2}}))
    assert not grammar.accepts(json.dumps({"name": "nope", "arguments": {}}))
    assert not grammar.accepts(json.dumps({"arguments": {}, "name": "ping"}))


def test_named_tool_call_allows_only_that_tool() -> None:
    grammar = Gbnf(tool_call_gbnf(TOOLS, name="get_weather"))
    assert grammar.accepts(json.dumps({"name": "get_weather", "arguments": {"city": "Oslo",
                                                                           "unit": "celsius"}}))
    assert not grammar.accepts(json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}}))


def test_tool_call_errors() -> None:
    with pytest.raises(SchemaError, match="no tool is named 'missing'"):
        tool_call_gbnf(TOOLS, name="missing")
    with pytest.raises(SchemaError, match="#/tools/1/function: 'name' must be"):
        tool_call_gbnf([TOOLS[0], {"type": "function", "function": {}}])
    with pytest.raises(SchemaError, match="repeated"):
        tool_call_gbnf([TOOLS[0], TOOLS[0]])
