"""Tables. Times are float seconds since the epoch; JSON columns hold protocol models."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
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
    Column("kind", String(16), nullable=False),  # customer | node | admin | join
    Column("id", String(64), nullable=False),
    Column("name", String(200), nullable=False, default=""),
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
    Column("joined_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("state", String(16), nullable=False, default="up"),
    Column("slots_free", Integer, nullable=False, default=0),
    Column("done", Integer, nullable=False, default=0),
    Column("lost", Integer, nullable=False, default=0),
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
    Index("ix_tasks_state_id", "state", "id"),
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
    Index("ix_attempts_task", "task_id"),
    Index("ix_attempts_node_open", "node_id", "outcome"),
)

# Who may read a blob: the customer who uploaded it or whose task produced it.
blob_owners = Table(
    "blob_owners",
    metadata,
    Column("sha", String(64), primary_key=True),
    Column("customer_id", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
)

# Which blobs a task reads: a node may fetch them while it holds the task.
task_blobs = Table(
    "task_blobs",
    metadata,
    Column("task_id", Integer, primary_key=True),
    Column("sha", String(64), primary_key=True),
    Index("ix_task_blobs_sha", "sha"),
)
