"""The states of a request and of a slot, and the moves allowed between them.

One owner moves each: the scheduler's thread moves a request from ``PLACED`` on and
every slot; the event loop only queues a request and takes a still-queued one back out
(``CANCELLED``), both under the scheduler's lock. docs/ARCHITECTURE.md has the same
tables in prose. A move not in a table is a bug and raises ``StateError``, as h11 does.

Request::

    QUEUED ──pop──▶ PLACED ──start──▶ READING ──first token──▶ GENERATING
      │               │                  │                         │
      └─cancel/fail───┴──fail───────────┴─ finish/cancel/fail ────┴──▶ FINISHED |
                                                                      CANCELLED | FAILED

Slot (``BatchEngine``; its cells stay with it while idle)::

    IDLE (cells kept) ──start──▶ BUSY ──finish/release──▶ IDLE
                                  │
                                  └─decode failed──▶ DIRTY ──cells cleared──▶ IDLE (empty)
"""

from __future__ import annotations

import enum


class RequestState(enum.Enum):
    QUEUED = "queued"          # waiting for a free slot, in arrival order
    PLACED = "placed"          # out of the queue; its slot is being set up (cells, sampler)
    READING = "reading"        # its slot reads the prompt
    GENERATING = "generating"  # tokens come out
    FINISHED = "finished"      # stop, length or end of generation
    CANCELLED = "cancelled"    # its reader went away or asked to stop
    FAILED = "failed"          # llama.cpp (or set-up) failed it; the error says why


class SlotState(enum.Enum):
    IDLE = "idle"    # no request; holds the cells of its last one for reuse
    BUSY = "busy"    # reading a prompt or generating
    DIRTY = "dirty"  # a decode failed mid-step: its records may be ahead of its cells


ENDED = frozenset({RequestState.FINISHED, RequestState.CANCELLED, RequestState.FAILED})

REQUEST_MOVES: dict[RequestState, frozenset[RequestState]] = {
    RequestState.QUEUED: frozenset({RequestState.PLACED, RequestState.CANCELLED,
                                    RequestState.FAILED}),
    RequestState.PLACED: frozenset({RequestState.READING, RequestState.CANCELLED,
                                    RequestState.FAILED}),
    RequestState.READING: frozenset({RequestState.GENERATING, *ENDED}),
    RequestState.GENERATING: ENDED,
    RequestState.FINISHED: frozenset(),
    RequestState.CANCELLED: frozenset(),
    RequestState.FAILED: frozenset(),
}

SLOT_MOVES: dict[SlotState, frozenset[SlotState]] = {
    SlotState.IDLE: frozenset({SlotState.BUSY}),
    SlotState.BUSY: frozenset({SlotState.IDLE, SlotState.DIRTY}),
    SlotState.DIRTY: frozenset({SlotState.IDLE}),  # only once its cells are cleared
}


class StateError(RuntimeError):
    """A move the tables do not allow: a bug in the scheduler."""


def check_move(current: RequestState, new: RequestState) -> RequestState:
    """``new`` if a request may move there from ``current``; else ``StateError``."""
    if new not in REQUEST_MOVES[current]:
        raise StateError(f"a request cannot go from {current.value} to {new.value}")
    return new


class StepFailed(RuntimeError):
    """llama.cpp failed a step's batch. ``slots`` were in it: the engine has made them
    idle and empty (DIRTY, then cleared). ``events`` came from the step's earlier
    passes, which did succeed, and are still to be handed out."""

    def __init__(self, message: str, slots: list[int], events: list[tuple] | None = None) -> None:
        super().__init__(message)
        self.slots = slots
        self.events = events or []
