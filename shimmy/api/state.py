"""What every API handler shares."""

from __future__ import annotations

from dataclasses import dataclass

from shimmy.engine.pool import ModelPool
from shimmy.models.registry import ModelRegistry


@dataclass(slots=True)
class AppState:
    registry: ModelRegistry
    pool: ModelPool
