"""Host and rollout state literals of the rollout engine (lifecycle §1).

A host's state inside one rollout is a `HostRolloutState`; a host the rollout has no
entry for is `Queued`. The three predicates below are the only way other modules
classify a state, so the ordering, budget and halting rules agree everywhere.
"""

from __future__ import annotations

from typing import Final, Literal, TypeGuard

HostRolloutState = Literal[
    "Queued",
    "Dispatched",
    "Activating",
    "ConfirmWindow",
    "Healthy",
    "Soaked",
    "Converged",
    "Reverted",
    "Failed",
]

QUEUED: Final = "Queued"
DISPATCHED: Final = "Dispatched"
ACTIVATING: Final = "Activating"
CONFIRM_WINDOW: Final = "ConfirmWindow"
HEALTHY: Final = "Healthy"
SOAKED: Final = "Soaked"
CONVERGED: Final = "Converged"
REVERTED: Final = "Reverted"
FAILED: Final = "Failed"

HOST_ROLLOUT_STATES: Final[tuple[HostRolloutState, ...]] = (
    QUEUED,
    DISPATCHED,
    ACTIVATING,
    CONFIRM_WINDOW,
    HEALTHY,
    SOAKED,
    CONVERGED,
    REVERTED,
    FAILED,
)

DEFAULT_HOST_STATE: Final[HostRolloutState] = QUEUED
"""The state of a host the rollout has no entry for."""

_TERMINAL_FOR_ORDERING: Final = frozenset({SOAKED, CONVERGED})
_IN_FLIGHT: Final = frozenset({DISPATCHED, ACTIVATING, CONFIRM_WINDOW, HEALTHY})
_FAILED: Final = frozenset({FAILED, REVERTED})


def is_host_rollout_state(value: object) -> TypeGuard[HostRolloutState]:
    return value in HOST_ROLLOUT_STATES


def is_terminal_for_ordering(state: HostRolloutState) -> bool:
    """Soaked or Converged: the host releases host edges and channel edges.

    Failed and Reverted are NOT terminal: a failing predecessor holds its successors.
    """
    return state in _TERMINAL_FOR_ORDERING


def is_in_flight(state: HostRolloutState) -> bool:
    """Dispatched, Activating, ConfirmWindow or Healthy: the host holds a budget slot."""
    return state in _IN_FLIGHT


def is_failed(state: HostRolloutState) -> bool:
    """Failed or Reverted: an operator is needed; the rollout halts."""
    return state in _FAILED


RolloutState = Literal["Planning", "Executing", "Halted"]

PLANNING: Final = "Planning"
EXECUTING: Final = "Executing"
HALTED: Final = "Halted"

ROLLOUT_STATES: Final[tuple[RolloutState, ...]] = (PLANNING, EXECUTING, HALTED)
"""Planning is reserved (rollouts start Executing at wave 0). Halted is stored when the
CP applies a HaltRollout (decisions.md); a Halted rollout dispatches nothing more."""


def is_rollout_state(value: object) -> TypeGuard[RolloutState]:
    return value in ROLLOUT_STATES
