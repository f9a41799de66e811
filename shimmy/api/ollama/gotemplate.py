"""The part of Go's text/template that Ollama's ``template`` overrides use in practice.

``{{ .System }}``, ``{{ .Prompt }}``, ``{{ .Suffix }}``, ``{{ .Response }}``, and
``{{ if .X }} ... {{ else }} ... {{ end }}`` around them, with ``{{-``/``-}}`` trimming the
whitespace beside an action. Anything else (``range``, functions, pipelines) is refused
with a 400 rather than rendered wrong.
"""

from __future__ import annotations

import re

from shimmy.api.ollama.common import bad_request

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_FIELD = re.compile(r"\.([A-Za-z]+)")
SUPPORTED = "{{ .System }}, {{ .Prompt }}, {{ .Suffix }}, {{ .Response }} and " \
            "{{ if .X }}/{{ else }}/{{ end }}"


def render(source: str, values: dict[str, str]) -> str:
    """``source`` with ``values`` (System, Prompt, Suffix, Response) filled in."""
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # (was the output on, is this branch on)
    on = True
    position = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[position:match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        if on:
            out.append(text)
        trim_next = bool(match.group(3))
        position = match.end()
        on = _act(match.group(2), values, out, stack, on)
    if stack:
        raise bad_request("template: an {{ if }} has no {{ end }}")
    tail = source[position:]
    if on:
        out.append(tail.lstrip() if trim_next else tail)
    return "".join(out)


def _act(action: str, values: dict[str, str], out: list[str],
         stack: list[tuple[bool, bool]], on: bool) -> bool:
    """Apply one action; returns whether output is on after it."""
    if action.startswith("if "):
        taken = bool(_value(action[3:].strip(), values))
        stack.append((on, taken))
        return on and taken
    if action == "else":
        if not stack:
            raise bad_request("template: {{ else }} outside an {{ if }}")
        outer, taken = stack[-1]
        stack[-1] = (outer, True)
        return outer and not taken
    if action == "end":
        if not stack:
            raise bad_request("template: {{ end }} outside an {{ if }}")
        return stack.pop()[0]
    if action.startswith("/*") and action.endswith("*/"):
        return on  # a comment
    if on:
        out.append(_value(action, values))
    return on


def _value(expression: str, values: dict[str, str]) -> str:
    field = _FIELD.fullmatch(expression)
    if field is None or field[1] not in values:
        raise bad_request(f"template: shimmy cannot run {{{{ {expression} }}}}; it runs "
                          f"{SUPPORTED}")
    return values[field[1]]
