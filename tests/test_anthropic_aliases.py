"""``--model-alias PATTERN=MODEL`` and ``SHIMMY_MODEL_ALIAS``: read and checked once."""

from __future__ import annotations

import pytest

from shimmy.cli import build_parser
from shimmy.config import MODEL_ALIAS_ENV, Config, ConfigError


def config(monkeypatch: pytest.MonkeyPatch, *args: str, env: str | None = None) -> Config:
    monkeypatch.delenv(MODEL_ALIAS_ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(MODEL_ALIAS_ENV, env)
    return Config.from_args(build_parser().parse_args(["serve", *args]))


def test_flags_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    got = config(monkeypatch, "--model-alias", "claude-haiku-*=small",
                 "--model-alias", " claude-* = big ", env="ignored=x")
    assert got.model_aliases == [("claude-haiku-*", "small"), ("claude-*", "big")]


def test_environment_when_no_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    got = config(monkeypatch, env="claude-*=default, gpt-4o=qwen")
    assert got.model_aliases == [("claude-*", "default"), ("gpt-4o", "qwen")]
    assert config(monkeypatch).model_aliases == []


@pytest.mark.parametrize("entry", ["claude", "=x", "claude-*=", " = "])
def test_bad_entries_name_the_source(monkeypatch: pytest.MonkeyPatch, entry: str) -> None:
    with pytest.raises(ConfigError, match="--model-alias .*expected PATTERN=MODEL"):
        config(monkeypatch, "--model-alias", entry)
    with pytest.raises(ConfigError, match=f"{MODEL_ALIAS_ENV} .*expected PATTERN=MODEL"):
        config(monkeypatch, env=entry + ",a=b")
