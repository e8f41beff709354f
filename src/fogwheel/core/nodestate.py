"""The node agent's round trip as a pure state machine: events in, instructions out.

`NodeState.handle(*events)` takes what happened (a sync answered or failed, a task finished,
a stop asked for, the clock moved on) and returns what the shell must do (run a lease, kill
a task, send this sync body, sleep until then, move to the next coordinator URL, log, exit).
It decides everything the agent used to decide inside its threads: what a sync carries, what
each answer means, when to sync next, back-off and failover, refusing replayed, expired and
unsigned leases, handing work back on a stop. It opens no socket, reads no clock (`now` is in
every event that needs it) and holds no lock: the shell calls it under its own lock, and a
load generator (bench/fleet.py) runs thousands of them in one asyncio loop. The shape is
dask/distributed's `WorkerState.handle_stimulus` and h11's sans-IO connection.

A lease moves through phases, and the legal moves are a table (`_MOVES`), as in core/tasks.py:

    (new) ─▶ QUEUED ─▶ RUNNING ─▶ REPORTING ─▶ (gone: acked or rejected)
               │          └──▶ KILLED ─▶ (gone: its slot came back)
               └──▶ (gone: lost, or handed back on a stop)
    (new) ─▶ REPORTING   an unsigned lease, reported as refused

Only QUEUED, RUNNING and REPORTING leases are *held* (renewed, or reported). A result stays in
the outbox until a sync that carried it is answered with its id acked or rejected. Hand-backs
(`release`) are kept until an answer to a sync that carried them. Signatures are checked by the
shell, which holds the key; it passes the verdict in `SyncAnswered.signed`.

The shell's loop, in short::

    while True:
        for ins in state.handle(Tick(now())):
            Sync      -> post ins.body (?leaving=ins.leaving); then
                         handle(SyncAnswered.from_json(answer, signed, now())) or
                         handle(SyncFailed(now(), error, status))
            SleepUntil-> wait until ins.t, or until another event arrives (then tick again)
            Run/Kill  -> hand the lease to a free slot / stop the task
            Exit      -> return (raise if ins.fatal)

Events other than Tick never return Sync or SleepUntil; after feeding one, tick again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from fogwheel.errors import IllegalTransition

Lease = Mapping[str, Any]  # a TaskLease as the coordinator sent it (JSON), signature checked
Report = Mapping[str, Any]  # a TaskReport: task_id, attempt, ok, value/error, cpu_s, wall_s

REFUSED_UNSIGNED = "refused: task spec signature does not verify"
UNREACHABLE_STATUS = frozenset({502, 503, 504})  # a proxy in front of a coordinator that is down
MAX_PACE_S = 600.0  # the longest pace ever kept, whatever an answer says (core/pacing.py)


@dataclass(frozen=True, slots=True)
class Settings:
    """What the machine needs to know of its node; the defaults are the agent's."""

    slots: int
    lease_seconds: float = 15.0  # until the coordinator says otherwise in an answer
    poll_s: float = 0.5  # an idle node asks for work this often (or less, if told)
    coordinators: int = 1  # how many coordinator URLs to fail over between
    max_clock_skew_s: float = 60.0  # a lease expired longer ago than this is refused
    report_delay_s: float = 0.05  # a finished result waits at most this long for others
    report_batch: int = 64  # ... or until this many are waiting
    target_queue_s: float = 0.5  # about this much work queued per slot
    max_queue_per_slot: int = 64
    seen_max: int = 100_000  # (task, attempt) pairs remembered, so a replay never runs
    backoff_s: float = 0.2  # first wait after a failed sync; doubles to backoff_max_s
    backoff_max_s: float = 5.0
    key_name: str = "the coordinator's key"  # how refusals name the key leases must verify by


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock moved on (or something else happened): decide whether to sync now."""

    now: float


@dataclass(frozen=True, slots=True)
class SyncAnswered:
    """The coordinator answered the sync in flight. `signed[i]` says whether `tasks[i]`'s
    signature verified; `wall` is the wall clock that lease expiries are read against
    (`now` when the shell uses one clock)."""

    now: float
    acked: tuple[int, ...] = ()
    rejected: tuple[tuple[int, str], ...] = ()  # (task id, reason)
    lost: tuple[int, ...] = ()
    tasks: tuple[Lease, ...] = ()
    signed: tuple[bool, ...] = ()
    lease_seconds: float | None = None
    next_sync_s: float | None = None  # how long an idle node should wait, if the coordinator says
    wall: float | None = None
    pace_s: float = 0.0  # the least wait before a busy node syncs again (core/pacing.py)

    @classmethod
    def from_json(
        cls,
        answer: Mapping[str, Any],
        signed: Sequence[bool],
        now: float,
        wall: float | None = None,
    ) -> SyncAnswered:
        """From a SyncOut as JSON (protocol.py). What is not of the expected type is left
        out (an answer is read, never trusted to be well formed): ids that are not integers,
        rejections without one, leases that are not objects, a lease period that is no number."""
        pairs = [
            (t, bool(ok))
            for t, ok in zip(answer.get("tasks", ()), signed, strict=False)
            if isinstance(t, Mapping)
        ]
        rejected = [r for r in answer.get("rejected", ()) if isinstance(r, Mapping)]
        return cls(
            now=now,
            acked=_ids(answer.get("acked", ())),
            rejected=tuple(
                (r["task_id"], str(r.get("reason", "")))
                for r in rejected
                if _is_id(r.get("task_id"))
            ),
            lost=_ids(answer.get("lost", ())),
            tasks=tuple(t for t, _ in pairs),
            signed=tuple(ok for _, ok in pairs),
            lease_seconds=_number(answer.get("lease_seconds")),
            next_sync_s=_number(answer.get("next_sync_s")),
            wall=wall,
            pace_s=_number(answer.get("pace_s")) or 0.0,
        )


def _is_id(x: object) -> bool:
    return type(x) is int


def _ids(xs: object) -> tuple[int, ...]:
    return tuple(x for x in xs if type(x) is int) if isinstance(xs, list | tuple) else ()


def _number(x: object) -> float | None:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SyncFailed:
    """The sync in flight got no answer (`status` None: connection refused, timed out…) or
    an error status."""

    now: float
    error: str
    status: int | None = None
    retry_after_s: float | None = None  # a 429's Retry-After: the least wait before the next


@dataclass(frozen=True, slots=True)
class TaskFinished:
    """A slot is done with a task: its report, or None when it has none (it was killed; a
    running task that comes back without one is handed back)."""

    task_id: int
    now: float
    report: Report | None = None


@dataclass(frozen=True, slots=True)
class StopRequested:
    """Finish what runs, hand back the rest, report, say goodbye."""

    now: float


@dataclass(frozen=True, slots=True)
class AbortRequested:
    """Stop now: kill what runs and hand it back too."""

    now: float


@dataclass(frozen=True, slots=True)
class PauseRequested:
    """The owner takes the device back: hand back the queue and ask for nothing more; with
    `finish`, let running tasks finish and report (BOINC's "suspend after checkpoint"), else
    stop them now and hand them back too. The node keeps syncing (reports, renewals)."""

    now: float
    finish: bool = False


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    """The owner gives the device back to the fog: ask for work again."""

    now: float


Event = (
    Tick
    | SyncAnswered
    | SyncFailed
    | TaskFinished
    | StopRequested
    | AbortRequested
    | PauseRequested
    | ResumeRequested
)


# -- instructions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """Start this lease on a free slot (one is free: the machine counts them)."""

    lease: Lease


@dataclass(frozen=True, slots=True)
class Kill:
    """Stop this running task; `why` is "lost" (no longer ours), "abort" (we stop) or "pause"
    (the owner took the device back; the slot stays for after the resume)."""

    task_id: int
    why: Literal["lost", "abort", "pause"] = "lost"


@dataclass(frozen=True, slots=True)
class Sync:
    """POST this body to /v1/nodes/me/sync (the shell may add its CDN fields)."""

    body: dict[str, Any]
    leaving: bool = False


@dataclass(frozen=True, slots=True)
class SleepUntil:
    t: float


@dataclass(frozen=True, slots=True)
class SwitchCoordinator:
    """Use coordinator URL number `index` from now on."""

    index: int


@dataclass(frozen=True, slots=True)
class Log:
    level: Literal["debug", "info", "warning", "error"]
    message: str


@dataclass(frozen=True, slots=True)
class Exit:
    """The agent is done; `fatal` says why it cannot go on, when it is an error."""

    fatal: str | None = None


Instruction = Run | Kill | Sync | SleepUntil | SwitchCoordinator | Log | Exit

CREDENTIAL_REFUSED = "the coordinator no longer knows this node's credential"


# -- failover and back-off ----------------------------------------------------------------


@dataclass(slots=True)
class Failover:
    """Which coordinator URL to try next and how long to wait first.

    A failed round trip moves on to the next URL at once; only after every URL failed in a
    row does the node wait, doubling the wait each round (`backoff_s` up to `backoff_max_s`).
    The join loop uses it too."""

    urls: int = 1
    backoff_s: float = 0.2
    backoff_max_s: float = 5.0
    key_name: str = "the coordinator's key"  # how refusals name the key leases must verify by
    current: int = 0
    failures: int = 0  # in a row
    wait_s: float = field(init=False, default=0.0)

    def failed(self) -> tuple[int | None, float]:
        """(the URL to switch to or None, seconds to wait before the next try)."""
        self.failures += 1
        switch = None
        if self.urls > 1:
            self.current = (self.current + 1) % self.urls
            switch = self.current
        if self.failures % self.urls:
            return switch, 0.0
        return switch, self.waited()

    def waited(self) -> float:
        """A failure that is not the coordinator's absence (an error answer): wait, no switch."""
        self.wait_s = (
            self.backoff_s if not self.wait_s else min(2 * self.wait_s, self.backoff_max_s)
        )
        return self.wait_s

    def succeeded(self) -> None:
        self.failures = 0
        self.wait_s = 0.0


# -- the machine --------------------------------------------------------------------------


class Phase(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    REPORTING = "reporting"
    KILLED = "killed"


_MOVES: frozenset[tuple[Phase | None, Phase | None]] = frozenset(
    {
        (None, Phase.QUEUED),  # a fresh signed lease
        (None, Phase.REPORTING),  # an unsigned one, reported as refused
        (Phase.QUEUED, Phase.RUNNING),  # a slot is free
        (Phase.QUEUED, None),  # lost, or handed back on a stop
        (Phase.RUNNING, Phase.REPORTING),  # finished
        (Phase.RUNNING, Phase.KILLED),  # lost, or aborted
        (Phase.REPORTING, None),  # acked or rejected
        (Phase.KILLED, None),  # its slot came back
    }
)
_HELD = (Phase.QUEUED, Phase.RUNNING, Phase.REPORTING)
_BUSY = (Phase.RUNNING, Phase.KILLED)


@dataclass(frozen=True, slots=True)
class _InFlight:
    """What the sync in flight carried, for reading its answer."""

    results: frozenset[int]
    released: tuple[int, ...]
    leaving: bool
    want: int


class NodeState:
    """One node's leases, outbox, hand-backs, sync timing and failover. See the module doc."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lease_seconds = settings.lease_seconds
        self.phase: dict[int, Phase] = {}
        self.leases: dict[int, Lease] = {}  # every lease in a phase
        self.queue: dict[int, None] = {}  # QUEUED ids in arrival order
        self.outbox: dict[int, Report] = {}  # REPORTING: the result to send until answered
        self.release: dict[int, Any] = {}  # ids to hand back in the next sync -> attempt
        self.seen: OrderedDict[tuple[Any, Any], None] = OrderedDict()
        self.stopping = False
        self.aborting = False
        self.paused = False  # the owner took the device back (PauseRequested)
        self.exited = False
        self.failover = Failover(settings.coordinators, settings.backoff_s, settings.backoff_max_s)
        self._avg_wall = 0.1
        self._outbox_since: float | None = None
        self._in_flight: _InFlight | None = None
        self._count = dict.fromkeys(Phase, 0)  # leases in each phase, kept by _move
        self._answered_at: float | None = None  # None: sync at once
        self._idle = False
        self._next_sync_s: float | None = None
        self._pace_s = 0.0  # the coordinator is over its load: a busy node waits this long
        self._retry_at: float | None = None  # after a failure: not before this
        self._unreachable_since: float | None = None
        self._leaving_since: float | None = None  # a leaving sync answered, results left over
        self._prompt = False  # a stop or abort: one round trip at once

    # -- what the shell may read ----------------------------------------------------------

    @property
    def running(self) -> list[int]:
        """Ids a slot is busy with (RUNNING or KILLED: a killed task holds its slot until it
        comes back)."""
        return [t for t, p in self.phase.items() if p in _BUSY]

    def _slots_taken(self) -> int:
        return self._count[Phase.RUNNING] + self._count[Phase.KILLED]

    @property
    def in_flight(self) -> bool:
        """A sync went out and has not been answered nor failed yet."""
        return self._in_flight is not None

    @property
    def held(self) -> list[int]:
        return [t for t, p in self.phase.items() if p in _HELD]

    def want(self) -> int:
        """How many more leases to ask for: enough for about `target_queue_s` per slot."""
        if self.stopping or self.paused:
            return 0
        active = self._count[Phase.QUEUED] + self._count[Phase.RUNNING]
        return max(0, self._depth() - active)

    # -- the one entry point ----------------------------------------------------------------

    def handle(self, *events: Event) -> list[Instruction]:
        out: list[Instruction] = []
        for ev in events:
            if self.exited:
                break
            if isinstance(ev, Tick):
                self._tick(ev.now, out)
            elif isinstance(ev, SyncAnswered):
                self._answered(ev, out)
            elif isinstance(ev, SyncFailed):
                self._failed(ev, out)
            elif isinstance(ev, TaskFinished):
                self._finished(ev, out)
            elif isinstance(ev, StopRequested):
                self._stop(out)
            elif isinstance(ev, AbortRequested):
                self._abort(out)
            elif isinstance(ev, PauseRequested):
                self._pause(ev, out)
            elif isinstance(ev, ResumeRequested):
                self._resume(out)
            else:  # pragma: no cover - the union is closed
                raise TypeError(f"not a node event: {ev!r}")
            self._fill(out)
        return out

    # -- moves ------------------------------------------------------------------------------

    def _move(self, tid: int, to: Phase | None) -> None:
        now = self.phase.get(tid)
        if (now, to) not in _MOVES:
            raise IllegalTransition(f"task {tid}: no move from {now} to {to} on this node")
        if now is Phase.QUEUED:
            del self.queue[tid]
        elif now is Phase.REPORTING:
            del self.outbox[tid]
        if now is not None:
            self._count[now] -= 1
        if to is not None:
            self._count[to] += 1
        if to is None:
            del self.phase[tid]
            self.leases.pop(tid, None)
            return
        self.phase[tid] = to
        if to is Phase.QUEUED:
            self.queue[tid] = None

    def _fill(self, out: list[Instruction]) -> None:
        """Give queued leases to free slots."""
        free = self.settings.slots - self._slots_taken()
        while free > 0 and self.queue and not self.stopping and not self.paused:
            tid = next(iter(self.queue))
            self._move(tid, Phase.RUNNING)
            out.append(Run(self.leases[tid]))
            free -= 1

    def _report(self, tid: int, report: Report, now: float) -> None:
        self.outbox[tid] = report
        if self._outbox_since is None:
            self._outbox_since = now

    # -- sync timing ------------------------------------------------------------------------

    def _tick(self, now: float, out: list[Instruction]) -> None:
        if self._in_flight is not None:
            return
        due = self._due(now)
        if due > now:
            out.append(SleepUntil(due))
            return
        c = self._count
        leaving = self.stopping and not (c[Phase.QUEUED] or c[Phase.RUNNING])
        want = 0 if leaving else self.want()
        body = {
            "results": list(self.outbox.values()),
            "renew": [t for t, p in self.phase.items() if p is Phase.QUEUED or p is Phase.RUNNING],
            "release": list(self.release),
            "want": want,
            "slots_free": max(0, self.settings.slots - self._slots_taken()),
        }
        self._in_flight = _InFlight(frozenset(self.outbox), tuple(self.release), leaving, want)
        self._prompt = False
        out.append(Sync(body, leaving))

    def _due(self, now: float) -> float:
        """When the next sync should go out: now, when there is a reason for one."""
        if self._prompt:
            return now  # a stop: one prompt round trip to hand back the queue
        if self._retry_at is not None and now < self._retry_at:
            return self._retry_at
        if self._answered_at is None:
            return now  # the first sync
        s = self.settings
        if self._pace_s > 0 and not self._idle:
            # The coordinator is over its load: a busy node comes back after the pace (with
            # what it finished meanwhile, and enough work asked to last the next one), or
            # sooner only to renew its leases before they run out.
            due = self._answered_at + min(self._pace_s, self.lease_seconds / 3)
            return due if self._retry_at is None else max(due, self._retry_at)
        n_out = len(self.outbox)
        since = self._outbox_since
        if n_out >= s.report_batch or (since is not None and now - since >= s.report_delay_s):
            return now
        if not self._idle:
            if n_out and len(self.queue) < self._depth() // 2:
                return now  # running low: report and ask for more before the slots go dry
            if not self.queue and not self._slots_taken():
                return now
        # An idle node polls (no slower than the coordinator asks); a busy one renews every
        # third of the lease.
        wait = max(s.poll_s, self._next_sync_s or 0.0) if self._idle else self.lease_seconds / 3
        due = self._answered_at + wait
        if since is not None:
            due = min(due, since + s.report_delay_s)
        if self._retry_at is not None:
            due = max(due, self._retry_at)
        return due

    def _depth(self) -> int:
        """Leases to hold: about `target_queue_s` of work per slot, or a pace's worth."""
        s = self.settings
        queue_s = max(s.target_queue_s, self._pace_s)
        per_slot = math.ceil(queue_s / max(self._avg_wall, 0.001))
        return s.slots * min(s.max_queue_per_slot, max(2, per_slot))

    # -- answers ----------------------------------------------------------------------------

    def _answered(self, ev: SyncAnswered, out: list[Instruction]) -> None:
        if self._in_flight is None:
            raise IllegalTransition("a sync answer arrived with no sync in flight")
        flight, self._in_flight = self._in_flight, None
        sent, leaving = flight.results, flight.leaving
        self._retry_at = None
        self.failover.succeeded()
        if self._unreachable_since is not None:
            out.append(Log("info", "coordinator reachable again"))
            self._unreachable_since = None
        for tid in ev.acked:
            if tid in sent and tid in self.outbox:
                self._move(tid, None)
        for tid, reason in ev.rejected:
            if tid in sent and tid in self.outbox:
                out.append(Log("warning", f"result of task {tid} refused: {reason}"))
                self._move(tid, None)
        for tid in flight.released:
            attempt = self.release.pop(tid, None)
            if attempt is not None:
                # The coordinator has it back, and a hand-back is no attempt (core/tasks.py):
                # the same (task, attempt) may come again, as a new lease, not a replay.
                self.seen.pop((tid, attempt), None)
        if not self.outbox:
            self._outbox_since = None
        for tid in ev.lost:
            # The coordinator gave this task to someone else, or another copy of it won (a
            # backup): drop it, and stop it if it runs. A finished one is reported regardless.
            p = self.phase.get(tid)
            if p is Phase.QUEUED:
                self._move(tid, None)
            elif p is Phase.RUNNING:
                out.append(Log("info", f"task {tid} is no longer ours: stopping it"))
                self._move(tid, Phase.KILLED)
                out.append(Kill(tid, "lost"))
        wall = ev.now if ev.wall is None else ev.wall
        got = len(ev.tasks)
        for i, lease in enumerate(ev.tasks):
            signed = i < len(ev.signed) and ev.signed[i]
            if not signed:
                self._refuse(lease, ev.now, out)
            elif self._fresh(lease, wall, out):
                tid = lease["task_id"]
                self.leases[tid] = lease
                self._move(tid, Phase.QUEUED)
                if self.stopping or self.paused:  # asked for none: hand it straight back
                    self._hand_back(tid)
                    self._move(tid, None)
        if ev.lease_seconds is not None and ev.lease_seconds > 0:
            self.lease_seconds = float(ev.lease_seconds)
        nxt = ev.next_sync_s
        self._next_sync_s = float(nxt) if isinstance(nxt, int | float) and nxt > 0 else None
        pace = ev.pace_s
        # Read, not trusted: a pace past a third of the lease would let leases run out.
        ok = isinstance(pace, int | float) and math.isfinite(pace) and pace > 0
        self._pace_s = min(float(pace), self.lease_seconds / 3, MAX_PACE_S) if ok else 0.0
        self._answered_at = ev.now
        # Idle: it asked for work, got less, and holds nothing; it polls at its own pace.
        holds = any(self._count[p] for p in _HELD)
        self._idle = not holds and (self.paused or (flight.want > 0 and got < flight.want))
        if leaving:
            self._left(ev.now, out)

    def _left(self, now: float, out: list[Instruction]) -> None:
        """The coordinator has our goodbye: exit, once every result was acked or refused."""
        if not self.outbox:
            self.exited = True
            out.append(Exit())
            return
        if self._leaving_since is None:
            self._leaving_since = now
        elif now - self._leaving_since > self.lease_seconds:
            out.append(
                Log("warning", f"leaving with {len(self.outbox)} results neither acked nor refused")
            )
            self.exited = True
            out.append(Exit())
            return
        self._retry_at = now + self.failover.waited()

    def _fresh(self, lease: Lease, wall: float, out: list[Instruction]) -> bool:
        """A signed lease is run only once, and only while it is current.

        A proxy can keep a genuine, signed sync answer and send it again later: the signature
        still verifies. So a (task, attempt) already received is dropped, and so is a lease
        whose signed `lease_expires` lies further in the past than the clock skew allowed
        (which also covers a replay after the agent restarted and forgot). An expired lease is
        handed back unless this node holds the task under another attempt."""
        tid, attempt = lease.get("task_id"), lease.get("attempt")
        key = (tid, attempt)
        if key in self.seen:
            out.append(
                Log(
                    "warning",
                    f"task {tid} attempt {attempt} refused: this node already received that "
                    "lease (replayed?); not running it again",
                )
            )
            return False
        self.seen[key] = None
        while len(self.seen) > self.settings.seen_max:
            self.seen.popitem(last=False)
        if type(tid) is not int:
            out.append(Log("warning", f"a lease with task id {tid!r} refused: not a task id"))
            return False
        expires = lease.get("lease_expires")
        ok_number = isinstance(expires, int | float) and not isinstance(expires, bool)
        late = wall - expires if ok_number else math.inf  # type: ignore[operator]
        skew = self.settings.max_clock_skew_s
        if not late <= skew:  # NaN and a missing expiry fail too
            out.append(
                Log(
                    "warning",
                    f"task {tid} attempt {attempt} refused: its lease expired {late:.0f} s ago "
                    f"(allowed clock skew {skew:g} s; replayed, or this device's clock is "
                    "wrong); handing it back",
                )
            )
            if tid not in self.phase:
                self.release[tid] = None
            return False
        if tid in self.phase:
            out.append(
                Log("warning", f"task {tid} attempt {attempt} refused: this node holds it already")
            )
            return False
        return True

    def _refuse(self, lease: Lease, now: float, out: list[Instruction]) -> None:
        """Never run a spec the coordinator did not sign; report the attempt as failed, so the
        coordinator queues the task again and counts the failure against this node."""
        tid, attempt = lease.get("task_id"), lease.get("attempt")
        out.append(
            Log(
                "error",
                f"task {tid} refused: its spec's signature does not verify against "
                f"{self.settings.key_name} (changed in transit?); not running it",
            )
        )
        if type(tid) is not int or type(attempt) is not int or attempt < 1 or tid in self.phase:
            return  # nothing that could be reported without spoiling a genuine lease
        self.leases[tid] = lease
        self._move(tid, Phase.REPORTING)
        self._report(
            tid,
            {
                "task_id": tid,
                "attempt": attempt,
                "ok": False,
                "error": {"kind": "crash", "message": REFUSED_UNSIGNED},
                "cpu_s": 0.0,
                "wall_s": 0.0,
            },
            now,
        )

    def _failed(self, ev: SyncFailed, out: list[Instruction]) -> None:
        if self._in_flight is None:
            raise IllegalTransition("a sync failure arrived with no sync in flight")
        self._in_flight = None
        if ev.status == 401:
            self.exited = True
            out.append(Exit(fatal=CREDENTIAL_REFUSED))
            return
        if ev.status == 429:  # too fast for this coordinator: wait as long as it says
            out.append(Log("warning", f"sync refused: {ev.error}"))
            wait = min(MAX_PACE_S, max(0.0, _number(ev.retry_after_s) or 0.0))
            self._retry_at = ev.now + max(wait, self.failover.waited())
            return
        if ev.status is not None and ev.status not in UNREACHABLE_STATUS:
            out.append(Log("error", f"sync refused: {ev.error}"))
            self._retry_at = ev.now + self.failover.waited()
            return
        if self._unreachable_since is None:
            self._unreachable_since = ev.now
            out.append(
                Log(
                    "warning",
                    f"coordinator unreachable ({ev.error}); keeping {len(self.outbox)} "
                    "results, retrying",
                )
            )
        if self.stopping and ev.now - self._unreachable_since > self.lease_seconds:
            out.append(Log("warning", "giving up on the coordinator while stopping"))
            self.exited = True
            out.append(Exit())
            return
        switch, wait = self.failover.failed()
        if switch is not None:
            out.append(SwitchCoordinator(switch))
        self._retry_at = ev.now + wait

    # -- tasks and signals ------------------------------------------------------------------

    def _finished(self, ev: TaskFinished, out: list[Instruction]) -> None:
        tid = ev.task_id
        p = self.phase.get(tid)
        if p is Phase.RUNNING and ev.report is None:
            self._move(tid, Phase.KILLED)  # the slot has nothing to say: hand the task back
            self._hand_back(tid)
            p = Phase.KILLED
        if p is Phase.KILLED:
            self._move(tid, None)  # nobody waits for the result of a killed task
            return
        if p is not Phase.RUNNING or ev.report is None:
            raise IllegalTransition(f"task {tid} finished but this node was not running it")
        wall = ev.report.get("wall_s", 0.0)
        if isinstance(wall, int | float) and math.isfinite(wall):
            self._avg_wall = 0.8 * self._avg_wall + 0.2 * max(0.0, float(wall))
        self._move(tid, Phase.REPORTING)
        self._report(tid, ev.report, ev.now)

    def _stop(self, out: list[Instruction]) -> None:
        if self.stopping:
            self._abort(out)  # a second stop: abort now
            return
        self.stopping = True
        self._prompt = True
        for tid in list(self.queue):
            self._hand_back(tid)
            self._move(tid, None)

    def _hand_back(self, tid: int) -> None:
        """Hand `tid` back in the next sync (call while its lease is still known)."""
        lease = self.leases.get(tid)
        self.release[tid] = lease.get("attempt") if lease is not None else None

    def _pause(self, ev: PauseRequested, out: list[Instruction]) -> None:
        """Hand back what is queued (and, unless `finish`, what runs) in one prompt sync."""
        if not self.paused:
            out.append(Log("info", "paused by the owner: handing work back, asking for none"))
        self.paused = True
        self._prompt = True
        for tid in list(self.queue):
            self._hand_back(tid)
            self._move(tid, None)
        if not ev.finish:
            for tid, p in list(self.phase.items()):
                if p is Phase.RUNNING:
                    self._move(tid, Phase.KILLED)
                    self._hand_back(tid)
                    out.append(Kill(tid, "pause"))

    def _resume(self, out: list[Instruction]) -> None:
        if self.paused:
            out.append(Log("info", "resumed by the owner: asking for work again"))
        self.paused = False
        self._prompt = True

    def _abort(self, out: list[Instruction]) -> None:
        if not self.stopping:
            self._stop(out)
        self.aborting = True
        self._prompt = True
        for tid, p in list(self.phase.items()):
            if p is Phase.RUNNING:
                self._move(tid, Phase.KILLED)
                self._hand_back(tid)
                out.append(Kill(tid, "abort"))
