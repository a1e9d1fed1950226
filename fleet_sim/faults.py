"""Faults as composable objects (Jepsen's nemesis): each has a name, an `invoke` and
a `heal`, and a schedule — a simulated instant, or a condition on the world.

    faults = compose([CpWipe(at=600, downtime=20), Partition(hosts=0.1, at=300, duration=120)])
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from nixfleet.core.errors import BadInput

if TYPE_CHECKING:
    from .world import World

HostPick = Sequence[str] | float
"""Host names, or a fraction of the fleet picked with the world's seeded RNG."""


def pick_hosts(world: World, pick: HostPick, rng: random.Random) -> list[str]:
    names = sorted(world.hosts)
    if isinstance(pick, float | int):
        count = round(len(names) * float(pick))
        return sorted(rng.sample(names, count))
    unknown = [h for h in pick if h not in world.hosts]
    if unknown:
        raise BadInput(f"fault: unknown hosts {', '.join(unknown)}")
    return sorted(pick)


@dataclass(kw_only=True)
class Fault:
    """A fault invoked at `at` (simulated seconds) or once `when(world)` holds, and
    healed `duration` seconds later (never, when None)."""

    at: float | None = None
    duration: float | None = None
    when: Callable[[World], bool] | None = None
    check_every: float = 5.0
    name: str = ""

    def __post_init__(self) -> None:
        if (self.at is None) == (self.when is None):
            raise BadInput(f"fault {self.label}: give exactly one of at= or when=")
        if not self.name:
            self.name = self.label

    @property
    def label(self) -> str:
        return type(self).__name__

    def invoke(self, world: World) -> dict[str, Any]:
        raise NotImplementedError

    def heal(self, world: World) -> None:
        """Undo the fault; the default is that there is nothing to undo."""

    def schedule(self, world: World) -> None:
        world.env.process(self._run(world))

    def _run(self, world: World) -> Generator[Any, Any, None]:
        if self.at is not None:
            yield world.env.timeout(self.at)
        else:
            assert self.when is not None
            while not self.when(world):
                yield world.env.timeout(self.check_every)
        detail = self.invoke(world)
        world.record("fault", None, fault=self.name, phase="invoke", **detail)
        if self.duration is not None:
            yield world.env.timeout(self.duration)
            self.heal(world)
            world.record("fault", None, fault=self.name, phase="heal")


@dataclass(kw_only=True)
class Partition(Fault):
    hosts: HostPick = 0.1
    picked: list[str] = field(default_factory=list)

    def invoke(self, world: World) -> dict[str, Any]:
        self.picked = pick_hosts(world, self.hosts, world.fault_rng)
        world.network.cut.update(self.picked)
        return {"hosts": len(self.picked)}

    def heal(self, world: World) -> None:
        world.network.cut.difference_update(self.picked)


@dataclass(kw_only=True)
class Loss(Fault):
    probability: float = 0.05
    previous: float = 0.0

    def invoke(self, world: World) -> dict[str, Any]:
        self.previous = world.network.loss
        world.network.loss = self.probability
        return {"probability": self.probability}

    def heal(self, world: World) -> None:
        world.network.loss = self.previous


@dataclass(kw_only=True)
class CpCrash(Fault):
    """The CP process dies (memory lost, DB kept) and restarts after `duration`."""

    def invoke(self, world: World) -> dict[str, Any]:
        world.cp.crash()
        return {}

    def heal(self, world: World) -> None:
        world.cp.start()


@dataclass(kw_only=True)
class CpWipe(Fault):
    """Seed 001: stop the CP, delete its database, start it again after `duration`."""

    def invoke(self, world: World) -> dict[str, Any]:
        world.cp.wipe_db()
        return {}

    def heal(self, world: World) -> None:
        world.cp.start()


@dataclass(kw_only=True)
class CacheOutage(Fault):
    def invoke(self, world: World) -> dict[str, Any]:
        world.cache.up = False
        return {}

    def heal(self, world: World) -> None:
        world.cache.up = True


@dataclass(kw_only=True)
class ForgeOutage(Fault):
    def invoke(self, world: World) -> dict[str, Any]:
        world.forge.up = False
        return {}

    def heal(self, world: World) -> None:
        world.forge.up = True


