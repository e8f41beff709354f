"""A small UPnP-IGD client: ask the home router to forward a port to this device's chunk server.

The first way a device behind NAT serves its shares (issue #16 item 1a), as miniupnpc's
`upnpc -a` does it: SSDP M-SEARCH on 239.255.255.250:1900 for an Internet Gateway Device, its
description XML for the WANIPConnection (or WANPPPConnection) service's control URL, then the
SOAP actions GetExternalIPAddress and AddPortMapping (UPnP-IGD 2.0, WANIPConnection:2 §2.5;
the :1 service answers the same calls). Standard library only.

Everything from the router is data: the SSDP answer's LOCATION must be an http URL on the
router's own LAN address (the one that answered, so another host on the LAN cannot point us
elsewhere), the description and SOAP answers are read to at most 64 KiB, parsed with
ElementTree (no DTDs or entities expand there), and the external address must be an IPv4
address. Mappings are asked with a lease and renewed (`PortMapping.renew`); a router that
refuses a lease (error 725, OnlyPermanentLeasesSupported) gets a permanent one, deleted at stop.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

SSDP_ADDR = ("239.255.255.250", 1900)
SEARCH_TARGETS = (
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
)
SERVICES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
BODY_MAX = 64 * 1024  # bytes of a description or SOAP answer read
LEASE_S = 3600  # seconds a mapping is asked for; renewed at half
DESCRIPTION = "fogwheel chunk server"


class UpnpError(OSError):
    """No gateway answered, or it refused: the device serves through the coordinator instead."""


@dataclass(frozen=True)
class Gateway:
    """An IGD's WAN connection service: where to send SOAP, and which service it is."""

    control_url: str
    service: str
    local_ip: str  # this device's address on the router's LAN


