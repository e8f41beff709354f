"""The coordinator's state as the simulator keeps it, and the round trip over it.

`World` holds what the store holds in SQL (devices with their counters, quota and trust
record; tasks with their lifecycle state, replicas and attempts) in plain lists indexed by id
(an open task's copies, voters and results in one `Group`), and makes every decision with
the same core/ functions the store calls: placement (`scheduler.plan_lease`, `plan_backups`),
the lifecycle (`tasks.apply`), the in-flight quota (`quota.room`, `grown`, `shrunk`) and
verification (`trust.quorum_for`, `verdict`, `record_after`). `sync` builds the
scheduler's frozen views from this state exactly as `store/leasing.py` `_lease` builds them
from rows, which is what tests/test_sim.py checks against a real store.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter

from fogwheel.core import quota as inflight
from fogwheel.core import scheduler, trust
from fogwheel.core.scheduler import Candidate
from fogwheel.core.tasks import (
    Cancelled,
    Expired,
    Leased,
    Reported,
    Settled,
    Task,
    TaskState,
    apply,
)
from fogwheel.sim.queue import PendingQueue

WINDOW = 64  # = store/leasing.py: pending rows read per lease, at least (4 per task wanted)
EXACT_FLEET = 2_000  # up to this many devices, probation's "better free slots" is summed whole
PRIORITY_SHIFT = 1 << 40  # queue key: priority * PRIORITY_SHIFT + id, as the store orders
MEDIAN_SAMPLE = 201  # = store/leasing.py: a job's finished attempts its typical run is taken over
BACKUP_SCAN = 64  # = store/leasing.py: running tasks looked at for stragglers
DUE_MARGIN_S = 1e-3  # `_due_at` is a sum, the straggler test a difference: rounding apart
NOTHING: frozenset[str] = frozenset()
FRESH = trust.Record()
NEW = Task()  # every task starts as this one value: a million pending tasks share it
OPEN = (TaskState.PENDING, TaskState.LEASED)
PENDING, LEASED, VERIFYING = TaskState.PENDING, TaskState.LEASED, TaskState.VERIFYING
SETTLED = (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)
RANDOM = scheduler.Policy.RANDOM
RIGHT = "ok"  # the digest of a correct result; a faulty device answers anything else
# Events are values: the ones that carry nothing of the moment are made once.
AGREED, DISAGREED, COPY_DISAGREED = Settled(True), Settled(False, "no agreement"), Settled(False)
NOT_NEEDED = Cancelled("no longer needed: the task is settled")


@dataclass(slots=True)
class Job:
    customer: str
    created_at: float
    deadline: float | None
    backups: bool
    max_attempts: int
    tasks: int = 0
    pending: int = 0  # its tasks (not replicas) waiting in the queue
    settled: int = 0
    finished_at: float | None = None
    took: list[float] = field(default_factory=list)  # wall times of finished attempts
    typical: float | None = None  # median of `took`, once known
    wait: float = math.inf  # backup_after(typical): how long its tasks run before a backup
    running: dict[int, float] = field(default_factory=dict)  # original -> leased_at, in order
    backed: dict[int, float] = field(default_factory=dict)  # ... those with a copy open
    unchecked: bool = False  # replicas=1: every result is accepted as it comes


class Device:
    """What the coordinator keeps of one device (store: its `nodes` row, counters, quota and
    trust record), in one object: an event reads one object where it read a dozen lists of
    100,000 (a cache miss each)."""

    __slots__ = (
        "cores",
        "done",
        "free",
        "held",
        "live",
        "lost",
        "name",
        "quarantined",
        "quota",
        "record",
        "reported",
        "slots",
        "up_s",
    )

    def __init__(self, name: str, cores: int, quota: int) -> None:
        self.name = name
        self.cores = cores
        self.quota = quota
        self.slots = inflight.scheduling_slots(quota, cores)  # kept with quota
        self.done = 0
        self.lost = 0
        self.held = 0  # tasks LEASED to it, as the coordinator counts them
        self.free = cores  # slots_free of its last sync (store: nodes row)
        self.record = FRESH
        self.live = True  # up, not quarantined: what _fleet_views returns
        self.quarantined = False  # its record says quarantined
        self.up_s: float | None = None  # expected_up_s: its mean completed up interval
        self.reported = Reported(name)  # its result event


class Group:
    """What the coordinator keeps of a task and its copies while the task is open (store: the
    columns of its rows), in one object: one look-up per event rather than one per dict."""

    __slots__ = ("involved", "lost_on", "members", "quorum", "ran", "results")

    def __init__(self, quorum: int) -> None:
        self.members: list[int] = []  # its copies (check replicas and backups), in order
        # Sets of a node or two, kept as lists without repeats: an empty set weighs 216
        # bytes, a list 56, and a million open groups' containers are most of the run's memory.
        self.ran: list[str] = []  # nodes holding or having answered a copy
        self.involved: list[str] = []  # every node that held a copy
        self.results: dict[str, str] = {}  # node -> digest
        self.quorum = quorum  # matching results it needs; 0: not drawn yet
        self.lost_on: dict[int, set[str]] | None = None  # copy (or itself) -> nodes that lost it


@dataclass(slots=True)
class Counters:
    """What the run measures, beside the timings."""

    leases: int = 0
    results: int = 0  # results reported (every copy)
    settled_ok: int = 0
    failed: int = 0
    wrong_accepted: int = 0  # tasks settled on a wrong digest
    replicas: int = 0  # check copies made
    backups: int = 0  # backup copies made
    expired: int = 0
    cancelled_running: int = 0  # copies killed because their group settled
    quarantined: int = 0
    decisions: int = 0  # plan_lease / plan_backups calls
    placement_s: float = 0.0  # wall time spent in the placement step


class World:
    """The coordinator's state for `len(names)` devices; ids are the store's (tasks from 1)."""

    def __init__(
        self,
        names: Sequence[str],
        cores: Sequence[int],
        *,
        placement: scheduler.Placement = scheduler.FAIR,
        lease_s: float = 15.0,
        quota: int | Sequence[int] = inflight.START,
        memory_mb: int = 512,
        draw: Callable[[], float] | None = None,
        window: int = WINDOW,
    ) -> None:
        n = len(names)
        self.names = list(names)
        self.index = {name: d for d, name in enumerate(self.names)}
        self.memory_mb = memory_mb
        self.placement = placement
        self.lease_s = lease_s
        self.draw = draw or (lambda: 0.0)  # the verifier's uniform draw (store: _rng.random())
        quotas = [quota] * n if isinstance(quota, int) else list(quota)
        self.window = window
        self.devices = [Device(*row) for row in zip(self.names, cores, quotas, strict=True)]
        self._quarantined_names: set[str] = set()
        self.total_slots = sum(dev.slots for dev in self.devices)
        self.total_free = sum(_free(dev) for dev in self.devices)
        # tasks, indexed by id (0 unused: the store's ids start at 1)
        self.state: list[Task] = [NEW]
        self.job_of: list[int] = [-1]
        self.group_of: list[int] = [0]  # the task a copy belongs to; itself for originals
        self.backup: list[bool] = [False]
        self.groups: list[Group | None] = [None]  # of an open original once leased; None else
        self.jobs: list[Job] = []
        self._drained: set[int] = set()  # jobs with nothing pending: only these are backed up
        # No drained job's oldest running task is due for a backup before this (a lower bound:
        # lowered whenever a job may have become due sooner, made exact at each full look).
        self._due_at = -math.inf
        self.pending = PendingQueue()
        self._cands: dict[int, scheduler.Candidate] = {}  # queue key -> candidate
        self._most_lost = 0  # the most nodes any one task was lost on
        self.n_live = n
        self.counters = Counters()
        self.on_cancel: Callable[[int, int], None] | None = None  # (device, task) killed

    # -- jobs --------------------------------------------------------------------------------

    def add_job(
        self,
        customer: str,
        n: int,
        now: float,
        *,
        deadline: float | None = None,
        backups: bool = True,
        max_attempts: int = 3,
        unchecked: bool = False,
    ) -> range:
        """Queue a job of `n` tasks; their ids, consecutive as the store's. `unchecked`: the
        job asked for replicas=1 (no verification); else replication is adaptive."""
        j = len(self.jobs)
        job = Job(customer, now, deadline, backups, max_attempts, tasks=n, pending=n)
        job.unchecked = unchecked
        self.jobs.append(job)
        if n == 0:
            self._drained.add(j)
        first = len(self.state)
        ids = range(first, first + n)
        task = NEW if max_attempts == NEW.max_attempts else Task(max_attempts=max_attempts)
        self.state.extend([task] * n)
        self.job_of.extend([j] * n)
        self.group_of.extend(ids)
        self.backup.extend([False] * n)
        self.groups.extend([None] * n)
        self.pending.extend(PRIORITY_SHIFT + t for t in ids)
        return ids

    def _group(self, g: int) -> Group:
        """The open group of original `g`, made when first needed."""
        group = self.groups[g]
        if group is None:
            group = self.groups[g] = Group(1 if self.jobs[self.job_of[g]].unchecked else 0)
        return group

    def _key(self, t: int) -> int:
        """Its place in the queue: checks first (store: priority 0), then by id."""
        return (PRIORITY_SHIFT if self.group_of[t] == t else 0) + t

    def _enqueue(self, t: int) -> None:
        self.pending.add((PRIORITY_SHIFT if self.group_of[t] == t else 0) + t)
        j = self.job_of[t]
        self.jobs[j].pending += 1
        self._drained.discard(j)

    def _dequeue(self, t: int) -> None:
        self.pending.discard((PRIORITY_SHIFT if self.group_of[t] == t else 0) + t)
        j = self.job_of[t]
        job = self.jobs[j]
        job.pending -= 1
        if not job.pending:
            self._drained.add(j)
            self._may_be_due(j)

    def _copy(self, group: int, backup: bool) -> int:
        """A replica (or backup copy) of `group`, queued first (store: priority 0)."""
        t = len(self.state)
        j = self.job_of[group]
        job = self.jobs[j]
        attempts = job.max_attempts
        self.state.append(NEW if attempts == NEW.max_attempts else Task(max_attempts=attempts))
        self.job_of.append(j)
        self.group_of.append(group)
        self.backup.append(backup)
        self.groups.append(None)
        members = self._group(group).members
        members.append(t)
        cands = self._cands  # _changed(group), inline
        cands.pop(PRIORITY_SHIFT + group, None)
        for m in members:
            cands.pop(m, None)
        running = job.running
        if group in running:  # a copy is open: no longer a straggler to back up
            job.backed[group] = running.pop(group)
        if backup:
            self.counters.backups += 1
        else:
            self.counters.replicas += 1
            self.pending.add(t)  # _enqueue(t), inline: a copy's key is its id
            job.pending += 1
            self._drained.discard(j)
        return t

    # -- the round trip ------------------------------------------------------------------------

    def sync(self, d: int, want: int, slots_free: int, now: float) -> list[int]:
        """A device's sync asking for `want` tasks: the ids leased to it (store: `sync`)."""
        dev = self.devices[d]
        if dev.live:  # total_free += _free(d) after - _free(d) before
            slots, cores = dev.slots, dev.cores
            after, before = slots - cores + slots_free, slots - cores + dev.free
            self.total_free += (after if after > 0 else 0) - (before if before > 0 else 0)
            dev.free = slots_free
        else:
            dev.free = slots_free
            return []
        if want <= 0 or dev.quarantined:
            return []
        started = perf_counter()
        leased = self._lease(d, dev, want, now)
        self.counters.placement_s += perf_counter() - started
        return leased

    def _lease(self, d: int, dev: Device, want: int, now: float) -> list[int]:
        held = dev.held
        room = inflight.room(dev.quota, dev.cores, held)
        if room < want:
            want = room
        if want <= 0:
            return []
        slots = dev.slots
        out: list[int] = []
        if self.pending.size:  # else only a backup copy could be leased: no view to place by
            view = scheduler.NodeView(
                dev.name, slots, self.memory_mb, held, dev.done, dev.lost, NOTHING, dev.up_s
            )
            grant = self._grant
            for a in self.place(dev, view, want):
                t = a.task_id
                grant(dev, t, now)
                out.append(t)
            held = dev.held
        free = min(want - len(out), slots - held)
        # Else no job is in its last wave, or none has a task due: no straggler to back up.
        if free > 0 and self._drained and now >= self._due_at - DUE_MARGIN_S:
            view = scheduler.NodeView(
                dev.name, slots, self.memory_mb, held, dev.done, dev.lost, NOTHING
            )
            for a in self._backups(view, free, now):
                copy = self._copy(a.task_id, backup=True)
                self._grant(dev, copy, now)
                out.append(copy)
        return out

    def place(self, dev: Device, view: scheduler.NodeView, want: int) -> list[scheduler.Assignment]:
        """The placement step: the scheduler's views of this state, and its decision."""
        rel = scheduler.reliability(view)
        pending = self.pending.size
        # The fleet as _fleet_views sees it: live devices, held = cores - reported slots_free;
        # the asking one as the store reads it now. Better nodes' free slots only matter to
        # probation (rel < 0.5) when they could take the whole queue, so they are summed only
        # then; below that, any figure under `pending` decides the same.
        total = self.total_slots - (dev.slots if dev.live else 0) + view.slots
        better = 0
        if rel < scheduler.PROBATION_RELIABILITY and self.total_free >= pending:
            # Summed only as far as `pending`, which is all the decision needs (the reason
            # then says "at least" that many): a full sum would cost a scan of the fleet.
            cut = len(self.devices) > EXACT_FLEET
            for e in self.devices:  # _reliability(e) and _free(e), inline
                if e.live and e is not dev and (e.done + 1) / (e.done + e.lost + 2) > rel:
                    free = e.slots - (e.cores - e.free)
                    if free > 0:
                        better += free
                        if cut and better >= pending:
                            break
        window = self.pending.first(max(want * 4, self.window))
        if self.placement.policy is not RANDOM:
            cands = self._prefix(view.id, window, want)
        else:
            cache, make = self._cands, self._candidate
            cands = [cache.get(key) or make(key) for key in window]
        everyone = NOTHING
        if self.n_live <= self._most_lost:  # else no task was lost on every live node
            most = max(len(c.failed_on) for c in cands)
            if most and self.n_live <= most:
                # `live <= failed_on` can only hold when no more nodes are live than lost it.
                everyone = frozenset(e.name for e in self.devices if e.live)
        cluster = scheduler.ClusterView(pending, total, better, everyone)
        self.counters.decisions += 1
        return scheduler.plan_lease(view, want, cands, cluster, self.placement)

    def _prefix(self, node: str, window: list[int], want: int) -> list[scheduler.Candidate]:
        """The part of the window that decides as the whole window would: of each job, its
        candidates up to the one that completes `want` that surely fit, each of its own group.

        Every policy but `random` orders a job's candidates as the queue does: `fair` takes
        each customer's queue in order, `reliability` sorts it stably by the job's typical
        run, `deadline` sorts the whole window stably by the job's slack; a key is the job's,
        so a job's candidates keep their queue order among themselves. plan_lease takes at
        most `want`, each of its own group, and a group is one job's: a job's candidates
        after its `want`-th sure fit are always preceded by `want` that fit of the same key,
        so they are never reached. Customers first appear in the same order (each job's
        first candidate is kept), so the round robin turns the same way."""
        cache, make = self._cands, self._candidate
        job_of = self.job_of
        out = []
        full: set[int] = set()  # jobs with `want` of them: the rest of theirs is never reached
        last = job_of[window[-1] % PRIORITY_SHIFT]
        if want == 1:  # the common case: a job's first sure fit is its last candidate
            for key in window:
                j = job_of[key % PRIORITY_SHIFT]
                if j in full:
                    continue
                c = cache.get(key) or make(key)
                out.append(c)
                if c.failed_on or node in c.exclude or c.holder_free or c.sticky:
                    continue  # it may not fit: look further
                full.add(j)
                if key >= PRIORITY_SHIFT and last == j:
                    break  # originals come in id order: the rest of the window is this job's
            return out
        sure: dict[int, set[int]] = {}  # job -> groups of its candidates that surely fit
        for key in window:
            t = key % PRIORITY_SHIFT
            j = job_of[t]
            if j in full:
                continue
            c = cache.get(key) or make(key)
            out.append(c)
            if c.failed_on or node in c.exclude or c.holder_free or c.sticky:
                continue  # it may not fit: look further
            groups = sure.get(j)
            if groups is None:
                groups = sure[j] = set()
            groups.add(t if c.group is None else c.group)
            if len(groups) >= want:
                full.add(j)
                if key >= PRIORITY_SHIFT and last == j:
                    break  # originals come in id order: the rest of the window is this job's
        return out

    def _candidate(self, key: int) -> scheduler.Candidate:
        """The task's Candidate as _lease_pending builds it from its rows; kept until a copy of
        its group changes (placed, answered, lost) or its job's typical run does."""
        t = key % PRIORITY_SHIFT
        g = self.group_of[t]
        job = self.jobs[self.job_of[t]]
        group = self.groups[g]
        lost = group.lost_on.get(t) if group is not None and group.lost_on else None
        ran = group.ran if group is not None else None
        cand = Candidate(
            t,
            job.customer,
            0,
            NOTHING,
            frozenset(lost) if lost else NOTHING,
            None if g == t else g,
            frozenset(ran) if ran else NOTHING,
            0,
            0,
            0.0,  # waited_s
            False,
            False,
            None,
            job.typical,  # est_s
            job.deadline,
        )
        self._cands[key] = cand
        return cand

    def _changed(self, group: int) -> None:
        """A copy of `group` was placed, answered or lost: its copies' candidates are stale."""
        self._cands.pop(PRIORITY_SHIFT + group, None)
        open_ = self.groups[group]
        for m in open_.members if open_ is not None else ():
            self._cands.pop(m, None)

    def _grant(self, dev: Device, t: int, now: float) -> None:
        name = dev.name
        state = self.state
        task = state[t]
        g = self.group_of[t]
        j = self.job_of[t]
        if task.state is PENDING and not self.backup[t]:  # _dequeue(t), inline
            self.pending.discard((PRIORITY_SHIFT if g == t else 0) + t)
            job = self.jobs[j]
            job.pending -= 1
            if not job.pending:
                self._drained.add(j)
                self._may_be_due(j)
        state[t] = apply(task, Leased(name, now, self.lease_s))
        group = self.groups[g]
        if group is None:
            group = self._group(g)
        ran, involved = group.ran, group.involved
        if name not in ran:
            ran.append(name)
        if name not in involved:
            involved.append(name)
        cands = self._cands  # _changed(g), inline: t is g or one of its members
        cands.pop(PRIORITY_SHIFT + g, None)
        for m in group.members:
            cands.pop(m, None)
        dev.held += 1
        if g == t:
            running = self.jobs[j].running
            running[t] = now
            if len(running) == 1:  # its oldest running task changed
                self._may_be_due(j)
        self.counters.leases += 1

    def _backups(
        self, view: scheduler.NodeView, free: int, now: float
    ) -> list[scheduler.Assignment]:
        """Backup copies of stragglers (store: `_lease_backups`): jobs with nothing pending."""
        if now < self._due_at - DUE_MARGIN_S:
            return []  # no drained job's oldest task is due: plan_backups would find none
        # Of each drained job with tasks running: its oldest, and how long its tasks must run
        # to be backed up (backup_after, once per job: the same for all of its tasks).
        jobs = self.jobs
        heads = []
        after: dict[int, float] = {}
        due = math.inf
        straggling = False
        for j in self._drained:
            job = jobs[j]
            running = job.running
            if not running or not job.backups:
                continue
            items = iter(running.items())
            t, at = next(items)
            heads.append((at, t, j, items))
            if job.typical is not None:
                after[j] = wait = job.wait
                if at + wait < due:  # _due_at(job)
                    due = at + wait
                if not straggling and now - at > wait:  # _may_straggle(job, now)
                    straggling = True
        self._due_at = due
        if not straggling:
            return []  # plan_backups would find no straggler: spare building them
        # The store's query: leased originals of such jobs, not the asker's, leased over
        # BACKUP_MIN_S ago, with no copy open (those wait in `backed`), oldest first, 64. Each
        # job's `running` is in that order already; merged here by (leased_at, id).
        heapq.heapify(heads)
        name = view.id
        state, groups = self.state, self.groups
        cutoff = now - scheduler.BACKUP_MIN_S
        scanned = 0
        stragglers: list[scheduler.Straggler] = []
        # plan_backups takes the `free` longest-running of those it does not pass over; the
        # scan meets them longest-running first, so once it has `free`, only those running
        # as long as the last (a tie, ordered by id) could still be taken: it stops there.
        enough = -math.inf
        while heads and scanned < BACKUP_SCAN:
            at, t, j, items = heads[0]
            if at >= cutoff or now - at < enough:
                break
            following = next(items, None)
            if following is None:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (following[1], following[0], j, items))
            holder = state[t].node
            if holder is None or holder == name:
                continue
            scanned += 1
            # Only those plan_backups would not pass over (too young, or a copy already held
            # or run by the asker) are built: the rest count toward the 64 read, as the
            # store's rows do, and decide nothing.
            limit = after.get(j)
            if limit is None or now - at <= limit or name in _involved(groups[t]):
                continue
            stragglers.append(
                scheduler.Straggler(t, holder, now - at, jobs[j].typical, 0, NOTHING, NOTHING)
            )
            if len(stragglers) == free:
                enough = now - at
        if not scanned:
            return []
        self.counters.decisions += 1
        return scheduler.plan_backups(view, free, stragglers)

    # -- results, losses, verdicts ---------------------------------------------------------------

    def report(self, d: int, t: int, digest: str, now: float, took: float) -> None:
        """Device `d` reports `digest` for `t` after `took` seconds (the right one is RIGHT)."""
        dev = self.devices[d]
        name = dev.name
        state = self.state
        task = state[t]
        if task.state is not LEASED or task.node != name:
            return  # superseded: the lease was lost or the copy cancelled
        state[t] = apply(task, dev.reported)
        dev.held -= 1
        dev.done += 1
        self.counters.results += 1
        g = self.group_of[t]
        j = self.job_of[t]
        job = self.jobs[j]
        if g == t:  # only originals run as stragglers (copies are never in these)
            if job.running.pop(t, None) is None:
                job.backed.pop(t, None)
        elif g in job.backed:  # else _copy_closed(g) has nothing to do
            self._copy_closed(g)
        took_ = job.took
        if len(took_) < MEDIAN_SAMPLE:
            took_.append(took)
            n = len(took_)
            if n & (n - 1) == 0 or n == MEDIAN_SAMPLE:
                # The store's median moves with every result; here it is taken at 1, 2, 4,
                # ... 128 and 201 results, then kept (candidates are rebuilt when it moves).
                job.typical = typical = statistics.median(took_)
                job.wait = scheduler.backup_after(typical)
                self._cands.clear()
                self._may_be_due(j)
        group = self.groups[g]
        if group is None:
            group = self._group(g)
        group.results[name] = digest
        members = group.members
        cands = self._cands
        cands.pop(PRIORITY_SHIFT + g, None)  # _changed(g), inline
        if members:
            for m in members:
                cands.pop(m, None)
        elif g == t and group.quorum <= 1:
            # The fast path: a first result that its node's record lets go unchecked.
            quorum = group.quorum or trust.quorum_for(dev.record, self.draw())
            if quorum <= 1:
                group.quorum = 1
                self._settle(g, True, now)
                self.counters.wrong_accepted += digest != RIGHT
                self._vote(dev, agreed=True)
                return
            group.quorum = quorum
        self._verify(g, now)

    def expire(self, t: int, now: float) -> None:
        """The lease of `t` ran out (its device went away): back to the queue, or failed."""
        task = self.state[t]
        if task.state is not TaskState.LEASED or task.lease_expires is None:
            return
        dev = self.devices[self.index[task.node or ""]]
        new = apply(task, Expired(max(now, task.lease_expires)))
        g = self.group_of[t]
        self.counters.expired += 1
        dev.held -= 1
        dev.lost += 1
        self._set_quota(dev, inflight.shrunk(dev.quota))
        group = self._group(g)
        if group.lost_on is None:
            group.lost_on = {}
        lost_on = group.lost_on.setdefault(t, set())
        lost_on.add(task.node or "")
        self._most_lost = max(self._most_lost, len(lost_on))
        if (task.node or "") in group.ran:
            group.ran.remove(task.node or "")
        self._changed(g)
        self._cands.pop(self._key(t), None)
        self._not_running(t)
        if self.backup[t] and new.state is TaskState.PENDING:
            new = apply(new, Cancelled(f"backup copy lost on {task.node}"))
        self.state[t] = new
        if g != t and new.state is not TaskState.PENDING:
            self._copy_closed(g)
        if new.state is TaskState.PENDING:
            self._enqueue(t)
        elif g != t:
            self._verify(g, now)
        elif new.state is TaskState.FAILED:
            self._cancel_copies(g)
            self._finish(g, now, ok=False)

    def _verify(self, g: int, now: float) -> None:
        """Decide on group `g` from its results so far (store: `_verify_groups`)."""
        state = self.state
        if state[g].state in SETTLED:
            return
        gone = self._quarantined_names
        group = self.groups[g]
        if group is None:
            group = self._group(g)
        results = group.results
        votes = [*results.items()]
        if gone and not gone.isdisjoint(results):  # else none of its voters is quarantined
            votes = [(n, dg) for n, dg in votes if n not in gone]
        outstanding = 1 if state[g].state in OPEN else 0
        for m in group.members:
            if state[m].state in OPEN:
                outstanding += 1
        involved = frozenset(group.involved)
        quorum = group.quorum
        if quorum == 0 and votes:
            quorum = trust.quorum_for(self.devices[self.index[votes[0][0]]].record, self.draw())
            group.quorum = quorum
        verdict = trust.verdict(votes, max(quorum, 1), outstanding, involved)
        if type(verdict) is trust.Accept:
            self._settle(g, True, now)
            self.counters.wrong_accepted += verdict.digest != RIGHT
            index, devices = self.index, self.devices
            for n in verdict.agreeing:
                self._vote(devices[index[n]], agreed=True)
            for n in verdict.disputing:
                self._vote(devices[index[n]], agreed=False)
        elif type(verdict) is trust.NeedMore:
            for _ in range(verdict.replicas):
                self._copy(g, backup=False)
        else:
            self._settle(g, False, now)

    def _not_running(self, t: int) -> None:
        job = self.jobs[self.job_of[t]]
        job.running.pop(t, None)
        job.backed.pop(t, None)

    def _copy_closed(self, g: int) -> None:
        """A copy of `g` is no longer open: if none is and `g` still runs, it may be backed up."""
        job = self.jobs[self.job_of[g]]
        if g not in job.backed or any(self.state[m].state in OPEN for m in self._group(g).members):
            return
        at = job.backed.pop(g)
        if self.state[g].state is TaskState.LEASED:
            job.running[g] = at
            job.running = dict(sorted(job.running.items(), key=_by_lease))
            self._may_be_due(self.job_of[g])

    def _cancel_copies(self, g: int) -> None:
        """The original failed for good: its copies still open are no longer needed."""
        for m in _members(self.groups[g]):
            if self.state[m].state in OPEN:
                self._close(g, m)
                self.state[m] = apply(self.state[m], Cancelled("the task failed"))

    def _close(self, g: int, m: int) -> None:
        """Copy `m` of `g` leaves the queue, or its device is told to drop it."""
        task = self.state[m]
        if task.state is TaskState.LEASED:
            d = self.index[task.node or ""]
            self.devices[d].held -= 1
            self.counters.cancelled_running += 1
            if self.on_cancel is not None:
                self.on_cancel(d, m)
        elif not self.backup[m]:
            self._dequeue(m)
        self._not_running(m)
        self._cands.pop(self._key(m), None)

    def _settle(self, g: int, ok: bool, now: float) -> None:
        """The group's verdict: the original settles, copies still open are cancelled."""
        state = self.state
        task = state[g]
        if task.state in OPEN:
            self._close(g, g)
        state[g] = apply(task, AGREED if ok else DISAGREED)
        group = self.groups[g]
        for m in group.members if group is not None else ():
            task = state[m]
            if task.state is VERIFYING:
                state[m] = apply(task, AGREED if ok else COPY_DISAGREED)
            elif task.state in OPEN:
                self._close(g, m)
                state[m] = apply(task, NOT_NEEDED)
        self._finish(g, now, ok=ok)

    def _may_be_due(self, j: int) -> None:
        """Job `j` may have become due for a backup sooner than `_due_at` says: lower it."""
        job = self.jobs[j]
        if j in self._drained and job.running and job.backups:
            self._due_at = min(self._due_at, _due_at(job))

    def _finish(self, g: int, now: float, *, ok: bool) -> None:
        j = self.job_of[g]
        job = self.jobs[j]
        job.settled += 1
        if ok:
            self.counters.settled_ok += 1
        else:
            self.counters.failed += 1
        if job.settled == job.tasks:
            job.finished_at = now
            # Nothing of it runs or is queued again: the backup scan need not step over it.
            self._drained.discard(j)
        self.groups[g] = None  # _forget(g), inline

    def _forget(self, g: int) -> None:
        """Drop what only an open group needs: nothing reads it once the group is settled (no
        copy of it is leased any more), and a million groups' sets weigh a gigabyte."""
        self.groups[g] = None

    def _vote(self, dev: Device, *, agreed: bool) -> None:
        dev.record = trust.record_after(dev.record, agreed)
        if agreed:
            quota = dev.quota
            grown = inflight.grown(quota)
            if grown != quota:  # _set_quota(dev, grown), inline
                cores = dev.cores
                if dev.live:
                    busy = cores - dev.free
                    before = dev.slots
                    dev.slots = after = inflight.scheduling_slots(grown, cores)
                    self.total_slots += after - before
                    self.total_free += max(0, after - busy) - max(0, before - busy)
                else:
                    dev.slots = inflight.scheduling_slots(grown, cores)
                dev.quota = grown
        else:
            dev.quarantined = True
            self._quarantined_names.add(dev.name)
            if dev.live:
                self.counters.quarantined += 1
                self._set_live(dev, False)

    # -- the fleet ---------------------------------------------------------------------------

    def set_live(self, d: int, live: bool) -> None:
        """The device came up (and is not quarantined) or went away."""
        self._set_live(self.devices[d], live)

    def _set_live(self, dev: Device, live: bool) -> None:
        live = live and not dev.quarantined
        if live == dev.live:
            return
        sign = 1 if live else -1
        self.n_live += sign
        self.total_slots += sign * dev.slots
        dev.live = live
        self.total_free += sign * _free(dev)

    def _set_quota(self, dev: Device, quota: int) -> None:
        if quota == dev.quota:
            return
        if dev.live:
            cores = dev.cores
            busy = cores - dev.free
            before = dev.slots
            dev.slots = after = inflight.scheduling_slots(quota, cores)
            self.total_slots += after - before
            self.total_free += max(0, after - busy) - max(0, before - busy)
        else:
            dev.slots = inflight.scheduling_slots(quota, dev.cores)
        dev.quota = quota


def _free(dev: Device) -> int:
    """Free slots as `_fleet_views` counts them: quota-backed slots less what it runs (of a
    live device; the caller says whether it counts)."""
    return max(0, dev.slots - (dev.cores - dev.free))


def _due_at(job: Job) -> float:
    """When the job's oldest running task becomes due for a backup (see `_backups`)."""
    if job.typical is None:
        return math.inf
    return next(iter(job.running.values())) + job.wait


def _members(group: Group | None) -> list[int] | tuple[()]:
    return group.members if group is not None else ()


def _involved(group: Group | None) -> list[str] | tuple[()]:
    return group.involved if group is not None else ()


def _by_lease(item: tuple[int, float]) -> tuple[float, int]:
    """(task, leased_at) in the store's order for stragglers: leased_at, then id."""
    return (item[1], item[0])
