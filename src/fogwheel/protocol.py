"""Wire models of the HTTP API under /v1: the contract between coordinator, nodes and SDK.

Bytes travel as `Value`: a SHA-256 name and a size, with the bytes inline (base64) when small
or in the blob store when large. Whoever receives a Value checks the bytes against the name.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

API_VERSION = "v1"
INLINE_MAX = 64 * 1024  # bytes carried inline in JSON; larger values go through /v1/blobs
MAX_TASKS_PER_JOB = 100_000
SQL_INT_MAX = 2**31 - 1  # ids, cursors and sizes live in SQL INTEGER columns (32-bit on PostgreSQL)
MAX_WALL_S = 7 * 24 * 3600  # a week: the longest a task may run
MAX_CPU_S = MAX_WALL_S * 1024  # a week on 1,024 cores: no CPU-seconds claim is larger
MAX_KEPT_BYTES = 1 << 50  # the most state a node may say it kept


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("NUL characters are not allowed")
    return text


def _id_digits(text: str) -> str:
    if int(text) > SQL_INT_MAX:
        raise ValueError(f"no id is larger than {SQL_INT_MAX}")
    return text


def _inside_task_dir(name: str) -> str:
    if ".." in name.split("/"):
        raise ValueError("a file name must stay inside the task's directory: no '..' parts")
    return name


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
AgentVersion = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,62}$")]
Id = Annotated[int, Field(ge=0, le=SQL_INT_MAX)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_no_nul)]
FileName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,199}$"),
    AfterValidator(_inside_task_dir),
]


KeepKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/-]{1,200}$")]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Value(Model):
    """Bytes named by their SHA-256; `data` (base64) is present when carried inline."""

    sha: Sha256
    size: int = Field(ge=0, le=SQL_INT_MAX)
    data: str | None = Field(default=None, max_length=INLINE_MAX * 4 // 3 + 8)

    def raw(self) -> bytes | None:
        return None if self.data is None else base64.b64decode(self.data)


class Limits(Model):
    wall_s: float = Field(default=600.0, gt=0, le=MAX_WALL_S)
    cpu_s: float | None = Field(default=None, gt=0, le=MAX_CPU_S, allow_inf_nan=False)
    memory_mb: int = Field(default=256, ge=16, le=1 << 20)


class TaskIn(Model):
    """One task of a job: arguments for a Python job, or a command line with files."""

    args: Value | None = None
    command: list[Annotated[str, StringConstraints(max_length=4096)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )
    inputs: dict[FileName, Value] = Field(default_factory=dict)
    outputs: list[FileName] = Field(default_factory=list, max_length=100)
    needs: list[Name] = Field(default_factory=list, max_length=20)
    keep_in: KeepKey | None = Field(
        default=None,
        description="node-local state to restore into the task's `keep/` directory, if the node "
        "that runs it kept state under this key (placement prefers such a node); never uploaded",
    )
    keep_out: KeepKey | None = Field(
        default=None,
        description="after a successful run the node keeps the task's `keep/` directory under "
        "this key, for a later task's `keep_in` (an optimizer's state, say)",
    )
    image: Sha256 | None = Field(
        default=None,
        description="command tasks: a program image of yours (`fogwheel images push`) to run "
        "in as `/`; placed only on nodes of its architecture (docs/images.md)",
    )


class ToleranceIn(Model):
    """Replicas agree when every number in their results is within this tolerance."""

    rel: float = Field(default=1e-9, ge=0, le=1, allow_inf_nan=False)
    abs: float = Field(default=0.0, ge=0, le=1e300, allow_inf_nan=False)


class JobIn(Model):
    name: Name = "job"
    kind: Literal["python", "command"]
    fn: Value | None = None
    tasks: list[TaskIn] = Field(min_length=1, max_length=MAX_TASKS_PER_JOB)
    limits: Limits = Field(default_factory=Limits)
    max_attempts: int = Field(default=3, ge=1, le=100)
    replicas: Literal["adaptive"] | Annotated[int, Field(ge=1, le=5)] = Field(
        default="adaptive",
        description="'adaptive': check results of new or doubtful nodes on another node, and "
        "spot-check proven ones; N: run every task on N distinct nodes",
    )
    quorum: int = Field(default=2, ge=1, le=5, description="matching results needed when checked")
    tolerance: ToleranceIn | None = Field(
        default=None,
        description="compare numeric results within a tolerance instead of by content hash",
    )
    client_token: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = (
        Field(
            default=None, description="makes a retried submission return the first job, not a twin"
        )
    )
    backups: bool = Field(
        default=True,
        description="near the end of the job, idle nodes run backup copies of its slowest "
        "running tasks; the first result wins",
    )
    max_cost: float | None = Field(
        default=None,
        gt=0,
        le=1e9,
        allow_inf_nan=False,
        description="credits: refused (422) when its limits let it cost more (tasks x runs x "
        "limits.cpu_s, else wall_s, x the price); cancelled, reason 'max cost reached', once "
        "its charges reach it",
    )
    env: Sha256 | None = Field(
        default=None,
        description="python jobs: the SHA-256 of a Python environment's lock (docs/envs.md), an "
        "uploaded blob of yours, as are its wheels; nodes import from it, built once per node",
    )
    deadline: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Unix time (seconds) by which it should be done: under the coordinator's "
        "`deadline` placement, least slack first (docs/sim.md); refused (422) when it has "
        "passed or is more than MAX_DEADLINE_S ahead. Not enforced: a late job still runs",
    )


MAX_DEADLINE_S = 366 * 86400.0  # a job's deadline at most this far ahead (JobIn.deadline)


class WaitingFor(Model):
    """Why a task waits (core/waiting.py): a stable `reason` code and a sentence that says
    what to do; `stuck` when the fog as it is will never run it."""

    reason: str = Field(
        description="no-live-nodes | quarantined | no-node-has-capability | "
        "no-node-has-memory | no-node-fits-environment | checking-needs-another-owner-or-node | "
        "all-nodes-busy | queued"
    )
    sentence: str
    stuck: bool


class JobWaiting(WaitingFor):
    tasks: int = Field(description="how many of the job's waiting tasks wait for this reason")


class JobOut(Model):
    id: int
    name: str
    kind: str
    state: Literal["running", "done", "failed", "cancelled"] = Field(
        description="failed: every task finished and at least one of them failed"
    )
    total: int
    finished: int
    failed: int
    created_at: float
    waiting: JobWaiting | None = Field(
        default=None, description="why its tasks wait, when they do (GET /v1/jobs/{id} only)"
    )
    cost: int = Field(default=0, description="micro-credits charged for it so far (the ledger)")
    checks: int = Field(default=0, description="paid runs that checked another run's result")
    checks_cost: int = Field(default=0, description="micro-credits of `cost` paid for checks")
    max_cost: int | None = Field(default=None, description="its cap, micro-credits")
    deadline: float | None = Field(default=None, description="Unix time it should be done by")
    cancel_reason: str | None = Field(
        default=None, description="why it was stopped, when not by the customer"
    )


class JobList(Model):
    jobs: list[JobOut]


ErrorArg = (
    Annotated[str, StringConstraints(max_length=10_000)]
    | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
    | float
    | bool
    | None
)


class ErrorInfo(Model):
    kind: Literal["exception", "exit", "limit", "crash", "lost", "input", "cancelled", "disputed"]
    type: str = Field(default="", max_length=1000)  # `module:qualname`, or a builtin's name
    message: str = Field(default="", max_length=100_000)
    traceback: str = Field(default="", max_length=200_000)
    exc: Value | None = None  # legacy: a pickled exception; the SDK never unpickles it
    # An exception's plain `args`, from which the SDK rebuilds an allow-listed type.
    args: list[ErrorArg] | None = Field(default=None, max_length=16)


class TaskResult(Model):
    index: int
    task_id: int
    seq: int
    state: Literal["done", "failed", "cancelled"]
    value: Value | None = None
    outputs: dict[str, Value] = Field(default_factory=dict)
    error: ErrorInfo | None = None


class ResultsOut(Model):
    job_id: int
    cursor: int  # pass back as `after` to get only newer results
    total: int
    finished: int
    results: list[TaskResult]
    leased: list[int] | None = Field(
        default=None,
        description="indexes of its tasks held by a node now (asked for with PollIn.leased)",
    )


JobKey = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$"), AfterValidator(_id_digits)]


class PollIn(Model):
    """Wait for results of several jobs at once: `jobs` maps a job id to its cursor.

    `leased` maps a job id to how many of its tasks the caller knows are held by nodes: the
    answer then lists them (`ResultsOut.leased`), and a different count is news too."""

    jobs: dict[JobKey, Id] = Field(max_length=1000)
    wait: float = Field(default=0.0, ge=0, le=60)
    leased: dict[JobKey, Id] | None = Field(default=None, max_length=1000)


class PollOut(Model):
    jobs: list[ResultsOut]


class AttemptOut(Model):
    n: int
    node_id: str
    leased_at: float
    ended_at: float | None
    outcome: str | None
    reason: str


class TaskOut(Model):
    id: int
    job_id: int
    index: int
    state: str
    attempts: int
    node_id: str | None
    error: ErrorInfo | None
    history: list[AttemptOut]
    waiting_for: WaitingFor | None = None


class TaskList(Model):
    tasks: list[TaskOut]


# -- nodes --------------------------------------------------------------------------------


class NodeJoin(Model):
    token: Annotated[str, StringConstraints(min_length=8, max_length=200)]
    name: Name
    cores: int = Field(ge=1, le=1024)
    memory_mb: int = Field(ge=16, le=1 << 24)
    disk_mb: int = Field(ge=0, le=SQL_INT_MAX)
    platform: Annotated[str, StringConstraints(max_length=200), AfterValidator(_no_nul)] = ""
    capabilities: list[Name] = Field(default_factory=list, max_length=100)


class NodeJoined(Model):
    node_id: str
    credential: str
    lease_seconds: float
    public_key: str = Field(description="the coordinator's Ed25519 key (raw, base64)")


class TaskReport(Model):
    task_id: Id
    attempt: int = Field(ge=1, le=SQL_INT_MAX)
    ok: bool
    value: Value | None = None
    outputs: dict[FileName, Value] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    # A node's own word, bounded so that no value can overflow a column; what it is paid
    # for is the quorum's, capped by what the coordinator saw (core/credit.py).
    cpu_s: float = Field(default=0.0, ge=0, le=MAX_CPU_S, allow_inf_nan=False)
    wall_s: float = Field(default=0.0, ge=0, le=MAX_WALL_S, allow_inf_nan=False)
    kept: int | None = Field(
        default=None,
        ge=0,
        le=MAX_KEPT_BYTES,
        description="bytes of state the node kept under the lease's keep_out",
    )


_ENV_PLATFORM = r"^cp3[0-9]{1,2}-[a-z0-9_]{1,32}-(glibc|musl)_[0-9]{1,2}_[0-9]{1,3}$"
EnvPlatform = Annotated[str, StringConstraints(pattern=_ENV_PLATFORM)]
ServeUrl = Annotated[str, StringConstraints(pattern=r"^https?://[A-Za-z0-9.\[\]:-]{1,180}/?$")]
ContentId = Annotated[str, StringConstraints(pattern=r"^c[0-9a-f]{24}$")]


class SyncIn(Model):
    """One round trip of a node: report results, renew leases, hand back, ask for work; and
    for the CDN, the shares it now stores, those that failed its checks, the bytes it served."""

    results: list[TaskReport] = Field(default_factory=list, max_length=10_000)
    renew: list[Id] = Field(default_factory=list, max_length=10_000)
    release: list[Id] = Field(default_factory=list, max_length=10_000)
    want: int = Field(default=0, ge=0, le=1000)
    slots_free: int = Field(default=0, ge=0, le=1024)
    serve_url: ServeUrl | None = Field(default=None, description="the node's chunk server")
    stored: list[Sha256] = Field(default_factory=list, max_length=10_000)
    dropped: list[Sha256] = Field(
        default_factory=list,
        max_length=10_000,
        description="cached blobs, unpacked images and kept state this node no longer holds "
        "(its caches evicted them): placement stops counting it as their holder",
    )
    bad: list[Sha256] = Field(default_factory=list, max_length=10_000)
    refused: list[Sha256] = Field(
        default_factory=list, max_length=10_000, description="shares over the node's quota"
    )
    served: dict[ContentId, Annotated[int, Field(ge=0, le=1 << 50)]] = Field(
        default_factory=dict, max_length=10_000
    )
    agent_version: AgentVersion | None = Field(
        default=None, description="the fogwheel version the agent runs (agent roll-outs)"
    )
    envs: list[Sha256] | None = Field(
        default=None,
        max_length=64,
        description="the Python environments (lock SHA-256s) the node holds built, sent when "
        "that changes; null: unchanged (placement prefers holders, docs/envs.md)",
    )
    env_platform: EnvPlatform | None = Field(
        default=None,
        description="the platform its Python installs wheels for, e.g. cp311-x86_64-glibc_2_36",
    )


class AppLease(Model):
    """The app version a task's lease bound (docs/apps.md): its canonical manifest and the
    coordinator's signature of it; the node checks both, and the lease against them."""

    app: str = Field(max_length=64)
    name: str = Field(max_length=64)
    version: Sha256
    manifest: str = Field(max_length=64 * 1024)
    signature: str = Field(max_length=200)


