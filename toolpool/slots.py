"""Who holds each slot of a pool, in one table under one lock.

Every slot has exactly one :class:`~toolpool.states.Owner`, and only its owner
may send to the slot's instance.  Whether a slot is *active* (part of the pool
now: an elastic pool parks slots it does not need) and whether maintenance is
due (a recycle once it is free) live in the same record, so one look under the
lock answers "may X use slot i?".  The instance's own state (IDLE, BUSY, ...)
is not copied here: it is read from the instance, which alone changes it.

Locking rule: ``SlotTable.lock`` guards every :class:`Slot` field and is
shared with the dispatcher's queues (one mutex, like ``queue.Queue``), so a
decision such as "pop the oldest request and give it the first free idle
slot" is atomic.  Nothing slow happens under it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import InstanceBusy
from .states import Owner, State

if TYPE_CHECKING:  # pragma: no cover
    from .dispatch import Request
    from .instance import Instance

_DOING = {
    Owner.DISPATCH: "running a request dispatched by submit()/map()",
    Owner.LEASE: "leased by a `with pool.lease()` block",
    Owner.INDEX: "held by a by-index caller (send_prompt/ask/read_response, or submit(instance=i))",
    Owner.MAINTENANCE: "being recycled, health-checked or restarted",
}


class Slot:
    """One slot: its instance, who holds it, and what is due for it."""

    __slots__ = ("index", "instance", "owner", "holder", "active", "recycle_due", "targeted")

    def __init__(self, index: int, instance: Instance, active: bool) -> None:
        self.index = index
        self.instance = instance
        self.owner = Owner.FREE
        self.holder: object | None = None  # the Lease, for Owner.LEASE
        self.active = active
        self.recycle_due = False
        #: Requests queued for this slot only (Lease.submit, submit(instance=i)); owned by the Dispatcher.
        self.targeted: list[Request] = []

    def dispatchable(self) -> bool:
        """Lock held.  Free, active, idle and not due for maintenance: dispatch may take it."""
        return (self.owner is Owner.FREE and self.active and not self.recycle_due
                and self.instance.state is State.IDLE)

    def describe(self) -> str:
        """Lock held.  What the slot is doing, for error messages."""
        if not self.active:
            return f"instance {self.index} not started (elastic pool)"
        if self.owner is Owner.FREE:
            return f"instance {self.index} {self.instance.state.value}"
        if self.owner is Owner.INDEX:
            return f"instance {self.index} held by a by-index caller (read_response({self.index}) releases it)"
        return f"instance {self.index} {_DOING[self.owner]}"


class SlotTable:
    """The slots of one pool; see the module docs for the locking rule."""

    def __init__(self, instances: list[Instance], active: int) -> None:
        self.lock = threading.Lock()
        self.slots = [Slot(i, inst, i < active) for i, inst in enumerate(instances)]

    def __iter__(self) -> Iterator[Slot]:
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index: int) -> Slot:
        return self.slots[index]

    def claim(self, index: int, owner: Owner, holder: object | None = None,
              reentrant: bool = False, user: str = "by-index calls") -> Slot:
        """Lock held.  Give slot ``index`` to ``owner``, or raise :class:`InstanceBusy` naming who has it.

        ``reentrant``: a slot already held by the same owner (and holder) is fine.
        """
        slot = self.slots[index]
        if slot.owner is Owner.FREE or (reentrant and slot.owner is owner and slot.holder is holder):
            slot.owner, slot.holder = owner, holder
            return slot
        raise InstanceBusy(f"instance {index} is {_DOING[slot.owner]}; {user} cannot use it now")

    def release(self, index: int, owner: Owner, holder: object | None = None) -> bool:
        """Lock held.  Free slot ``index`` if ``owner`` (and ``holder``) still hold it."""
        slot = self.slots[index]
        if slot.owner is owner and (holder is None or slot.holder is holder):
            slot.owner, slot.holder = Owner.FREE, None
            return True
        return False

    def who_holds(self) -> str:
        """Lock held.  Every active slot's condition, for "why is nothing free" messages."""
        return "; ".join(slot.describe() for slot in self.slots if slot.active) or "no active instances"

    def active_count(self) -> int:
        return sum(slot.active for slot in self.slots)
