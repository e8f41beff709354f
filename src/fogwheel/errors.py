"""The one exception tree of fogwheel; every error a user can see says what to do.

FogwheelError
├── ConfigError            bad settings: a missing coordinator URL, an unreadable data dir
├── ApiError               the coordinator answered with a 4xx/5xx (carries status and message)
│   ├── AuthError          401/403: a missing, wrong or revoked key or credential
│   └── NotFound           404: no such job, task, node or blob (or not yours)
├── CoordinatorUnreachable the coordinator could not be reached after retries
├── StillWaiting           a future's wait ran out while its task waits (also a TimeoutError)
│   ├── NoLiveNodes        no live node (or every one quarantined): start one
│   ├── NeedsMoreNodes     checking needs another device, of another owner and network
│   └── NoCapableNode      no live node has what the task needs (a program, the memory)
├── IntegrityError         bytes did not match the SHA-256 they were named by
│   └── BadShare           a CDN share whose bytes do not match its name (cdn/codec.py)
├── CodecError             a malformed CDN manifest, too few shares, a segment that won't decrypt
├── StorageFull            the coordinator's disk or database is full (answered as HTTP 507)
├── QuotaExceeded          a CDN share that does not fit a node's share quota (node/chunks.py)
├── JobFailed              a MapReduce map or reduce task failed for good (mapreduce/)
├── TaskFailed             a task failed on the fog for a reason other than its own exception
│   ├── CommandFailed      a command task exited with a non-zero status
│   ├── TaskCancelled      the task was cancelled on the fog (also a futures CancelledError)
│   └── RemoteError        a task raised an exception of a type not rebuilt here (`type_name`)
├── RefusedValue           a node's result names a type the decoder does not trust (safe_pickle)
├── OutputRefused          an output file would land outside its directory, via a link, or
│                          over a file that is there already (CommandResult.save)
├── IllegalTransition      core: an event that the task's current state does not allow
├── NameTaken              a customer name that another customer has (answered as HTTP 409)
└── RemoteTraceback        attached as __cause__ of an exception re-raised from a node
(StillWaiting and its kinds are TimeoutErrors too; BadShare is a CodecError too; CodecError
is also a ValueError; RefusedValue is also a pickle.UnpicklingError; OutputRefused is also
an OSError.)
"""

from __future__ import annotations

import pickle
from concurrent.futures import CancelledError


class FogwheelError(Exception):
    """Base of every error that fogwheel raises on purpose."""


class ConfigError(FogwheelError):
    """Settings are missing or wrong; the message names the setting and how to give it."""


class ApiError(FogwheelError):
    """The coordinator refused a request; `status` is the HTTP status, `message` its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


class AuthError(ApiError):
    """The coordinator did not accept the key or credential that was sent."""


class NotFound(ApiError):
    """The job, task, node or blob does not exist, or belongs to someone else."""


class CoordinatorUnreachable(FogwheelError):
    """No answer from the coordinator within the retry budget."""


class StillWaiting(FogwheelError, TimeoutError):
    """`Future.result(timeout=…)` ran out while the task waits on the fog: `reason` is the
    coordinator's code for why (core/waiting.py; "unknown" when it could not say), `sentence`
    what to do. A TimeoutError, so `except TimeoutError` code goes on working."""

    def __init__(self, sentence: str, reason: str = "unknown", job_id: int | None = None) -> None:
        super().__init__(sentence)
        self.sentence = sentence
        self.reason = reason
        self.job_id = job_id


class NoLiveNodes(StillWaiting):
    """No live node can take work (none polls, or every one is quarantined): start one."""


class NeedsMoreNodes(StillWaiting):
    """A result waits for a check that no live device may run (it ran there, or they share its
    owner or network): add a device of another owner, or pass replicas=1."""


class NoCapableNode(StillWaiting):
    """No live node has what the task needs: a program (`needs`), or the memory it asks for."""


class IntegrityError(FogwheelError):
    """Bytes received did not hash to the name they were fetched by."""


class StorageFull(FogwheelError):
    """A write failed because the disk (or the database, or a quota) is full: free space."""


class TaskFailed(FogwheelError):
    """A task could not produce a result: lost too often, over a limit, or cancelled."""


class CommandFailed(TaskFailed):
    """A command task exited non-zero; `result` holds its exit status, stdout and stderr."""

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result


class TaskCancelled(TaskFailed, CancelledError):
    """The task was cancelled on the fog (`fogwheel cancel`, another client): it has no
    result. A concurrent.futures CancelledError too."""


class RemoteError(TaskFailed):
    """A task raised an exception whose type is not rebuilt from a node's word: not a builtin
    and not in `trusted_types`. `type_name` is the remote type (`module:qualname`),
    `remote_message` its message; the traceback is the `__cause__`."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(
            f"{type_name}: {message} (raised on the node; pass trusted_types=[{type_name!r}] "
            "to get it raised as that type here)"
        )
        self.type_name = type_name
        self.remote_message = message


class RefusedValue(FogwheelError, pickle.UnpicklingError):
    """A node's result would not decode as data: `name` is the global it named (if any); the
    message says how to trust that type."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


class OutputRefused(FogwheelError, OSError):
    """An output file was not written: its name leads out of the directory or through a link,
    or a file is there already (pass overwrite=True to replace it)."""


class IllegalTransition(FogwheelError):
    """A task event arrived in a state whose transition table has no entry for it."""


class NameTaken(FogwheelError):
    """A name that must be unique (a customer's) is another's already: pick another."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a node, shown as the cause of the re-raise."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\nRemote traceback (on the node):\n{self.tb}"""'