class TaskLease(Model):
    task_id: int
    job_id: int
    attempt: int
    kind: Literal["python", "command"]
    fn: Value | None
    args: Value | None
    command: list[str] | None
    inputs: dict[str, Value]
    outputs: list[str]
    limits: Limits
    lease_expires: float
    tenant: str = Field(
        default="", description="whose task this is (a hash): a worker process runs one tenant's"
    )
    keep_in: str | None = None  # node-local state names (see TaskIn), namespaced per customer
    keep_out: str | None = None
    image: str | None = Field(
        default=None, description="the program image its command runs in (docs/images.md)"
    )
    env: str | None = Field(
        default=None, description="the environment lock its worker imports from (docs/envs.md)"
    )
    app: AppLease | None = Field(
        default=None, description="an app's task: the version this lease runs (docs/apps.md)"
    )
    signature: str = Field(
        default="", description="the coordinator's Ed25519 signature of the fields above"
    )


class Rejected(Model):
    task_id: int
    reason: str


class ShareToStore(Model):
    sha: Sha256
    size: int
    content_id: str


class AgentOffer(Model):
    """An agent version the node should run (docs/rollouts.md): with `sha`, a published wheel
    to fetch from /v1/nodes/me/agent/{version}, signed by the coordinator's key over version,
    sha and size (agent_release.py); without, the node's own installed version, to go back to."""

    version: AgentVersion
    sha: Sha256 | None = None
    size: int | None = Field(default=None, ge=1, le=1 << 31)
    signature: str | None = Field(default=None, max_length=200)
    rollout: str = Field(max_length=32, description="the roll-out that asks for it")