@dataclass(kw_only=True)
class LinkDrop(Fault):
    """Closure copies drop mid-transfer with this probability (seed 003)."""

    probability: float = 0.1

    def invoke(self, world: World) -> dict[str, Any]:
        world.cache.drop_probability = self.probability
        return {"probability": self.probability}

    def heal(self, world: World) -> None:
        world.cache.drop_probability = 0.0


@dataclass(kw_only=True)
class ActivationFailures(Fault):
    """Closures fail to switch on these hosts (or on this fraction of the fleet)."""

    hosts: HostPick = 0.1
    picked: list[str] = field(default_factory=list)

    def invoke(self, world: World) -> dict[str, Any]:
        self.picked = pick_hosts(world, self.hosts, world.fault_rng)
        for h in self.picked:
            world.hosts[h].behaviour.switch_fails = True
        return {"hosts": len(self.picked)}

    def heal(self, world: World) -> None:
        for h in self.picked:
            world.hosts[h].behaviour.switch_fails = False


@dataclass(kw_only=True)
class HealthFailures(Fault):
    """New closures switch fine on these hosts but fail their health probe: the CP's
    health sweep (H11) fails them and the rollout policy decides what happens."""

    hosts: HostPick = 0.1
    from_generation: int = 1
    picked: list[str] = field(default_factory=list)

    def invoke(self, world: World) -> dict[str, Any]:
        self.picked = pick_hosts(world, self.hosts, world.fault_rng)
        for h in self.picked:
            world.hosts[h].behaviour.unhealthy_after = self.from_generation
        return {"hosts": len(self.picked)}

    def heal(self, world: World) -> None:
        for h in self.picked:
            world.hosts[h].behaviour.unhealthy_after = None


@dataclass(kw_only=True)
class SlowActivation(Fault):
    hosts: HostPick = 0.1
    seconds: tuple[float, float] = (200.0, 290.0)
    picked: list[str] = field(default_factory=list)

    def invoke(self, world: World) -> dict[str, Any]:
        self.picked = pick_hosts(world, self.hosts, world.fault_rng)
        for h in self.picked:
            world.hosts[h].behaviour.activation_secs = self.seconds
        return {"hosts": len(self.picked), "seconds": list(self.seconds)}


@dataclass(kw_only=True)
class AgentCrash(Fault):
    """The agents die and are restarted by their service manager after `duration`."""

    hosts: HostPick = 0.1
    picked: list[str] = field(default_factory=list)

    def invoke(self, world: World) -> dict[str, Any]:
        self.picked = pick_hosts(world, self.hosts, world.fault_rng)
        for h in self.picked:
            world.hosts[h].crash()
        return {"hosts": len(self.picked)}

    def heal(self, world: World) -> None:
        for h in self.picked:
            world.hosts[h].start()


@dataclass(kw_only=True)
class ClockSkew(Fault):
    hosts: HostPick = 0.1
    skew_secs: float = 90.0
    picked: list[str] = field(default_factory=list)

    def invoke(self, world: World) -> dict[str, Any]:
        self.picked = pick_hosts(world, self.hosts, world.fault_rng)
        for h in self.picked:
            world.hosts[h].clock.skew = timedelta(seconds=self.skew_secs)
        return {"hosts": len(self.picked), "skew_secs": self.skew_secs}

    def heal(self, world: World) -> None:
        for h in self.picked:
            world.hosts[h].clock.skew = timedelta()


def compose(faults: Sequence[Fault]) -> list[Fault]:
    """Faults in one run; two claiming one name are refused (Jepsen's compose)."""
    seen: set[str] = set()
    for f in faults:
        if f.name in seen:
            raise BadInput(f"faults: two faults named {f.name!r}; give one a name=")
        seen.add(f.name)
    return list(faults)


FAULTS: dict[str, type[Fault]] = {
    cls.__name__: cls
    for cls in (
        Partition, Loss, CpCrash, CpWipe, CacheOutage, ForgeOutage, LinkDrop,
        ActivationFailures, HealthFailures, SlowActivation, AgentCrash, ClockSkew,
    )
}  # fmt: skip
