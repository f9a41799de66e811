"""The docs say what is true: docs/CONFIGURATION.md lists exactly the flags the argument
parser has and exactly the environment variables the source reads, and every shimmy
command line written in the docs parses."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shimmy.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
CONFIGURATION = REPO / "docs" / "CONFIGURATION.md"
DOCS_WITH_COMMANDS = [REPO / "README.md", CONFIGURATION, REPO / "docs" / "TROUBLESHOOTING.md",
                      REPO / "docs" / "DEPLOYMENT.md", REPO / "docs" / "RPC.md"]
TOP = "shimmy"  # the top-level parser, in the docs' "commands" column
ENV_NAMES = re.compile(
    r"\b(SHIMMY_[A-Z0-9_]+|OLLAMA_MODELS|HF_[A-Z0-9_]+|LMSTUDIO_[A-Z0-9_]+|NO_COLOR|"
    r"XDG_CACHE_HOME)\b")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def parser_flags() -> dict[str, tuple[set[str], str | None]]:
    """Every option string -> (the commands that accept it, its metavar)."""
    parser = build_parser()
    flags: dict[str, tuple[set[str], str | None]] = {}
    for command, sub in [(TOP, parser), *subcommands(parser).items()]:
        for action in sub._actions:
            for flag in action.option_strings:
                commands, _ = flags.setdefault(flag, (set(), action.metavar))
                commands.add(command)
    return flags


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {title}' section"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]
    return rows[2:]  # after the header and the |---| line


def documented_flags() -> dict[str, tuple[set[str], str | None]]:
    """From the Flags table: option string -> (commands, the placeholder written after it)."""
    all_commands = {TOP, *subcommands(build_parser())}
    flags = {}
    for cells in table_rows(section(CONFIGURATION.read_text(), "Flags")):
        names, commands = cells[0], cells[1]
        listed = all_commands if commands == "all" else {c.strip() for c in commands.split(",")}
        for spelling in re.findall(r"`([^`]+)`", names):
            flag, _, placeholder = spelling.partition(" ")
            assert flag not in flags, f"{flag} is documented twice"
            flags[flag] = (listed, placeholder or None)
    return flags


def test_every_flag_is_documented_with_its_commands() -> None:
    documented, real = documented_flags(), parser_flags()
    missing = sorted(set(real) - set(documented))
    assert not missing, f"flags that exist but are not in docs/CONFIGURATION.md: {missing}"
    invented = sorted(set(documented) - set(real))
    assert not invented, f"flags in docs/CONFIGURATION.md that do not exist: {invented}"
    for flag, (commands, _) in real.items():
        assert documented[flag][0] == commands, \
            f"{flag}: documented for {sorted(documented[flag][0])}, accepted by {sorted(commands)}"


def test_documented_placeholders_match_the_help() -> None:
    documented = documented_flags()
    for flag, (_, metavar) in parser_flags().items():
        if metavar is not None:
            assert documented[flag][1] == metavar, f"{flag}: the help calls its value {metavar}"


def test_every_command_is_documented() -> None:
    rows = table_rows(section(CONFIGURATION.read_text(), "Commands"))
    documented = {re.match(r"`shimmy ([\w-]+)", cells[0]).group(1) for cells in rows}
    assert documented == set(subcommands(build_parser()))


def source_env_names() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "shimmy").rglob("*"):
        if path.suffix in (".py", ".pyx"):
            names.update(ENV_NAMES.findall(path.read_text()))
    return names


def test_every_environment_variable_is_documented() -> None:
    rows = table_rows(section(CONFIGURATION.read_text(), "Environment variables"))
    documented = {re.fullmatch(r"`(\w+)`", cells[0]).group(1) for cells in rows}
    used = source_env_names()
    assert "SHIMMY_MODEL_PATHS" in used and "NO_COLOR" in used  # the search itself works
    assert used - documented == set(), "read by shimmy, missing from docs/CONFIGURATION.md"
    assert documented - used == set(), "in docs/CONFIGURATION.md, but shimmy never reads it"


def test_exit_codes_are_documented() -> None:
    rows = table_rows(section(CONFIGURATION.read_text(), "Exit codes"))
    assert [cells[0] for cells in rows] == ["0", "1", "2", "75", "130", "134", "141"]


def command_lines(text: str) -> list[str]:
    """The shimmy invocations in fenced code blocks and in inline code."""
    lines = []
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    for block in fenced:
        for line in block.splitlines():
            match = re.match(r"\s*(?:\$\s+)?(?:[\w.~/-]*/)?shimmy\s+(.*)", line)
            if match and not match.group(1).startswith(("listening", "probe:")) \
                    and not re.match(r"\d", match.group(1)):
                lines.append(match.group(1))
    outside = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    lines += re.findall(r"`(?:[\w./-]*/)?shimmy ([^`]+)`", outside)
    return lines


def check_command_line(line: str, parser: argparse.ArgumentParser) -> None:
    words = [w for w in shlex.split(line.split("#")[0].replace("[", " ").replace("]", " "))
             if w not in ("...", "|")]
    commands = subcommands(parser)
    top_flags = set(parser._option_string_actions)
    while words and words[0] in top_flags:
        words.pop(0)
    if not words:
        return
    assert words[0] in commands, f"'shimmy {line}': no command '{words[0]}'"
    accepted = set(commands[words[0]]._option_string_actions)
    for word in words[1:]:
        flag = word.split("=")[0]
        if flag.startswith("-") and not re.fullmatch(r"-\d+", flag):
            assert flag in accepted, f"'shimmy {line}': {words[0]} has no {flag}"


@pytest.mark.parametrize("doc", DOCS_WITH_COMMANDS, ids=lambda path: path.name)
def test_command_lines_in_the_docs_are_real(doc: Path) -> None:
    parser = build_parser()
    lines = command_lines(doc.read_text())
    assert lines, f"{doc.name} shows no shimmy command"
    for line in lines:
        check_command_line(line, parser)


def readme_block(language: str, needle: str) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```", (REPO / "README.md").read_text(),
                        re.M | re.S)
    [block] = [b for b in blocks if needle in b]
    return block


def test_the_readme_openai_example_runs(port: int) -> None:
    code = readme_block("python", "from openai import OpenAI")
    code = code.replace("127.0.0.1:11435", f"127.0.0.1:{port}").replace("max_tokens=60",
                                                                          "max_tokens=8")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the example printed no answer"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_examples_run(port: int) -> None:
    block = readme_block("sh", "curl http://127.0.0.1:11435/v1/models")
    script = block.replace("11435", str(port)).replace('"max_tokens": 60', '"max_tokens": 8')
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"object": "list"' in result.stdout
    assert "data: [DONE]" in result.stdout
