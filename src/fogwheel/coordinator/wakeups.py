"""Wake-ups across coordinator processes: PostgreSQL LISTEN/NOTIFY, for results and revocations.

A customer's long-poll may wait on one coordinator while the node's result is accepted by
another. Each process keeps one connection that LISTENs on `CHANNEL` and wakes its own
waiting readers (app.py's `Results`) when a peer says results came; and one that sends that
NOTIFY after each commit that accepted results. The send runs on a thread of its own, so a
request never waits for it, and wakes that come while one is being sent fold into the next
send (none is lost: a wake only says "look again"). A NOTIFY is delivered only once its
transaction commits, so a woken reader always finds the rows it was woken for.

When the listening connection is down, waiting readers look again every half second, as they
did before this channel existed (`PgWakeups.listening` tells them).

The same channel says "a key was revoked" (topic `revoked`): each peer then drops its cache
of authenticated keys (coordinator/auth.py), so a revoked key stops working on every process
within a round trip, not after the cache's 10 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

from fogwheel.coordinator.auth import REVOKED

log = logging.getLogger("fogwheel.coordinator")

CHANNEL = "fogwheel_results"
RETRY_S = 1.0  # a lost connection is opened again after this long


RESULTS = "results"  # what a NOTIFY says came (its topic): results, or a revoked key


class PgWakeups:
    """One process's end of the channel: `send()` / `send(REVOKED)` to tell the peers;
    `on_wake` / `on_revoked` when a peer told this process."""

    def __init__(
        self,
        db_url: str,
        on_wake: Callable[[], None],
        on_revoked: Callable[[], None] | None = None,
    ) -> None:
        self._dsn = make_url(db_url).set(drivername="postgresql").render_as_string(False)
        self._on = {RESULTS: on_wake, REVOKED: on_revoked or (lambda: None)}
        self._me = f"{os.getpid()}-{os.urandom(4).hex()}"  # our own NOTIFYs come back too
        self._topics: set[str] = set()  # what is due to be sent
        self._topics_lock = threading.Lock()
        self._due = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listening = False

    def start(self) -> None:
        for target, name in ((self._listen, "listen"), (self._send_loop, "notify")):
            t = threading.Thread(target=target, name=f"fogwheel-results-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._due.set()
        for t in self._threads:
            t.join(timeout=3.0)

    def send(self, topic: str = RESULTS) -> None:
        """Tell the other processes that results were committed (or a key revoked); returns
        at once."""
        with self._topics_lock:
            self._topics.add(topic)
        self._due.set()

    def _send_loop(self) -> None:
        import psycopg  # the [postgres] extra: only a coordinator on PostgreSQL gets here

        conn: Any = None
        while not self._stop.is_set():
            self._due.wait()
            if self._stop.is_set():
                break
            self._due.clear()
            with self._topics_lock:
                topics, self._topics = self._topics, set()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
                for topic in sorted(topics):
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{topic}:{self._me}"))
            except psycopg.Error as e:
                log.warning("could not tell the other coordinators of %s: %s", topics, e)
                with self._topics_lock:  # a revocation must not be lost with the connection
                    self._topics |= topics & {REVOKED}
                if REVOKED in topics:
                    self._due.set()
                conn = None
                self._stop.wait(RETRY_S)  # their readers still look again now and then
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    for wake in self._on.values():  # what peers did while nobody listened
                        wake()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            topic, _, sender = note.payload.partition(":")
                            if sender != self._me and topic in self._on:
                                self._on[topic]()
            except psycopg.Error as e:
                if not self._stop.is_set():
                    log.warning("results channel lost (%s); readers poll until it is back", e)
            finally:
                self.listening = False
            self._stop.wait(RETRY_S)
