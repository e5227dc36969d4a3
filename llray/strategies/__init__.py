"""Continual-learning strategies, one module each, registered by name."""

from llray.strategies.base import (
    Batch,
    Context,
    Strategy,
    TrainConfig,
    check_scenario,
    make_config,
    make_strategy,
    register,
    strategy_class,
    strategy_names,
)

__all__ = [
    "Batch",
    "Context",
    "Strategy",
    "TrainConfig",
    "check_scenario",
    "make_config",
    "make_strategy",
    "register",
    "strategy_class",
    "strategy_names",
]
