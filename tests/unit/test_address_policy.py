"""The SSRF address policy: public passes, the rest only when allow-listed, denials win."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from stepflash.config import ConfigError, load_settings
from stepflash.media.address_policy import AddressPolicy, AddressRefused

PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "1.1.1.1"]
NOT_PUBLIC = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("10.20.30.40", "private"),
    ("172.31.0.1", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "not a public address"),  # carrier-grade NAT
    ("169.254.169.254", "metadata"),
    ("168.63.129.16", "metadata"),  # Azure's wire server is a public address
    ("224.0.0.251", "multicast"),
    ("240.0.0.1", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private"),
    ("fd00:ec2::254", "metadata"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("2002:c0a8:101::", "private"),  # 6to4 of 192.168.1.1
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    AddressPolicy().check_address(ipaddress.ip_address(address), 443)


@pytest.mark.parametrize(("address", "reason"), NOT_PUBLIC)
def test_non_public_addresses_are_refused_with_the_reason(address: str, reason: str) -> None:
    with pytest.raises(AddressRefused, match=reason):
        AddressPolicy().check_address(ipaddress.ip_address(address), 80)


def test_an_allowed_endpoint_opens_one_port_only() -> None:
    policy = AddressPolicy.from_lists(["127.0.0.1:9000", "[::1]:9001"], [])
    policy.check_address(ipaddress.ip_address("127.0.0.1"), 9000)
    policy.check_address(ipaddress.ip_address("::1"), 9001)
    with pytest.raises(AddressRefused):
        policy.check_address(ipaddress.ip_address("127.0.0.1"), 9001)


def test_an_allowed_network_opens_its_addresses_but_never_metadata() -> None:
    policy = AddressPolicy.from_lists(["10.1.0.0/16", "169.254.0.0/16"], [])
    policy.check_address(ipaddress.ip_address("10.1.2.3"), 80)
    with pytest.raises(AddressRefused, match="private"):
        policy.check_address(ipaddress.ip_address("10.2.0.1"), 80)
    with pytest.raises(AddressRefused, match="metadata"):
        policy.check_address(ipaddress.ip_address("169.254.169.254"), 80)


def test_deny_lists_win_over_public_addresses() -> None:
    policy = AddressPolicy.from_lists([], ["203.0.113.0/24", "*.example.com", "cdn.test"])
    with pytest.raises(AddressRefused, match="deny list"):
        policy.check_address(ipaddress.ip_address("203.0.113.7"), 443)
    for host in ("a.example.com", "A.B.Example.Com.", "example.com", "cdn.test"):
        with pytest.raises(AddressRefused, match="deny list"):
            policy.check_host(host)
    policy.check_host("example.org")
    policy.check_host("notexample.com")
    with pytest.raises(AddressRefused):
        AddressPolicy().check_host("metadata.google.internal")


@pytest.mark.parametrize(
    ("key", "entry"),
    [("fetch_allow", "localhost:80"), ("fetch_allow", "10.0.0.0/33"), ("fetch_deny", "a b")],
)
def test_malformed_list_entries_are_configuration_errors(
    tmp_path: Path, key: str, entry: str
) -> None:
    config = tmp_path / "stepflash.toml"
    config.write_text(f'[media]\n{key} = ["{entry}"]\n')
    with pytest.raises(ConfigError, match=f"{key} entry"):
        load_settings(config)
