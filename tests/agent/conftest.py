"""Fixtures shared by the agent tests that run real agent processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agent_testlib import AgentProc


@pytest.fixture
def agents() -> Iterator[list[AgentProc]]:
    """The agents a test starts (append them): each stopped after the test."""
    started: list[AgentProc] = []
    yield started
    for agent in started:
        agent.stop()
