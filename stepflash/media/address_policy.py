"""Which network addresses stepflash may fetch a user's URL from.

A server that fetches URLs for its callers must not become their way into its own network:
loopback, private, link-local, multicast, reserved and cloud-metadata addresses are refused,
however they are spelled. The policy judges resolved addresses, not URL text, so decimal,
octal, hex and IPv4-mapped spellings land on the same check; IPv6 forms that embed an IPv4
address (mapped, 6to4, NAT64) are judged by that embedded address too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Metadata services that answer on addresses the public-address rule alone would let through
# (Azure's wire server is a public address), plus the names clouds give them.
_METADATA_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("168.63.129.16/32"),
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
_METADATA_HOSTS = ("metadata.google.internal", "metadata.goog", "metadata.azure.internal")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(Exception):
    """The URL points where stepflash does not fetch from; the message says why."""


@dataclass(frozen=True, slots=True)
class _Endpoint:
    address: IPAddress
    port: int


def _describe(address: IPAddress) -> str:
    """What kind of non-public address this is, in words for the error message."""
    for label, flag in (
        ("an unspecified", address.is_unspecified),
        ("a loopback", address.is_loopback),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a reserved", address.is_reserved),
        ("a private", address.is_private),
    ):
        if flag:
            return f"{label} address"
    return "not a public address"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _parse_endpoint(entry: str) -> _Endpoint | None:
    """`127.0.0.1:9000` or `[::1]:9000`; None when the entry has no port."""
    host, colon, port = entry.rpartition(":")
    if not colon or not port.isdigit() or not host or (":" in host and not host.startswith("[")):
        return None
    return _Endpoint(ipaddress.ip_address(host.strip("[]")), int(port))


class AddressPolicy:
    """Public addresses pass; non-public ones only when allow-listed; denials always win."""

    def __init__(
        self,
        allow_networks: tuple[IPNetwork, ...] = (),
        allow_endpoints: tuple[_Endpoint, ...] = (),
        deny_networks: tuple[IPNetwork, ...] = (),
        deny_hosts: tuple[str, ...] = (),
    ) -> None:
        self._allow_networks = allow_networks
        self._allow_endpoints = frozenset(allow_endpoints)
        self._deny_networks = deny_networks
        self._deny_hosts = tuple(host.lower().rstrip(".") for host in deny_hosts)

    @classmethod
    def from_lists(cls, allow: list[str], deny: list[str]) -> AddressPolicy:
        """Build from configuration entries; a malformed entry raises ValueError naming it."""
        networks, endpoints = [], []
        for entry in allow:
            try:
                endpoint = _parse_endpoint(entry)
                if endpoint is not None:
                    endpoints.append(endpoint)
                else:
                    networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as error:
                raise ValueError(
                    f"fetch_allow entry {entry!r} is neither a network nor address:port"
                ) from error
        deny_networks, deny_hosts = [], []
        for entry in deny:
            try:
                deny_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not entry or any(c in entry for c in "/: "):
                    raise ValueError(
                        f"fetch_deny entry {entry!r} is neither a network nor a host name"
                    ) from None
                deny_hosts.append(entry)
        return cls(tuple(networks), tuple(endpoints), tuple(deny_networks), tuple(deny_hosts))

    def check_host(self, host: str) -> None:
        """Refuse denied host names before anything is resolved."""
        name = host.lower().rstrip(".")
        for denied in (*_METADATA_HOSTS, *self._deny_hosts):
            if denied.startswith("*."):
                if name.endswith(denied[1:]) or name == denied[2:]:
                    raise AddressRefused(f"{host} is on the deny list")
            elif name == denied:
                raise AddressRefused(f"{host} is on the deny list")

    def check_address(self, address: IPAddress, port: int) -> None:
        """Return if stepflash may connect to `address:port`, else raise AddressRefused."""
        judged: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            if address.teredo is not None:
                raise AddressRefused(f"{address} is a Teredo tunnel address")
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                judged.insert(0, embedded)  # the address it really reaches speaks first
        for candidate in judged:
            if any(candidate in network for network in _METADATA_NETWORKS):
                raise AddressRefused(f"{address} is a cloud metadata or link-local address")
            if any(candidate in network for network in self._deny_networks):
                raise AddressRefused(f"{address} is on the deny list")
        if _Endpoint(address, port) in self._allow_endpoints:
            return
        if any(address in network for network in self._allow_networks):
            return
        for candidate in judged:
            if not candidate.is_global or candidate.is_multicast:
                via = f" (reaching {candidate})" if candidate is not address else ""
                raise AddressRefused(f"{address}{via} is {_describe(candidate)}")
