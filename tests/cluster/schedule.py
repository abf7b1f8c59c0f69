"""The soak's chaos schedule (tests/cluster/soak.py), drawn from a seed before the run and
printed whole at its start: a fault every `every` seconds from the fault tests' list
(issue 29, part 4), each aimed at a process that is running then, and one membership
change per slot, a join worker or a writer leaving (SIGTERM, or kill -9) or the one away
coming back. Pure: tests/cluster/test_soak.py holds it to that."""

from __future__ import annotations

import random
from dataclasses import dataclass

#: The fault tests' list (tests/cluster/test_faults.py, tests/integration/test_pg_failover.py):
#: what each does to whom in the soak.
FAULTS = {
    "leader_kill": "kill -9 of the broker leading a partition of {target}; started again 10 s later",
    "txn_coordinator_kill": "kill -9 of {target}'s transaction coordinator, its transaction open; started 10 s later",
    "group_coordinator_kill": "{target} stopped, then started again: kill -9 of its group's coordinator as it "
                              "joins; started 10 s later",
    "rolling_restart": "rolling restart of the three brokers (each stopped cleanly, started, back in sync)",
    "slow_broker": "{target}'s transaction coordinator answers 1 s late (every response) for 60 s",
    "cut_off": "{target} cut off from every broker (its proxy set disabled) for 20 s, past its session timeout",
    "pg_failover": "PostgreSQL's primary killed -9 and its standby promoted",
}
#: Faults that need no target.
UNAIMED = ("rolling_restart", "pg_failover")
#: How long after a slot's fault starts its membership change comes at the earliest (and
#: never before the fault is undone): one thing at a time, and the rest of the slot calm
#: (the memory verdict reads RSS there, tests/cluster/memory.py).
MEMBERSHIP_AFTER_S = 45.0


@dataclass(frozen=True)
class Member:
    name: str  # as the harness names it: "exactly_once/w1", "writer1"
    join: bool  # a join worker (else a recovery writer)
    eos: bool = False  # of the exactly_once group
    proxy_set: int | None = None  # bootstraps from this per-client proxy set alone (it can be cut off)
    #: never leaves, and no fault restarts it (group_coordinator_kill stops and starts its
    #: target): it lives the whole run, through every kind of fault, so that the memory
    #: verdict (tests/cluster/memory.py) judges a join process. Without one, every join
    #: incarnation was too young to judge (run 625750: all 13 unjudged).
    resident: bool = False


@dataclass(frozen=True)
class Slot:
    at: float  # seconds after the traffic starts
    fault: str  # a key of FAULTS
    target: str | None  # the process it is aimed at
    change: str  # "stop" | "kill" | "start"
    member: str  # whom the change is for

    def describe(self) -> str:
        what = FAULTS[self.fault].format(target=self.target)
        verb = {"stop": "leaves (SIGTERM)", "kill": "crashes (kill -9)", "start": "comes back"}[self.change]
        return f"{clock(self.at)}  {self.fault}: {what}\n{' ' * 7}then {self.member} {verb}"


def clock(seconds: float) -> str:
    """mm:ss"""
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def eligible(fault: str, running: list[Member]) -> list[Member]:
    """Who a fault can be aimed at among the processes running then."""
    joins = [m for m in running if m.join]
    return {
        "leader_kill": joins,
        "txn_coordinator_kill": [m for m in joins if m.eos],
        "group_coordinator_kill": [m for m in joins if not m.resident],
        "slow_broker": [m for m in joins if m.eos],
        "cut_off": [m for m in joins if m.proxy_set is not None],
    }.get(fault, [])


def plan(seed: int, seconds: float, members: list[Member], *, every: float = 120.0,
         faults: tuple[str, ...] = tuple(FAULTS),
         kill_share: float = 1 / 3) -> list[Slot]:
    """Slot k's fault at (k + 1/2) * every, while that is before `seconds`. Faults are dealt
    from a shuffled deck of `faults` (every kind before any repeats); the membership
    changes alternate: one member leaves (by SIGTERM, or kill -9 with `kill_share`), and
    comes back at the next slot, so that at most one is away at a time; a resident member
    never leaves."""
    rnd = random.Random(seed)
    slots: list[Slot] = []
    deck: list[str] = []
    away: str | None = None
    k = 0
    while (k + 0.5) * every < seconds:
        running = [m for m in members if m.name != away]
        if not deck:
            deck = rnd.sample(faults, len(faults))
        fault = next((f for f in deck if f in UNAIMED or eligible(f, running)), None)
        if fault is None:
            raise ValueError(f"no fault of {deck} has a target among {[m.name for m in running]}")
        deck.remove(fault)
        target = None if fault in UNAIMED else rnd.choice(eligible(fault, running)).name
        if away is not None:
            change, member, away = "start", away, None
        else:
            change = "kill" if rnd.random() < kill_share else "stop"
            member = away = rnd.choice([m for m in members if not m.resident]).name
        slots.append(Slot((k + 0.5) * every, fault, target, change, member))
        k += 1
    return slots
