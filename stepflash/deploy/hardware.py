"""The hardware the planner knows: memory per device and what the silicon can run.

Memory is in GiB, as the driver reports it (`nvidia-smi`, `rocm-smi`; RAM sizes are binary
too), while weights are file sizes in decimal GB: both become bytes before any arithmetic.
Unified-memory machines share memory with the operating system, so part is held back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum

GB = 1_000_000_000
GIB = 2**30


class Vendor(StrEnum):
    NVIDIA = "nvidia"
    AMD = "amd"
    APPLE = "apple"


@dataclass(frozen=True)
class HardwareProfile:
    """One kind of accelerator (or unified-memory machine)."""

    name: str
    memory_gib: float
    vendor: Vendor
    architecture: str
    fp8: bool
    nvfp4: bool  # the NVFP4 MoE kernels the published recipes use (datacenter Blackwell)
    unified: bool  # memory shared with the CPU and the OS
    max_count: int
    os_reserve_gib: float = 0.0  # unified memory the OS keeps for itself
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)

    @property
    def usable_bytes(self) -> int:
        """Memory an engine may use on one device (unified machines keep some for the OS)."""
        return int((self.memory_gib - self.os_reserve_gib) * GIB)

    @property
    def discrete_gpu(self) -> bool:
        """Runs SGLang and vLLM (CUDA or ROCm), as opposed to Metal or a laptop iGPU."""
        return self.vendor is not Vendor.APPLE and self.architecture != "rdna3.5"


PROFILES: tuple[HardwareProfile, ...] = (
    HardwareProfile("H100", 79.6, Vendor.NVIDIA, "hopper", True, False, False, 8),
    HardwareProfile("H200", 140.4, Vendor.NVIDIA, "hopper", True, False, False, 8),
    HardwareProfile("B200", 179.0, Vendor.NVIDIA, "blackwell", True, True, False, 8),
    HardwareProfile("B300", 268.0, Vendor.NVIDIA, "blackwell-ultra", True, True, False, 8),
    HardwareProfile("GB200", 184.0, Vendor.NVIDIA, "blackwell", True, True, False, 8),
    HardwareProfile("GB300", 277.0, Vendor.NVIDIA, "blackwell-ultra", True, True, False, 8),
    HardwareProfile("MI300X", 192, Vendor.AMD, "cdna3", True, False, False, 8),
    HardwareProfile("MI355X", 288, Vendor.AMD, "cdna4", True, False, False, 8),
    HardwareProfile(
        "RTX PRO 6000",
        95.6,
        Vendor.NVIDIA,
        "blackwell-sm120",
        True,
        False,
        False,
        8,
        aliases=("rtxpro6000", "rtx6000pro"),
        note="workstation Blackwell (sm120): the NVFP4 MoE kernels of the recipes need sm100",
    ),
    HardwareProfile(
        "DGX Station",
        277.0,
        Vendor.NVIDIA,
        "blackwell-ultra",
        True,
        True,
        False,
        1,
        aliases=("dgxstation", "gb300desktop"),
        note="GB300 desktop: 288 GB HBM3e on the GPU (plus 496 GB LPDDR5X for the CPU)",
    ),
    HardwareProfile(
        "DGX Spark",
        128,
        Vendor.NVIDIA,
        "blackwell-sm121",
        True,
        False,
        True,
        1,
        os_reserve_gib=8,
        aliases=("dgxspark", "gb10"),
        note="GB10, 128 GB unified LPDDR5X",
    ),
    HardwareProfile(
        "Mac Studio",
        512,
        Vendor.APPLE,
        "apple-m3-ultra",
        False,
        False,
        True,
        1,
        os_reserve_gib=8,
        aliases=("macstudio", "m3ultra"),
        note="M3 Ultra, 512 GB unified (--memory-gb 256 for smaller models); StepFun raises "
        "macOS's GPU limit to 120 GiB on a 128 GB Mac, so 8 GiB is left to the OS",
    ),
    HardwareProfile(
        "Ryzen AI Max+ 395",
        128,
        Vendor.AMD,
        "rdna3.5",
        False,
        False,
        True,
        1,
        os_reserve_gib=8,
        aliases=("ryzenaimax395", "ryzenaimax+395", "strixhalo", "ryzen395"),
        note="Strix Halo, 128 GB unified; llama.cpp via Vulkan or ROCm",
    ),
)


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


_BY_KEY = {_key(alias): p for p in PROFILES for alias in (p.name, *p.aliases)}


class UnknownHardware(ValueError):
    """The hardware string names no profile; the message lists the known ones."""


@dataclass(frozen=True)
class Hardware:
    """`count` devices of one profile on one node, e.g. `4xH200`."""

    profile: HardwareProfile
    count: int

    @property
    def label(self) -> str:
        return f"{self.count}x{self.profile.name}"

    @property
    def total_bytes(self) -> int:
        return self.profile.usable_bytes * self.count


def parse_hardware(text: str, memory_gb: float | None = None) -> Hardware:
    """Read `4xH200`, `H200`, `8 x h100` or `mac-studio`.

    `memory_gb` overrides the memory per device as vendors name it (a "256 GB" Mac has
    256 GiB).
    """
    match = re.fullmatch(r"\s*(?:(\d+)\s*[x*\u00d7]\s*)?(.+?)\s*", text, re.IGNORECASE)
    if not match:
        raise UnknownHardware(f"cannot read hardware {text!r}; write it as 4xH200")
    count = int(match.group(1) or 1)
    profile = _BY_KEY.get(_key(match.group(2)))
    if profile is None:
        known = ", ".join(p.name for p in PROFILES)
        raise UnknownHardware(f"unknown hardware {match.group(2)!r}; known: {known}")
    if count < 1:
        raise UnknownHardware("the device count must be at least 1")
    if memory_gb is not None:
        if memory_gb <= profile.os_reserve_gib:
            raise UnknownHardware(f"--memory-gb must be above {profile.os_reserve_gib:g}")
        profile = replace(profile, memory_gib=memory_gb)
    return Hardware(profile, count)