class SyncOut(Model):
    acked: list[int]
    rejected: list[Rejected]
    lost: list[int]  # leases that were not renewed: stop working on these
    tasks: list[TaskLease]
    lease_seconds: float
    store: list[ShareToStore] = Field(
        default_factory=list, description="CDN shares to fetch from /v1/blobs and keep"
    )
    drop: list[str] = Field(default_factory=list, description="CDN shares to delete")
    next_sync_s: float | None = Field(
        default=None,
        description="the longest the node should wait before its next sync when it has "
        "nothing to report sooner (core/pacing.py); null: its own idle interval",
    )
    pace_s: float = Field(
        default=0.0,
        description="the least wait before a node holding work syncs again, unless a lease "
        "would expire: the coordinator is over its load (core/pacing.py); 0: at its own pace",
    )
    agent: AgentOffer | None = Field(
        default=None, description="an agent version to change to (docs/rollouts.md)"
    )


class NodeOut(Model):
    id: str
    name: str
    state: Literal["up", "draining", "gone", "quarantined", "revoked"]
    cores: int
    memory_mb: int
    disk_mb: int
    platform: str
    capabilities: list[str]
    held: int
    done: int
    lost: int
    reliability: float = Field(description="share of attempts finished, not lost (availability)")
    agreed: int = Field(default=0, description="results that agreed with the verdict")
    disputed: int = Field(default=0, description="results that contradicted the verdict")
    reputation: float = Field(default=0.5, description="trust in its results (core/trust.py)")
    check_rate: float = Field(default=1.0, description="share of its results checked now")
    last_seen: float
    quarantine_reason: str | None = Field(
        default=None, description="why it is quarantined, when it is (an operator may pardon)"
    )
    owner_id: str = Field(default="operator", description="the owner whose device it is")
    quota: int = Field(default=2, description="tasks it may hold at once (core/quota.py)")


