"""Start a coordinator: open the store, make sure its secrets exist, serve HTTP, reap leases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.dialects import postgresql
from starlette.concurrency import run_in_threadpool

from fogwheel import __version__, logs
from fogwheel.blobs import BlobStore, FileBlobStore
from fogwheel.blobs.db import DbBlobStore
from fogwheel.coordinator import gcpause, openapi
from fogwheel.coordinator.app import build_routes
from fogwheel.coordinator.app_routes import build_app_routes
from fogwheel.coordinator.bodylimit import BodyLimit
from fogwheel.coordinator.bodytimeout import BodyTimeout
from fogwheel.coordinator.console_pages import install_console
from fogwheel.coordinator.console_routes import build_console_routes
from fogwheel.coordinator.env_routes import build_env_routes
from fogwheel.coordinator.head import HeadAsGet
from fogwheel.coordinator.rollout_routes import judge_forever, rollout_period_s
from fogwheel.coordinator.sampler import sample_forever
from fogwheel.coordinator.syncrate import NodeRate, limit_from_env
from fogwheel.coordinator.wakeups import PgWakeups
from fogwheel.core import flywheel, ratelimit
from fogwheel.core.pacing import DEFAULT_BUDGET, TARGET_LATENCY_S
from fogwheel.core.scheduler import Placement, Policy
from fogwheel.errors import ConfigError
from fogwheel.protocol import SQL_INT_MAX
from fogwheel.signing import (
    fingerprint,
    join_string,
    key_from_pem,
    key_pin,
    key_to_pem,
    load_or_create_key,
    public_key_b64,
    read_key_file,
)
from fogwheel.store import Store
from fogwheel.store.fleet import PROCESS_SEEN_S
from fogwheel.store.migrate import add_missing_columns
from fogwheel.store.schema import coordinator_keys, metadata
from fogwheel.store.sql import hash_secret, new_secret

log = logging.getLogger("fogwheel.coordinator")

KEY_FILE = "coordinator.key"  # the Ed25519 key that signs task specs, beside the database
API_DESCRIPTION = """Schedules work onto a fog of pull-only node agents. All routes under /v1.

