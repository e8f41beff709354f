"""Result wake-ups across coordinator processes: PostgreSQL LISTEN/NOTIFY.

A customer's long-poll may wait on one coordinator while the node's result is accepted by
another. Each process keeps one connection that LISTENs on `CHANNEL` and wakes its own
waiting readers (app.py's `Results`) when a peer says results came; and one that sends that
NOTIFY after each commit that accepted results. The send runs on a thread of its own, so a
request never waits for it, and wakes that come while one is being sent fold into the next
send (none is lost: a wake only says "look again"). A NOTIFY is delivered only once its
transaction commits, so a woken reader always finds the rows it was woken for.

When the listening connection is down, waiting readers look again every half second, as they
did before this channel existed (`PgWakeups.listening` tells them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger("fogwheel.coordinator")

CHANNEL = "fogwheel_results"
RETRY_S = 1.0  # a lost connection is opened again after this long


class PgWakeups:
    """One process's end of the results channel: `send()` to tell the peers, `on_wake` when
    a peer told this process."""

    def __init__(self, db_url: str, on_wake: Callable[[], None]) -> None:
        self._dsn = make_url(db_url).set(drivername="postgresql").render_as_string(False)
        self._on_wake = on_wake
        self._me = f"{os.getpid()}-{os.urandom(4).hex()}"  # our own NOTIFYs come back too
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

    def send(self) -> None:
        """Tell the other processes that results were committed; returns at once."""
        self._due.set()

    def _send_loop(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            self._due.wait()
            if self._stop.is_set():
                break
            self._due.clear()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._me))
            except psycopg.Error as e:
                log.warning("could not tell the other coordinators of new results: %s", e)
                conn = None
                self._stop.wait(RETRY_S)  # their readers still look again now and then
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    self._on_wake()  # what peers committed while nobody listened
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.payload != self._me:
                                self._on_wake()
            except psycopg.Error as e:
                if not self._stop.is_set():
                    log.warning("results channel lost (%s); readers poll until it is back", e)
            finally:
                self.listening = False
            self._stop.wait(RETRY_S)
