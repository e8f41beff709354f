"""A node as a systemd service: the unit file, the system user and the install plan, from options.

Pure: `plan_install(options)` returns the files to write and the commands to run; it opens no
file and runs nothing, so `fogwheel node install --dry-run` prints exactly what an install does
and tests check the text without a systemd. Every value that lands in the unit is validated
first (`ServiceError` says which and what to do): a newline in a device name would otherwise
add directives of the caller's choosing, a `%` or `$` would be expanded by systemd.

The join secret never appears in the unit, on a command line or in `ps`: it lives in a root-owned
0600 file that systemd hands the service through `LoadCredential=` (systemd.exec(5),
"Credentials"), so the agent reads it from `$CREDENTIALS_DIRECTORY`, which only its own user
can read. The hardening is what bubblewrap (the guest sandbox) survives: user, mount, PID and
network namespaces must stay allowed, so neither `RestrictNamespaces=` nor a
`SystemCallFilter=` is set, and `NoNewPrivileges=` is fine because Debian's bwrap is not setuid
(docs/node-install.md says why each line is there; tests/test_node_service.py runs bwrap under
it in a real systemd).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

UNIT_NAME = "fogwheel-node"
USER = "fogwheel"
STATE_DIR = "fogwheel"  # StateDirectory=: /var/lib/fogwheel, made by systemd, owned by USER
CREDENTIAL = "join"  # the credential's name inside $CREDENTIALS_DIRECTORY
TOKEN_PATH = "/etc/fogwheel/join-token"  # root:root 0600, read by systemd, never by the agent
SYSUSERS_PATH = "/etc/sysusers.d/fogwheel.conf"
UNIT_DIR = "/etc/systemd/system"
# ProtectHome=yes hides these: an interpreter under them cannot start as a service.
HIDDEN_PREFIXES = ("/home/", "/root/", "/run/user/")

_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
_UNIT_RE = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_MEMORY_RE = re.compile(r"(?:[1-9][0-9]?%|100%|[1-9][0-9]{0,6}[MG])")
_PATH_RE = re.compile(r"/[A-Za-z0-9_.+/-]*")
_SAFE_ARG = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


class ServiceError(ValueError):
    """An option cannot go into a unit file; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """What `fogwheel node install` was asked for (the CLI's defaults are these)."""

    coordinator: str  # one base URL, or several of one fog separated by commas
    python: str  # the interpreter that runs `-m fogwheel` (absolute, outside /home and /root)
    unit: str = UNIT_NAME
    user: str = USER
    cores: int | None = None  # slots offered (default: all)
    memory_mb: int | None = None  # memory the node offers to the fog (default: all)
    name: str | None = None  # the device's name on the fog (default: its host name)
    memory_max: str = "50%"  # MemoryMax= of the whole service, guests included
    cpu_weight: int = 20  # CPUWeight=: the owner's own processes (100) win 5:1
    tasks_max: int = 512  # TasksMax=: no fork bomb takes the device
    cache_mb: int = 2048
    share_quota_mb: int = 1024
    uplink_mbit: float | None = None
    # The chunk server listens on every interface: a device in a home serves CDN shares
    # through its router's mapping, a punched connection or the relay (docs/cdn.md, "Devices
    # behind NAT"), none of which reach a server on loopback.
    serve_host: str = "0.0.0.0"
    ca_cert: str | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)  # more `fogwheel node` options


@dataclass(frozen=True, slots=True)
class FileToWrite:
    path: str  # absolute, as on the device (the shell prefixes --root)
    text: str
    mode: int
    what: str


@dataclass(frozen=True, slots=True)
class InstallPlan:
    """Files first, in order, then commands; `root` plans (packagers, tests) skip the running
    systemd: no daemon-reload, `enable` without `--now`."""

    files: tuple[FileToWrite, ...]
    commands: tuple[tuple[str, ...], ...]
    unit_path: str
    data_dir: str