Every operation but a few public ones (health, price, the coordinator's key, a node's join)
takes a bearer key, `Authorization: Bearer KEY`: a customer API key, the admin key, an owner
key or a node credential, as each operation's `security` says. Errors are JSON, `{"error":
"one sentence saying what was wrong"}` (`Problem`). Guide: docs/api.md."""


@dataclass
class CoordinatorConfig:
    data_dir: Path = field(default_factory=lambda: Path.home() / ".fogwheel" / "coordinator")
    db: str | None = None  # default: SQLite file in data_dir
    host: str = "127.0.0.1"
    port: int = 8470
    lease_seconds: float = 15.0
    # A node silent this long is gone; None: store/base.py's default_gone_after_s (the longer
    # of three leases and 120 s). Only idle nodes need it long: busy ones renew their leases.
    gone_after_s: float | None = None
    join_token: str | None = None
    api_key: str | None = None  # a customer key to accept (created when none exists)
    admin_key: str | None = None
    max_body_mb: int = 64
    max_blob_mb: int = 2047  # one blob, streamed to disk (sizes are 32-bit in SQL: < 2 GiB)
    body_idle_s: float = 30.0  # a request body with no byte for this long gets 408
    body_min_rate: float = 1024.0  # …and one slower than this many bytes/s on average
    tls_cert: Path | None = None  # serve HTTPS with this certificate (PEM, chain included)
    tls_key: Path | None = None  # …and this private key
    allow_private_serve: bool = False  # nodes may serve the CDN from loopback/private IPs
    ready_file: Path | None = None  # where to write {"url": …} once listening
    # threads for the sync routes: None is as many as the database pool holds connections
    # (4 on SQLite, 8 on PostgreSQL), so that no request waits for, or churns, a connection
    worker_threads: int | None = None
    # syncs a second one coordinator process serves; a set of processes on one database
    # paces the fleet by this times the processes alive (store.process_seen, core/pacing.py)
    sync_budget: float = field(
        default_factory=lambda: float(os.environ.get("FOGWHEEL_SYNC_BUDGET") or DEFAULT_BUDGET)
    )
    # how long (p99) syncs may queue for a worker before every wait stretches; 0: open loop
    sync_target_ms: float = field(
        default_factory=lambda: float(
            os.environ.get("FOGWHEEL_SYNC_TARGET_MS") or 1000 * TARGET_LATENCY_S
        )
    )
    # how often one node may call the node routes (FOGWHEEL_NODE_SYNC_RATE/_BURST; rate 0: off)
    node_rate: ratelimit.Limit = field(default_factory=limit_from_env)
    signing_key: Path | None = None  # a key file shared by config management, not the database's
    blobs: str | None = None  # "db" | "dir"; default: "db" on PostgreSQL, "dir" on SQLite
    # Addresses of reverse proxies whose X-Forwarded-For is believed (nginx in `fogwheel up`);
    # none by default: a device's own header could otherwise name any network it likes.
    trusted_proxies: tuple[str, ...] = ()
    placement: str = "fair"  # core/scheduler.Policy: fair, random, reliability, deadline
    placement_seed: int = 0  # the draws of --placement random
    # the URLs clients reach this coordinator at, for the OpenAPI document's `servers`; none:
    # "/", wherever the document was read from (coordinator/openapi.py)
    public_urls: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            u.strip() for u in os.environ.get("FOGWHEEL_PUBLIC_URL", "").split(",") if u.strip()
        )
    )
    # Origins whose pages may read CDN content with a bearer key (core/cors.py); signed URLs
    # are readable from any page whatever this says.
    cors_origins: tuple[str, ...] = ()
    # how often the flywheel's figures are sampled for the console (core/flywheel.py)
    sample_s: float = field(
        default_factory=lambda: float(
            os.environ.get("FOGWHEEL_SAMPLE_S") or flywheel.DEFAULT_PERIOD_S
        )
    )

    @property
    def max_blob_bytes(self) -> int:
        return min(self.max_blob_mb * 1024 * 1024, SQL_INT_MAX)

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.data_dir / 'fogwheel.db'}"


def open_store(config: CoordinatorConfig) -> tuple[Store, dict[str, str]]:
    """Open (and create) the store; returns it with any secrets created now, to show once."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(
        config.db_url, lease_seconds=config.lease_seconds, gone_after_s=config.gone_after_s
    )
    store.placement = Placement(Policy(config.placement), config.placement_seed)
    store.fleet_in_background = True  # no sync waits for a reload of the fleet (store/fleet.py)
    store.create_schema()
    add_missing_columns(store.engine, metadata)  # an upgraded coordinator on an older database
    now = time.time()
    created: dict[str, str] = {}
    # The --join-token is the operator's own devices' token (docs/owners.md): a new one
    # replaces the one given before, which stops working.
    store.ensure_operator(now)
    if config.join_token:
        flag = store.set_flag_token(config.join_token, now)
        if (store.get_token(flag) or {}).get("revoked"):
            log.warning("the --join-token was revoked (token %s): no node can join with it", flag)
    elif not store.has_join_tokens():
        created["join_token"] = new_secret("fwj")
        store.set_flag_token(created["join_token"], now)
    if config.api_key:
        cid = "c-" + hash_secret(config.api_key)[:8]
        store.add_secret("customer", cid, "default", config.api_key, now)
    elif not store.has_secrets("customer"):
        _, created["api_key"] = store.create_customer("default", now)
    if config.admin_key:
        store.add_secret("admin", "admin", "operator", config.admin_key, now)
    elif not store.has_secrets("admin"):
        created["admin_key"] = new_secret("fwa")
        store.add_secret("admin", "admin", "operator", created["admin_key"], now)
    extended = store.extend_leases(now)
    if extended:
        log.info("restart: gave %d held tasks a fresh lease so their nodes can report", extended)
    return store, created


def signing_key_for(config: CoordinatorConfig, store: Store) -> tuple[Ed25519PrivateKey, str]:
    """The key that signs task specs, and where it is kept (for the log).

    Every coordinator process on one database must sign with one key, or a node pinned to one
    refuses the others' leases. So on PostgreSQL the key is a row (`coordinator_keys`): the
    first process inserts one, `ON CONFLICT DO NOTHING`, and every process uses the row that
    won; a key file left in the data dir by an earlier version is what it inserts, so an
    upgrade keeps the nodes' pin. SQLite serves one process: its key stays a file beside the
    database. `--signing-key FILE` overrides both (a key handed out by config management).
    """
    if config.signing_key is not None:
        try:
            return read_key_file(config.signing_key), str(config.signing_key)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot read the --signing-key {config.signing_key}: {e}; give an Ed25519 "
                "private key in PKCS#8 PEM (the coordinator.key of an existing coordinator)"
            ) from None
    local = config.data_dir / KEY_FILE
    if store.is_sqlite:
        return load_or_create_key(local), str(local)
    offer = read_key_file(local) if local.exists() else Ed25519PrivateKey.generate()
    with store.tx() as c:
        c.execute(
            postgresql.insert(coordinator_keys)
            .values(name="signing", private_pem=key_to_pem(offer).decode(), created_at=time.time())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        pem = c.execute(
            select(coordinator_keys.c.private_pem).where(coordinator_keys.c.name == "signing")
        ).scalar_one()
    key = key_from_pem(pem.encode(), "the database's coordinator_keys row")
    if local.exists() and public_key_b64(offer) != public_key_b64(key):
        log.warning(
            "%s is not the key in the database, which every coordinator on it signs with: "
            "nodes pinned to the file's key must join again with the current join string",
            local,
        )
    return key, "the database (table coordinator_keys)"


def blob_store_for(config: CoordinatorConfig, store: Store) -> BlobStore:
    """Blobs in the database on PostgreSQL (every process reaches them), in the data dir on
    SQLite; `--blobs dir` on PostgreSQL needs a data dir that all processes share."""
    kind = config.blobs or ("dir" if store.is_sqlite else "db")
    if kind == "db":
        return DbBlobStore(store)
    if kind == "dir":
        return FileBlobStore(config.data_dir / "blobs")
    raise ConfigError(f"--blobs {kind!r}: say db (in the database) or dir (in --data-dir)")


def build_app(config: CoordinatorConfig, store: Store) -> FastAPI:
    try:
        flywheel.check_period(config.sample_s)  # a bad --sample-s fails the start
    except ValueError as e:
        raise ConfigError(f"--sample-s / FOGWHEEL_SAMPLE_S: {e}") from None
    blobs = blob_store_for(config, store)
    signing_key, kept = signing_key_for(config, store)
    log.info(
        "task specs are signed by Ed25519 key %s (private key in %s); blobs kept in %s",
        fingerprint(public_key_b64(signing_key)),
        kept,
        "the database" if isinstance(blobs, DbBlobStore) else config.data_dir / "blobs",
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        results = app.state.results
        results.bind()
        threads = config.worker_threads or (4 if store.is_sqlite else 8)
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        if not store.is_sqlite:  # peers on the same database wake each other's readers
            auth = app.state.auth
            results.peers = PgWakeups(store.url, results.wake_local, auth.forget_local)
            auth.peers = results.peers  # one channel: results and revocations
            results.peers.start()
        reaper = asyncio.create_task(_reap(store))
        stamper = asyncio.create_task(_stamp(store))  # the live processes, for sync pacing
        sampler = asyncio.create_task(sample_forever(store, config.sample_s))  # the console's
        judge = asyncio.create_task(  # roll-outs promoted or rolled back (docs/rollouts.md)
            judge_forever(store, rollout_period_s(), app.state.agent_offers)
        )
        yield
        reaper.cancel()
        stamper.cancel()
        sampler.cancel()
        judge.cancel()
        if results.peers is not None:
            await run_in_threadpool(results.peers.stop)

    app = FastAPI(
        title="fogwheel coordinator",
        version=__version__,
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN: ours are served here
        redoc_url=None,
        license_info={"name": "Apache-2.0", "identifier": "Apache-2.0"},
    )
    build_routes(
        app,
        store,
        blobs,
        signing_key=signing_key,
        max_blob_bytes=config.max_blob_bytes,
        sync_budget=config.sync_budget,
        sync_target_s=config.sync_target_ms / 1000,
    )
    build_app_routes(  # apps and their versions (docs/apps.md)
        app, store, app.state.auth, blobs, signing_key, app.state.metrics.submitted.inc
    )
    build_env_routes(app, store, app.state.auth)  # a job's environment on its devices
    build_console_routes(app, store, app.state.auth, config.sample_s)
    install_console(app)  # the web console at /
    openapi.install(app, config.public_urls)
    app.add_middleware(HeadAsGet)  # HEAD wherever GET is (RFC 9110 §9.1)
    app.state.config = config
    app.state.signing_key = signing_key
    return app


async def _reap(store: Store) -> None:
    """Expired leases go back to the queue; checked several times per lease period."""
    period = max(0.2, store.lease_seconds / 5)
    while True:
        await asyncio.sleep(period)
        try:
            lost = await run_in_threadpool(store.expire_leases, time.time())
            if lost:
                log.info("%d leases expired; tasks queued again", len(lost))
            # CDN shares whose holders vanished or lied go to other nodes
            placed = await run_in_threadpool(store.cdn_repair, time.time())
            if placed:
                log.info("%d CDN shares placed on other nodes (repair)", placed)
        except Exception:
            log.exception("lease reaper failed; retrying")


async def _stamp(store: Store) -> None:
    """Stamp this process as live in the database, and count the live ones, every
    PROCESS_SEEN_S (store.process_seen). SQLite has one process: nothing to count."""
    if store.is_sqlite:
        return
    process_id = secrets.token_hex(16)
    while True:
        try:
            await run_in_threadpool(store.process_seen, process_id, time.time())
        except Exception:
            log.exception("could not stamp this coordinator process as live; retrying")
        await asyncio.sleep(PROCESS_SEEN_S)


def serve(config: CoordinatorConfig, announce: bool = True) -> None:
    """Run until interrupted. Prints the URL and any secrets created on this start."""
    _check_tls(config)
    store, created = open_store(config)
    app = build_app(config, store)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only turns Nagle off on such sockets' connections, and
    # with Nagle on every response waits for the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    # Listening before the ready file and the URL are out: a client that reads them and
    # connects at once waits in the backlog instead of being refused (uvicorn listens again).
    sock.listen(4096)
    port = sock.getsockname()[1]
    scheme = "https" if config.tls_cert else "http"
    url = f"{scheme}://{config.host}:{port}"
    public_key = public_key_b64(app.state.signing_key)
    pin = key_pin(public_key)
    token = created.get("join_token")  # a token given in the config is not echoed
    if announce:
        print(f"fogwheel coordinator {__version__} listening on {url}", flush=True)
        print(f"  database: {_redact(config.db_url)}", flush=True)
        for name, secret in created.items():
            print(f"  new {name.replace('_', ' ')}: {secret}  (shown once; keep it)", flush=True)
        if token:
            pinned = join_string(token, public_key)
            print(f"  join nodes with: fogwheel node -c {url} --token '{pinned}'", flush=True)
        else:
            pinned = f"JOIN_TOKEN#{pin}"
            print(f"  join nodes with: fogwheel node -c {url} --token '{pinned}'", flush=True)
    if config.ready_file:
        tmp = config.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "key_pin": pin, **created}))
        tmp.replace(config.ready_file)
    limited = Counter(
        "fogwheel_node_calls_limited",
        "Node calls refused with 429 because their node called faster than its rate "
        "(coordinator/syncrate.py)",
        registry=app.state.metrics.registry,
    )
    uv = uvicorn.Config(
        NodeRate(  # a node that syncs in a loop is refused alone, before its body is read
            BodyTimeout(
                BodyLimit(app, config.max_body_mb * 1024 * 1024, config.max_blob_bytes),
                idle_s=config.body_idle_s,
                min_rate=config.body_min_rate,
            ),
            config.node_rate,
            on_limited=limited.inc,
        ),
        log_level="warning",
        access_log=False,
        # JSON lines: uvicorn's own loggers go through fogwheel's handler (logs.py), not theirs
        log_config=None if logs.configured_format() == "json" else uvicorn.config.LOGGING_CONFIG,
        lifespan="on",
        timeout_keep_alive=30,
        backlog=4096,  # a fleet reconnecting at once (the kernel caps it at somaxconn)
        # The client address decides a device's network (core/owners.py: copies of a task go
        # to distinct networks), so X-Forwarded-For is read only from the proxies named.
        proxy_headers=bool(config.trusted_proxies),
        forwarded_allow_ips=",".join(config.trusted_proxies) or None,
        ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
        ssl_keyfile=str(config.tls_key) if config.tls_key else None,
    )
    server = uvicorn.Server(uv)
    # Start-up's objects are frozen out of the collector's passes, and every pass is timed
    # (coordinator/gcpause.py: a full pass at 10,000 nodes stalls every sync).
    gcpause.settle()
    app.state.metrics.gc.install()
    try:
        server.run(sockets=[sock])
    finally:
        store.close()


def _check_tls(config: CoordinatorConfig) -> None:
    """Load the certificate and key once before anything starts, to fail with a sentence."""
    if not config.tls_cert:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            config.tls_cert, config.tls_key
        )
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"cannot serve HTTPS with --tls-cert {config.tls_cert} and --tls-key "
            f"{config.tls_key} ({e}): give a PEM certificate (with its chain) and its "
            "unencrypted private key"
        ) from None


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url