class NodeList(Model):
    nodes: list[NodeOut]


class FieldProblem(Model):
    """One wrong field of a 422: where (`loc`, e.g. ["body", "tasks", 0]), what, its kind."""

    loc: list[str | int]
    msg: str
    type: str


class Problem(Model):
    """Every error answer: what went wrong, in one sentence a person can act on."""

    error: str
    detail: list[FieldProblem] | None = Field(
        default=None, description="422 only: each field that was wrong"
    )


# -- small answers (typed, so that generated clients and schemathesis know their shape) ----


class Health(Model):
    """The coordinator answers: it is up, and which version it runs."""

    ok: bool
    version: str


class WhoAmI(Model):
    """Whose key this is: its kind (which routes take it), id and name."""

    kind: Literal["customer", "admin", "owner", "node"]
    id: str
    name: str


class CustomerCreated(Model):
    """A new customer and its API key, shown once: only the key's hash is kept."""

    customer_id: str
    api_key: str


class UploadState(Model):
    """How much of a blob the coordinator holds from you: `complete` with its `size` once it
    is whole and yours, else the bytes `received` so far (where a resumed upload goes on)."""

    sha: Sha256
    complete: bool
    received: int = Field(ge=0)
    size: int | None = Field(default=None, description="the whole blob's bytes, when known")


class BlobInfo(Model):
    sha: Sha256
    size: int
    created: float | None = Field(description="when it became yours; null for old blobs")


class BlobList(Model):
    blobs: list[BlobInfo]


class CoordinatorKey(Model):
    """The Ed25519 key that signs task specs, with the fingerprint and pin nodes check."""

    algorithm: Literal["Ed25519"]
    public_key: str
    fingerprint: str
    pin: str


class ResultAcked(Model):
    task_id: int
    acked: bool
