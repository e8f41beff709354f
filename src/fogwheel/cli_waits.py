"""No silent waits in the CLI: why a job waits, and each retry, said on stderr.

The SDK notices that a job's results have not moved for a couple of seconds and asks the
coordinator why (client.py `on_wait`); it announces each retry of an unreachable coordinator
(`on_retry`). `WaitNotice` prints each new reason once to stderr ("waiting: 1 live node;
adaptive checking needs 2 — add a node or pass --replicas 1") and keeps it for the progress
bars, where `WaitingColumn` shows it until the job moves again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn, Task
from rich.text import Text


class WaitNotice:
    """The waits of one command: said once each on stderr, shown on its progress bars."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.sentence = ""  # the current wait ("" once the job moves again)
        self._said: set[str] = set()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []

    def on_wait(self, job_id: int, wait: Any) -> None:
        """client.py's `on_wait`: a Wait, or None when the job moves again."""
        sentence = "" if wait is None else str(wait.sentence)
        with self._lock:
            self.sentence = sentence
            # printed once when the fog cannot make progress; a busy queue shows on the bar only
            new = bool(sentence) and bool(wait.stuck) and sentence not in self._said
            if new:
                self._said.add(sentence)
            listeners = list(self._listeners)
        if new:
            self.console.print(
                f"waiting: {sentence} (job {job_id})",
                style="yellow",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        for listen in listeners:
            listen(sentence)

    def on_retry(self, line: str) -> None:
        """client.py's `on_retry`: "retrying URL (why), 3 of 8"."""
        self.console.print(line, style="yellow", markup=False, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def shown_on(self, status: Any, text: str) -> Iterator[None]:
        """While inside, a Rich status (spinner) reads `text`, then why the job waits."""

        def show(sentence: str) -> None:
            status.update(f"{text} (waiting: {escape(sentence)})" if sentence else text)

        with self._lock:
            self._listeners.append(show)
        try:
            yield
        finally:
            with self._lock:
                self._listeners.remove(show)

    def hooks(self) -> dict[str, Any]:
        """The Client keyword arguments that report to this notice."""
        return {"on_wait": self.on_wait, "on_retry": self.on_retry}

    def column(self) -> WaitingColumn:
        return WaitingColumn(self)


class WaitingColumn(ProgressColumn):
    """A progress column that shows why the job waits, while it does."""

    def __init__(self, notice: WaitNotice) -> None:
        super().__init__()
        self.notice = notice

    def render(self, task: Task) -> Text:
        if task.finished or not self.notice.sentence:
            return Text("")
        return Text(f"waiting: {self.notice.sentence}", style="yellow", overflow="ellipsis")


notice = WaitNotice(Console(stderr=True))  # the running command's (one command a process)