def discover(timeout: float = 3.0, tries: int = 2) -> Gateway:
    """The first IGD on the LAN that describes a WAN connection service; UpnpError if none."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    sock.settimeout(0.5)
    why = "no UPnP gateway answered on this network"
    try:
        for _ in range(tries):
            for st in SEARCH_TARGETS:
                msg = (
                    "M-SEARCH * HTTP/1.1\r\n"
                    f"HOST: {SSDP_ADDR[0]}:{SSDP_ADDR[1]}\r\n"
                    'MAN: "ssdp:discover"\r\n'
                    "MX: 1\r\n"
                    f"ST: {st}\r\n\r\n"
                )
                sock.sendto(msg.encode(), SSDP_ADDR)
            deadline = time.monotonic() + timeout / tries
            while time.monotonic() < deadline:
                try:
                    data, (router_ip, _) = sock.recvfrom(4096)
                except TimeoutError:
                    continue
                location = _header(data, "location")
                if location is None:
                    continue
                try:
                    return _gateway(location, router_ip)
                except (UpnpError, OSError, ET.ParseError, ValueError) as e:
                    why = f"the gateway at {router_ip} is of no use: {e}"
    finally:
        sock.close()
    raise UpnpError(why)


def _header(data: bytes, name: str) -> str | None:
    for line in data.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _gateway(location: str, router_ip: str) -> Gateway:
    parts = urlsplit(location)
    if parts.scheme != "http" or parts.hostname != router_ip or parts.port is None:
        raise UpnpError(f"its description is not on its own address: {location[:100]!r}")
    status, body = _http("GET", location, None, {})
    if status != 200:
        raise UpnpError(f"its description answered {status}")
    root = ET.fromstring(body)
    for service in root.iter():
        if not service.tag.endswith("service"):
            continue
        kind = _child_text(service, "serviceType")
        control = _child_text(service, "controlURL")
        if kind in SERVICES and control:
            url = urljoin(location, control)
            if urlsplit(url).hostname != router_ip:
                raise UpnpError("its control URL points at another host")
            return Gateway(url, kind, _local_ip_towards(router_ip))
    raise UpnpError("it describes no WAN connection service")


def _child_text(el: ET.Element, name: str) -> str:
    for child in el:
        if child.tag.endswith(name):
            return (child.text or "").strip()
    return ""


def _local_ip_towards(ip: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((ip, 1900))  # no packet is sent: the kernel only picks the route
        return str(s.getsockname()[0])


def _http(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=5)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read(BODY_MAX + 1)
        if len(data) > BODY_MAX:
            raise UpnpError(f"its answer is over {BODY_MAX} bytes")
        return r.status, data
    finally:
        conn.close()


def soap(gw: Gateway, action: str, args: dict[str, str]) -> dict[str, str]:
    """Call `action` on the gateway's service; its out-arguments. UpnpError with the UPnP
    error code and description when it refuses."""
    inner = "".join(f"<{k}>{_xml_escape(v)}</{k}>" for k, v in args.items())
    body = (
        '<?xml version="1.0"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
        's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
        f'<u:{action} xmlns:u="{gw.service}">{inner}</u:{action}>'
        "</s:Body></s:Envelope>"
    ).encode()
    status, data = _http(
        "POST",
        gw.control_url,
        body,
        {
            "Content-Type": 'text/xml; charset="utf-8"',
            "SOAPAction": f'"{gw.service}#{action}"',
        },
    )
    root = ET.fromstring(data)
    if status != 200:
        code = desc = ""
        for el in root.iter():
            if el.tag.endswith("errorCode"):
                code = (el.text or "").strip()
            elif el.tag.endswith("errorDescription"):
                desc = (el.text or "").strip()
        raise UpnpError(f"{action} refused: UPnP error {code or status} {desc}".strip())
    out: dict[str, str] = {}
    for el in root.iter():
        if el.tag.endswith(f"{action}Response"):
            for child in el:
                out[child.tag.rsplit("}", 1)[-1]] = (child.text or "").strip()
    return out


def _xml_escape(v: str) -> str:
    return v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass
class PortMapping:
    """A TCP port the router forwards to this device: `external_ip:external_port`."""

    gateway: Gateway
    external_ip: str
    external_port: int
    internal_port: int
    lease_s: int  # 0: permanent (the router takes no lease)
    made_at: float

    @property
    def url(self) -> str:
        return f"http://{self.external_ip}:{self.external_port}"

    def due(self, now: float) -> bool:
        """Whether the mapping should be asked again (half its lease is gone)."""
        return self.lease_s > 0 and now >= self.made_at + self.lease_s / 2

    def renew(self, now: float) -> None:
        _add(self.gateway, self.external_port, self.internal_port, self.lease_s)
        self.made_at = now

    def remove(self) -> None:
        with contextlib.suppress(OSError, ET.ParseError, UpnpError):
            soap(
                self.gateway,
                "DeletePortMapping",
                {
                    "NewRemoteHost": "",
                    "NewExternalPort": str(self.external_port),
                    "NewProtocol": "TCP",
                },
            )


def _add(gw: Gateway, external: int, internal: int, lease_s: int) -> None:
    soap(
        gw,
        "AddPortMapping",
        {
            "NewRemoteHost": "",
            "NewExternalPort": str(external),
            "NewProtocol": "TCP",
            "NewInternalPort": str(internal),
            "NewInternalClient": gw.local_ip,
            "NewEnabled": "1",
            "NewPortMappingDescription": DESCRIPTION,
            "NewLeaseDuration": str(lease_s),
        },
    )


def map_port(internal_port: int, now: float, *, gateway: Gateway | None = None) -> PortMapping:
    """Ask the LAN's gateway to forward a TCP port to `internal_port` here: the same number
    first, then a few others if it is taken (error 718). UpnpError when it cannot."""
    gw = gateway or discover()
    answer = soap(gw, "GetExternalIPAddress", {})
    try:
        ext_ip = ipaddress.IPv4Address(answer.get("NewExternalIPAddress", ""))
    except ValueError:
        raise UpnpError("the gateway has no usable external IPv4 address") from None
    last: Exception | None = None
    for external in _candidates(internal_port):
        for lease in (LEASE_S, 0):
            try:
                _add(gw, external, internal_port, lease)
                return PortMapping(gw, str(ext_ip), external, internal_port, lease, now)
            except UpnpError as e:
                last = e
                if "725" not in str(e):  # OnlyPermanentLeasesSupported: try lease 0
                    break
    raise UpnpError(f"the gateway forwards no port here: {last}")


def _candidates(port: int) -> list[int]:
    out = [port]
    for step in (1, 2, 3, 1000, 2000):
        p = port + step if port + step <= 65535 else port - step
        if 1024 <= p <= 65535 and p not in out:
            out.append(p)
    return out


# -- the node's use of it ----------------------------------------------------------------------

NAT_ENV = "FOGWHEEL_NODE_NAT"  # auto (default): UPnP and the rendezvous on a LAN address; off


def behind_nat(url: str, setting: str | None = None) -> bool:
    """Whether a chunk server at `url` sits on a LAN address (private, not loopback), where the
    node asks its router for a port and waits on the rendezvous; `FOGWHEEL_NODE_NAT=off` never."""
    import os

    if (setting or os.environ.get(NAT_ENV, "auto")).strip().lower() == "off":
        return False
    try:
        ip = ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:
        return False
    return ip.is_private and not ip.is_loopback and not ip.is_link_local


def try_map(url: str, now: float) -> PortMapping | None:
    """A router port forwarded to the chunk server at `url`, or None (no gateway, refused)."""
    port = urlsplit(url).port
    if port is None:
        return None
    try:
        return map_port(port, now)
    except (OSError, ET.ParseError, ValueError):
        return None


def keep(mapping: PortMapping, stop: threading.Event) -> threading.Thread:
    """Renew `mapping` at half its lease until `stop`, then delete it from the router."""

    def loop() -> None:
        while not stop.wait(30.0):
            if mapping.due(time.time()):
                with contextlib.suppress(OSError, ET.ParseError, UpnpError):
                    mapping.renew(time.time())
        mapping.remove()

    t = threading.Thread(target=loop, name="upnp-lease", daemon=True)
    t.start()
    return t
