"""fogwheel: pool idle Linux devices into one cloud.

from fogwheel import Client
with Client("http://127.0.0.1:8470", api_key="fwc_…") as fog:
    print(fog.map(pow, [1, 2, 3], [2, 2, 2]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fogwheel.client import Client, CommandResult, as_completed, wait
    from fogwheel.envs import Env
    from fogwheel.executor import Executor, gather

__all__ = [
    "Client",
    "CommandResult",
    "Env",
    "Executor",
    "__version__",
    "as_completed",
    "gather",
    "wait",
]


def __getattr__(name: str) -> Any:
    # The SDK is imported lazily so that the node agent stays small on a 512 MB device.
    if name in {"Client", "CommandResult", "as_completed", "wait"}:
        from fogwheel import client

        return getattr(client, name)
    if name == "Env":
        from fogwheel.envs import Env

        return Env
    if name in {"Executor", "gather"}:
        from fogwheel import executor

        return getattr(executor, name)
    raise AttributeError(f"module 'fogwheel' has no attribute {name!r}")