def validate(o: ServiceOptions) -> None:
    """Raise ServiceError for the first option that cannot go into a unit file as given."""
    if not _USER_RE.fullmatch(o.user):
        raise ServiceError(f"--user {o.user!r}: a system user name is [a-z_][a-z0-9_-]*, ≤ 31")
    if not _UNIT_RE.fullmatch(o.unit) or o.unit.endswith(".service"):
        raise ServiceError(f"--unit {o.unit!r}: letters, digits, '_', '.', '-' (no .service)")
    check_python(o.python)
    if not o.coordinator or not all(_is_url(u) for u in o.coordinator.split(",")):
        raise ServiceError(
            f"--coordinator {o.coordinator!r}: http(s) URLs without spaces, quotes, '%' or '$', "
            "separated by commas"
        )
    if not _MEMORY_RE.fullmatch(o.memory_max):
        raise ServiceError(
            f"--memory-max {o.memory_max!r}: a share of this device's memory (1%..100%) or a "
            "size like 300M or 2G"
        )
    if not 1 <= o.cpu_weight <= 10_000:
        raise ServiceError(f"--cpu-weight {o.cpu_weight}: 1..10000 (the owner's is 100)")
    if not 16 <= o.tasks_max <= 1_000_000:
        raise ServiceError(f"--tasks-max {o.tasks_max}: 16..1000000")
    if o.name is not None and not re.fullmatch(r"[^\x00-\x1f\x7f\"\\%$]{1,100}", o.name):
        raise ServiceError(
            f"--name {o.name!r}: up to 100 characters, no control characters, quotes, "
            "backslashes, '%' or '$'"
        )
    try:
        ipaddress.ip_address(o.serve_host)
    except ValueError:
        raise ServiceError(
            f"--serve-host {o.serve_host!r}: an IP address to listen on (0.0.0.0: every "
            "interface; 127.0.0.1: this machine only, which serves no CDN share to others)"
        ) from None
    if o.ca_cert is not None and not _PATH_RE.fullmatch(o.ca_cert):
        raise ServiceError(f"--ca-cert {o.ca_cert!r}: an absolute path of plain characters")
    for arg in o.extra_args:
        if not _SAFE_ARG.fullmatch(arg):
            raise ServiceError(
                f"node option {arg!r}: only letters, digits and _@+=:,./- in options "
                "passed through to the service"
            )
        if arg.split("=", 1)[0] in ("--token", "--token-file", "--data-dir", "--coordinator"):
            raise ServiceError(f"{arg!r}: the service sets that itself; pass it to install")


def check_python(path: str) -> None:
    """The interpreter must be absolute, plain and visible to the service (ProtectHome=yes)."""
    if not _PATH_RE.fullmatch(path) or "/../" in path or path.endswith("/.."):
        raise ServiceError(f"--python {path!r}: an absolute path of plain characters")
    if path.startswith(HIDDEN_PREFIXES):
        raise ServiceError(
            f"--python {path}: the service cannot see it (ProtectHome=yes hides /home, /root "
            "and /run/user); install fogwheel system-wide, e.g. `sudo python3 -m venv "
            "/opt/fogwheel && sudo /opt/fogwheel/bin/pip install fogwheel`, then run "
            "`sudo /opt/fogwheel/bin/fogwheel node install …`, or pass --python"
        )


def _is_url(u: str) -> bool:
    return bool(re.fullmatch(r"https?://[A-Za-z0-9._~:/?#\[\]@!&'()*+;=-]+", u)) and "'" not in u


def data_dir() -> str:
    return f"/var/lib/{STATE_DIR}"


def exec_start(o: ServiceOptions) -> list[str]:
    """The agent's command line: no secret in it (`%d` is systemd's credentials directory)."""
    argv = [o.python, "-m", "fogwheel", "node", "--coordinator", o.coordinator]
    argv += ["--data-dir", data_dir(), "--token-file", f"%d/{CREDENTIAL}"]
    if o.cores is not None:
        argv += ["--cores", str(o.cores)]
    if o.memory_mb is not None:
        argv += ["--memory", str(o.memory_mb)]
    if o.name is not None:
        argv += ["--name", o.name]
    argv += ["--cache-mb", str(o.cache_mb), "--share-quota-mb", str(o.share_quota_mb)]
    argv += ["--serve-host", o.serve_host]
    if o.uplink_mbit is not None:
        argv += ["--uplink-mbit", f"{o.uplink_mbit:g}"]
    if o.ca_cert is not None:
        argv += ["--ca-cert", o.ca_cert]
    return [*argv, *o.extra_args]


