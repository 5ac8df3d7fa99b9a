"""What every service needs at hand, built once by the composition root (bot.app)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from core.clock import Clock, SystemClock
from core.config import Config
from core.db import Sessionmaker, create_sessionmaker
from core.metrics import Metrics


@dataclass
class Runtime:
    config: Config
    engine: AsyncEngine
    sessions: Sessionmaker
    clock: Clock = field(default_factory=SystemClock)
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def build(cls, config: Config, engine: AsyncEngine, clock: Clock | None = None) -> Runtime:
        return cls(config=config, engine=engine, sessions=create_sessionmaker(engine),
                   clock=clock or SystemClock())
