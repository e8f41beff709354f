"""Tables. Times are float seconds since the epoch; JSON columns hold protocol models.

A column added to an existing table must be nullable or have a scalar `default`: a database
made by an older version gets it with ALTER TABLE at start (store/migrate.py)."""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
)

metadata = MetaData()

settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# Customers, nodes and the operator authenticate with a secret; only its SHA-256 is kept.
principals = Table(
    "principals",
    metadata,
    Column("secret_hash", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # customer | node | admin | owner
    Column("id", String(64), nullable=False),
    Column("name", String(200), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
)

# Owners hold devices, join tokens and earnings (core/owners.py); `operator` is the default.
owners = Table(
    "owners",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
)

# A join token admits devices for its owner, up to a cap and a rate (a token bucket), until
# it expires or is revoked; only the secret's SHA-256 is kept. `origin`: flag (the
# coordinator's --join-token, replaced when it changes) | created (`fogwheel tokens create`).
join_tokens = Table(
    "join_tokens",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("owner_id", String(64), nullable=False, index=True),
    Column("origin", String(16), nullable=False),
    Column("max_devices", Integer, nullable=False),
    Column("rate_per_hour", Float, nullable=False),
    Column("joined", Integer, nullable=False, default=0),
    Column("bucket", Float, nullable=False),
    Column("bucket_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("cores", Integer, nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("disk_mb", Integer, nullable=False),
    Column("platform", String(200), nullable=False),
    Column("capabilities", Text, nullable=False, default="[]"),
    Column("serve_url", String(200), nullable=True),  # its chunk server (the CDN), if any
    Column("uplink_bps", Float, nullable=True),  # measured by fetching clients (moving average)
    Column("reach", String(16), nullable=True),  # direct | rendezvous, as probed (core/reach.py)
    Column("reach_at", Float, nullable=True),  # when it was probed
    Column("joined_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("state", String(16), nullable=False, default="up"),
    Column("slots_free", Integer, nullable=False, default=0),
    Column("done", Integer, nullable=False, default=0),
    Column("lost", Integer, nullable=False, default=0),
    # trust (core/trust.py): verdicts on this node's results
    Column("agreed", Integer, nullable=False, default=0),
    Column("disputed", Integer, nullable=False, default=0),
    Column("streak", Integer, nullable=False, default=0),
    Column("quarantined", Boolean, nullable=False, default=False),
    # owners (core/owners.py): whose device it is, the token it joined with, where it
    # connects from (/24), its in-flight quota (core/quota.py), and whether it was revoked
    Column("owner_id", String(64), nullable=True, index=True),
    Column("token_id", String(64), nullable=True),
    Column("network", String(64), nullable=True),
    Column("quota", Integer, nullable=False, default=2),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("quarantine_reason", Text, nullable=True),  # why, in a sentence (pardon clears it)
    # Python environments (store/envs.py): the platform its Python installs wheels for, and
    # the locks it holds built (JSON list), as its sync last said
    Column("env_platform", String(200), nullable=True),
    Column("envs", Text, nullable=True),
    # roll-outs (store/rollouts.py): the agent version its sync last said, and since when
    Column("agent_version", String(64), nullable=True),
    Column("agent_since", Float, nullable=True),
    # up intervals (core/uptime.py): when the current one began, and the completed ones
    Column("up_since", Float, nullable=True),
    Column("up_total_s", Float, nullable=False, default=0.0),
    Column("up_count", Integer, nullable=False, default=0),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("customer_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("fn", Text),  # Value JSON of the pickled function (python jobs)
    Column("fn_sha", String(64), index=True),
    Column("limits", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("total", Integer, nullable=False),
    Column("finished", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("cancelled", Boolean, nullable=False, default=False),
    Column("client_token", String(64)),
    Column("replicas", String(16), nullable=False, default="adaptive"),  # adaptive | N
    Column("quorum", Integer, nullable=False, default=2),
    Column("tolerance", Text),  # ToleranceIn JSON: compare results within it, not by hash
    Column("backups", Boolean, nullable=False, default=True),  # back up stragglers at the end
    Column("max_cost", BigInteger),  # micro-credits: stopped when its charges reach it
    Column("cancel_reason", String(200)),  # why it was cancelled, when not by the customer
    Column("env", String(64), nullable=True),  # its Python environment's lock (store/envs.py)
    Column("app_id", String(64), nullable=True),  # the app it runs (store/apps.py)
    Column("deadline", Float, nullable=True),  # Unix time it wants to be done by (placement)
    Index("ux_jobs_client_token", "customer_id", "client_token", unique=True),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("customer_id", String(64), nullable=False),
    Column("idx", Integer, nullable=False),  # position in the job
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("node_id", String(64)),
    Column("lease_expires", Float),
    Column("memory_mb", Integer, nullable=False, default=0),
    Column("needs", Text, nullable=False, default="[]"),
    Column("spec", Text, nullable=False),  # TaskIn JSON
    Column("result", Text),  # {"value": Value, "outputs": {...}} JSON
    Column("error", Text),  # ErrorInfo JSON
    Column("finish_seq", Integer),
    Column("finished_at", Float),
    Column("cpu_s", Float, nullable=False, default=0.0),
    # verification: a replica row runs the same spec for the task it is `replica_of`
    Column("replica_of", Integer, index=True),
    Column("quorum", Integer, nullable=False, default=0),  # 0: not decided yet
    Column("replicas", Integer, nullable=False, default=0),  # replica rows made for this task
    Column("digest", String(64)),  # the agreed result's digest
    Column("priority", Integer, nullable=False, default=1),  # 0 first: checks hold results back
    # a backup copy: a replica row leased to an idle node because the task runs long
    Column("sticky", Boolean, nullable=False, default=False),  # reads kept state (keep_in)
    Column("backup", Boolean, nullable=False, default=False),
    Column("input_bytes", BigInteger, nullable=False, default=0),  # of the blobs it reads
    Column("app_version", String(64), nullable=True),  # the app version its lease bound
    Index("ix_tasks_state_priority_id", "state", "priority", "id"),
    Index("ix_tasks_state_job", "state", "job_id"),  # is anything of a job still pending?
    Index("ix_tasks_job_seq", "job_id", "finish_seq"),
    Index("ix_tasks_job_idx", "job_id", "idx"),
    Index("ix_tasks_node", "node_id"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
    Column("n", Integer, nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("leased_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("outcome", String(16)),  # done | failed | lost | released | superseded
    Column("reason", Text, nullable=False),
    Column("digest", String(64)),  # of the reported result, for the quorum
    Column("report", Text),  # the reported value/outputs/error, kept until a verdict
    Column("cpu_s", Float),
    Column("app_version", String(64), nullable=True),  # the app version this attempt ran
    # The task's job, copied: a job's recent attempts (its median, store/leasing.py) by one
    # index, whatever the planner's statistics (null only on rows from before it existed,
    # filled in at upgrade: store/migrate.py)
    Column("job_id", Integer, nullable=True),
    Index("ix_attempts_task", "task_id"),
    Index("ix_attempts_node_open", "node_id", "outcome"),
    Index("ix_attempts_job_id", "job_id", "id"),
    # attempts that ended since a roll-out's step began (store/rollouts.outcomes, every 5 s):
    # a scan of the whole table without it, 63-103 ms at 500,000 attempts on PostgreSQL
    Index("ix_attempts_ended_at", "ended_at"),
)

# Who may read a blob: the customer who uploaded it or whose task produced it.
blob_owners = Table(
    "blob_owners",
    metadata,
    Column("sha", String(64), primary_key=True),
    Column("customer_id", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("at", Float, nullable=True),  # when it became the customer's (`fogwheel blobs ls`)
)

# Which blobs a task reads: a node may fetch them while it holds the task.
task_blobs = Table(
    "task_blobs",
    metadata,
    Column("task_id", Integer, primary_key=True),
    Column("sha", String(64), primary_key=True),
    Index("ix_task_blobs_sha", "sha"),
)

# Which blobs a node uploaded (PUT /v1/blobs hashes the body: it proved it has the bytes).
# A node may name only these (or inline bytes) as a task's output (store/leasing.py), so no
# report can hand a customer a blob that its node never had.
blob_uploads = Table(
    "blob_uploads",
    metadata,
    Column("sha", String(64), primary_key=True),
    Column("node_id", String(64), primary_key=True),
    Column("at", Float, nullable=False),
)

# Python environments' locks (core/envlock.py) that jobs named, and the wheel blobs each lock
# names: a node holding a task of a job with that lock may fetch them (store/envs.py).
env_locks = Table(
    "env_locks",
    metadata,
    Column("sha", String(64), primary_key=True),
    Column("body", Text, nullable=False),  # the lock's canonical JSON
    Column("size", BigInteger, nullable=False),  # bytes of its wheels
    Column("created_at", Float, nullable=False),
)
env_wheels = Table(
    "env_wheels",
    metadata,
    Column("lock", String(64), primary_key=True),
    Column("sha", String(64), primary_key=True),
    Index("ix_env_wheels_sha", "sha"),
)

# Which nodes hold a copy of a blob in their cache (they fetched it or produced it): placement
# prefers them for the tasks that read it.
blob_holders = Table(
    "blob_holders",
    metadata,
    Column("sha", String(64), primary_key=True),
    Column("node_id", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
)

# Program images (core/images.py, store/images.py): a customer's registered image, named by
# its manifest's SHA-256. The manifest and its layers are blobs of that customer; a task that
# runs in the image lists them all in task_blobs, so its node may fetch them.
images = Table(
    "images",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),  # the manifest's SHA-256
    Column("arch", String(32), nullable=False),
    Column("size", BigInteger, nullable=False),  # bytes of its layer blobs
    Column("unpacked", BigInteger, nullable=False),  # bytes once unpacked
    Column("layers", Text, nullable=False),  # JSON [[sha, size], ...], lowest first
    Column("created_at", Float, nullable=False),
    Index("ix_images_id", "id"),
)

# Apps (core/apps.py, store/apps.py): a customer's name with versions, each an immutable,
# signed bundle named by its manifest's SHA-256; `current` is what new leases bind (unless a
# roll-out says otherwise: store/apps.py version_for). app_version_blobs: every blob a node
# running a version may fetch (its code, its environment's lock and wheels, its image).
apps = Table(
    "apps",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # python | command: every version's
    Column("current", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ux_apps_customer_name", "customer_id", "name", unique=True),
)
app_versions = Table(
    "app_versions",
    metadata,
    Column("app_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),  # the manifest's SHA-256
    Column("label", String(64), nullable=False),
    Column("seq", Integer, nullable=False),  # 1, 2, ...: the order of publishing
    Column("manifest", Text, nullable=False),  # canonical JSON
    Column("signature", Text, nullable=False),  # the coordinator's (signing.sign_app_version)
    Column("needs", Text, nullable=False, default="[]"),  # what a node needs (an image's arch)
    Column("created_at", Float, nullable=False),
    Index("ux_app_versions_label", "app_id", "label", unique=True),
)
app_version_blobs = Table(
    "app_version_blobs",
    metadata,
    Column("version", String(64), primary_key=True),
    Column("sha", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False, default=0),
    Index("ix_app_version_blobs_sha", "sha"),
)

# The CDN (store/cdn.py): published objects, their shares, which node holds which share, and
# the traffic that the metrics and the ledger are made of.
cdn_objects = Table(
    "cdn_objects",
    metadata,
    Column("id", String(64), primary_key=True),  # the content id
    Column("customer_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("k", Integer, nullable=False),
    Column("n", Integer, nullable=False),
    Column("key", String(64), nullable=False),  # AES-256 key, hex: never sent to a storing node
    Column("manifest", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("fetches", Integer, nullable=False, default=0),
    # the media type served (docs/cdn.md); NULL in rows older than it: guessed from the name
    Column("content_type", String(200), nullable=True),
)

cdn_shares = Table(
    "cdn_shares",
    metadata,
    Column("sha", String(64), primary_key=True),
    Column("content_id", String(64), nullable=False, index=True),
    Column("segment", Integer, nullable=False),
    Column("idx", Integer, nullable=False),  # the share's number, 0..n-1
    Column("size", BigInteger, nullable=False),
)

# state: assigned (the node was told to fetch it) | stored (the node confirmed it) | bad (it
# failed verification there) | dropped (the node was told to delete it)
cdn_holders = Table(
    "cdn_holders",
    metadata,
    Column("sha", String(64), primary_key=True),
    Column("node_id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("assigned_at", Float, nullable=False),
    Column("repair", Boolean, nullable=False, default=False),  # placed to restore redundancy
    Index("ix_cdn_holders_node", "node_id", "state"),
)

# Receipts a fetching client signed for shares it received and verified (store/cdn.py): a
# node is paid for a share once a plan, at most the share's size.
cdn_receipts = Table(
    "cdn_receipts",
    metadata,
    Column("plan", String(64), primary_key=True),
    Column("sha", String(64), primary_key=True),
    Column("node_id", String(64), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("at", Float, nullable=False),
)

cdn_traffic = Table(
    "cdn_traffic",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # served | repair | fetch
    Column("content_id", String(64), nullable=True, index=True),
    Column("node_id", String(64), nullable=True),
    Column("bytes", BigInteger, nullable=False),
    Column("from_peers", BigInteger, nullable=False, default=0),
    Column("from_origin", BigInteger, nullable=False, default=0),
    Column("seconds", Float, nullable=False, default=0.0),
    Column("at", Float, nullable=False),
)

# The books (core/ledger.py): double-entry, append-only. Each transaction's entries sum to zero,
# one entry per account; amounts are micro-credits. Triggers refuse UPDATE and DELETE.
ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("txn", String(100), nullable=False),
    Column("account", String(100), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("memo", Text, nullable=False, default=""),
    Column("task_id", Integer),
    Column("created_at", Float, nullable=False),
    Index("ux_ledger_txn_account", "txn", "account", unique=True),
    Index("ix_ledger_account_id", "account", "id"),
    Index("ix_ledger_task", "task_id"),  # a job's cost: its tasks' transactions
)

# How far below zero a customer's balance may go before new jobs are refused (402); a
# customer without a row has the coordinator's default (store/ledger.py).
credit_limits = Table(
    "credit_limits",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("credit_limit", BigInteger, nullable=False),  # micro-credits
    Column("set_at", Float, nullable=False),
)

# The Ed25519 key that signs task specs, for coordinators that share this database: the first
# process to start inserts it, every other reads the winner (coordinator/server.py).
coordinator_keys = Table(
    "coordinator_keys",
    metadata,
    Column("name", String(32), primary_key=True),  # "signing"
    Column("private_pem", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# The coordinator processes that share this database, each stamping its row every few seconds
# (coordinator/server.py): sync pacing spreads the fleet over the budget of the live ones.
coordinator_processes = Table(
    "coordinator_processes",
    metadata,
    Column("id", String(64), primary_key=True),  # random, one per process start
    Column("seen_at", Float, nullable=False),
)

# Roll-outs in small steps (core/rollout.py, store/rollouts.py): of an app's version or of the
# node agent's, with their policy (JSON), where they stand, and every decision with its counts.
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(8), nullable=False),  # app | agent
    Column("subject", String(64), nullable=False),  # the app's id, or "agent"
    Column("customer_id", String(64), nullable=True),  # an app's owner; null for the agent
    Column("old_version", String(64), nullable=True),
    Column("new_version", String(64), nullable=False),
    Column("policy", Text, nullable=False),
    Column("step", Integer, nullable=False, default=0),
    Column("share", Float, nullable=False),
    Column("state", String(16), nullable=False),  # core/rollout.py RolloutState
    Column("reason", Text, nullable=False, default=""),  # the last decision's sentence
    Column("created_at", Float, nullable=False),
    Column("step_started_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_rollouts_subject_state", "kind", "subject", "state"),
)
rollout_steps = Table(
    "rollout_steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", String(32), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("action", String(16), nullable=False),  # start | promote | rollback | done | cancel
    Column("step", Integer, nullable=False),
    Column("share", Float, nullable=False),
    Column("old_ok", Integer, nullable=False, default=0),
    Column("old_failed", Integer, nullable=False, default=0),
    Column("new_ok", Integer, nullable=False, default=0),
    Column("new_failed", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=False),
)
# Node agent versions an operator published: the wheel is a blob, signed by the coordinator's
# key (agent_release.py) so that a node runs only what its pinned key signed.
agent_versions = Table(
    "agent_versions",
    metadata,
    Column("version", String(64), primary_key=True),
    Column("sha", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("signature", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)
# Canary devices that said they would re-execute into a roll-out's new agent version, and how
# that went (store/rollouts.py): one that did not come up on it is a failure of that version.
rollout_switches = Table(
    "rollout_switches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", String(32), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("accepted_at", Float, nullable=False),
    Column("outcome", String(8), nullable=True),  # core/rollout.py SwitchOutcome; null: starting
    Column("resolved_at", Float, nullable=True),
    Index("ix_rollout_switches_rollout", "rollout_id", "outcome"),
    Index("ix_rollout_switches_node", "node_id", "outcome"),
)

# The flywheel's history (core/flywheel.py): the fog's figures every few seconds, one row a
# time slot (the first process to write a slot wins), kept for a bounded window
# (store/console.py). The console charts it: devices, capacity, utilisation, pay, price.
flywheel_samples = Table(
    "flywheel_samples",
    metadata,
    Column("slot", BigInteger, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False, index=True),
    Column("devices_online", Integer, nullable=False),
    Column("devices_known", Integer, nullable=False),
    Column("cores_online", Integer, nullable=False),
    Column("disk_mb_online", BigInteger, nullable=False),
    Column("uplink_bps_online", Float, nullable=False),
    Column("tasks_running", Integer, nullable=False),
    Column("slots_online", Integer, nullable=False),
    Column("utilisation", Float, nullable=False),
    Column("tasks_done", BigInteger, nullable=False),
    Column("credits_to_owners", BigInteger, nullable=False),
    Column("bytes_served", BigInteger, nullable=False),
    Column("per_cpu_hour", BigInteger, nullable=False),
    Column("per_gb_served", BigInteger, nullable=False),
)

# Blobs kept in the database (blobs/db.py), so that every coordinator process reaches them.
# A blob's bytes are `blob_chunks` rows of at most 1 MiB named by their offset; its row in
# `db_blobs` says it is whole. An upload in progress owns its chunks as `p:<upload id>` and
# hands them to the blob's name when it hashes right; a corrupt blob's become `q:<sha>:<ns>`.
# Their own MetaData: made when a database blob store opens, so a coordinator that keeps its
# blobs on disk (SQLite's default) carries no empty tables for them.
blob_metadata = MetaData()
db_blobs = Table(
    "db_blobs",
    blob_metadata,
    Column("sha", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
)
blob_chunks = Table(
    "blob_chunks",
    blob_metadata,
    Column("owner", String(100), primary_key=True),
    Column("off", BigInteger, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)
# Blob bytes are mostly compressed or random already: PostgreSQL need not try to compress them.
event.listen(
    blob_chunks,
    "after_create",
    DDL("ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL").execute_if(  # type: ignore[no-untyped-call]
        dialect="postgresql"
    ),
)
blob_partials = Table(
    "blob_partials",
    blob_metadata,
    Column("id", String(40), primary_key=True),
    Column("sha", String(64), nullable=False),
    Column("uploader", String(16), nullable=False),  # a hash of who uploads
    Column("received", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("holder", String(32), nullable=True),  # the request writing it now …
    Column("held_until", Float, nullable=True),  # … until then (a crashed one lets go)
    Column("ephemeral", Boolean, nullable=False, default=False),
    Index("ix_blob_partials_uploader", "uploader"),
)

_APPEND_ONLY = "the ledger is append-only: post a correcting transaction instead"
_LEDGER_TRIGGERS = {
    "sqlite": [
        f"CREATE TRIGGER ledger_no_{op} BEFORE {op.upper()} ON ledger "
        f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
        for op in ("update", "delete")
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$",
        "CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger "
        "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()",
        "CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON ledger "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()",
    ],
}
for _dialect, _statements in _LEDGER_TRIGGERS.items():
    for _sql in _statements:
        trigger = DDL(_sql).execute_if(dialect=_dialect)  # type: ignore[no-untyped-call]
        event.listen(ledger, "after_create", trigger)