def _unit_word(arg: str) -> str:
    """One ExecStart= word: plain ones as they are, others double-quoted (systemd.service(5),
    "Command lines"); `%d` is the one specifier meant, every other '%' is refused earlier."""
    if arg.startswith("%d/") or (_SAFE_ARG.fullmatch(arg) and "%" not in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(o: ServiceOptions, version: str = "") -> str:
    """The unit file's text, validated options only (call `validate` first)."""
    validate(o)
    cmd = " ".join(_unit_word(a) for a in exec_start(o))
    made = f" (fogwheel {version})" if version else ""
    return f"""\
# {o.unit}.service: a fogwheel node agent, written by `fogwheel node install`{made}.
# `fogwheel node uninstall` removes it; docs/node-install.md explains every line.
[Unit]
Description=fogwheel node agent (lends this device's idle CPU, disk and uplink to a fog)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={o.user}
Group={o.user}
ExecStart={cmd}
# The join secret: root's 0600 file, handed to this service only, never on a command line.
LoadCredential={CREDENTIAL}:{TOKEN_PATH}
StateDirectory={STATE_DIR}
StateDirectoryMode=0750
WorkingDirectory=%S/{STATE_DIR}
Environment=HOME=%S/{STATE_DIR} PYTHONUNBUFFERED=1
UMask=0077
# SIGTERM drains: running tasks finish, the rest are handed back to the coordinator.
KillMode=mixed
TimeoutStopSec=90
Restart=on-failure
RestartSec=10
# Exit 2 is a usage error (a bad option, an unreadable join string): restarting cannot help.
RestartPreventExitStatus=2
StandardOutput=journal
StandardError=journal
SyslogIdentifier={o.unit}

# Hardening that bubblewrap (the guest sandbox) survives: it needs user, mount, PID and
# network namespaces, so RestrictNamespaces= and SystemCallFilter= stay unset (the guest
# gets bubblewrap's namespaces and fogwheel's own seccomp filter instead), and it writes
# /proc/sys/user/max_user_namespaces in its own namespace (--disable-userns: no guest makes
# namespaces of its own), so ProtectKernelTunables= stays unset too (an unprivileged user
# with no capabilities cannot write the host's sysctls anyway).
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
CapabilityBoundingSet=
# The agent makes a control group per slot inside its own (node/cgroups.py).
Delegate=yes

# The owner's device stays the owner's: guests get what the owner leaves idle.
CPUWeight={o.cpu_weight}
Nice=10
IOSchedulingClass=idle
MemoryMax={o.memory_max}
TasksMax={o.tasks_max}
OOMScoreAdjust=500

[Install]
WantedBy=multi-user.target
"""


def sysusers_text(o: ServiceOptions) -> str:
    """sysusers.d(5): a system user and group of its own, no login, home in its state dir."""
    validate(o)
    return (
        "# the fogwheel node agent's own user (`fogwheel node install`)\n"
        f'u {o.user} - "fogwheel node agent" {data_dir()} /usr/sbin/nologin\n'
    )


def token_text(join_string: str) -> str:
    """The credential file's text (secretfile.py's format: the agent's --token-file reads it)."""
    if not join_string or not re.fullmatch(r"[A-Za-z0-9_#:.+/=-]{8,512}", join_string):
        raise ServiceError(
            "the join string should look like TOKEN#sha256:PIN, as `fogwheel coordinator` "
            "printed it (letters, digits and _#:.+/=-, no spaces)"
        )
    return f"FOGWHEEL_JOIN_TOKEN={join_string}\n"


def plan_install(
    o: ServiceOptions, join_string: str, *, root: bool = False, version: str = ""
) -> InstallPlan:
    """Everything `fogwheel node install` does, in order."""
    unit_path = f"{UNIT_DIR}/{o.unit}.service"
    files = (
        FileToWrite(
            SYSUSERS_PATH, sysusers_text(o), 0o644, "the system user, for systemd-sysusers"
        ),
        FileToWrite(TOKEN_PATH, token_text(join_string), 0o600, "the join secret (root only)"),
        FileToWrite(unit_path, unit_text(o, version), 0o644, "the unit"),
    )
    cmds: list[tuple[str, ...]] = [("systemd-sysusers", SYSUSERS_PATH)]
    if root:
        cmds.append(("systemctl", "enable", f"{o.unit}.service"))
    else:
        cmds += [
            ("systemctl", "daemon-reload"),
            ("systemctl", "enable", "--now", f"{o.unit}.service"),
        ]
    return InstallPlan(files, tuple(cmds), unit_path, data_dir())


@dataclass(frozen=True, slots=True)
class UninstallPlan:
    """Commands before (stop, disable), paths to delete, commands after (reload, the user)."""

    before: tuple[tuple[str, ...], ...]
    remove: tuple[str, ...]
    after: tuple[tuple[str, ...], ...]


def plan_uninstall(
    unit: str = UNIT_NAME, user: str = USER, *, root: bool = False, purge: bool = False
) -> UninstallPlan:
    """What `fogwheel node uninstall` does: stop and disable, then remove what install wrote;
    with `purge`, the node's data (its credential on the fog, cache, shares) and its user too."""
    if not _UNIT_RE.fullmatch(unit) or unit.endswith(".service"):
        raise ServiceError(f"--unit {unit!r}: letters, digits, '_', '.', '-' (no .service)")
    if not _USER_RE.fullmatch(user):
        raise ServiceError(f"--user {user!r}: a system user name is [a-z_][a-z0-9_-]*, ≤ 31")
    service = f"{unit}.service"
    before = (
        [("systemctl", "disable", service)]
        if root
        else [("systemctl", "disable", "--now", service)]
    )
    remove = [f"{UNIT_DIR}/{service}", TOKEN_PATH, SYSUSERS_PATH]
    after: list[tuple[str, ...]] = [] if root else [("systemctl", "daemon-reload")]
    if purge:
        remove.append(data_dir())
        after.append(("userdel", user))
    return UninstallPlan(tuple(before), tuple(remove), tuple(after))
