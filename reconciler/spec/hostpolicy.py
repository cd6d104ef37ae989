"""What a Host may hold and how far it may be overcommitted: the ``capacity`` and ``overcommit``
parts of a Host document (docs/design.md §4), split from :mod:`reconciler.spec.models` for size."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from reconciler.spec.fieldtypes import Count, Flag, Model, Size

#: Overcommit ratios: finite, above 0, and at most this. Past it a limit no longer limits anything a
#: machine holds, and host size × ratio leaves the range the policy arithmetic works in: a typo, or
#: an attempt to break the policy check.
MAX_RATIO = 1000
Ratio = Annotated[float, Field(strict=True, gt=0, le=MAX_RATIO, allow_inf_nan=False)]
#: More CPUs than any machine Linux runs on (8,192 with MAXSMP): beyond it, a typo.
MAX_HOST_CPUS = 65_536


class Capacity(Model):
    """What the host holds, overriding what libvirt reports (and the size of a new sandbox)."""

    cpus: Annotated[Count, Field(ge=1, le=MAX_HOST_CPUS)] | None = Field(
        default=None,
        description="Host CPUs the policy counts; null takes libvirt's count (a new sandbox gets 8).",
    )
    memory: Annotated[Size, Field(gt=0)] | None = Field(
        default=None,
        description="Host memory the policy counts, e.g. 64GiB; null takes the kernel's total "
        "(a new sandbox gets 16GiB).",
    )
    swap: Size | None = Field(
        default=None,
        description="Swap that memory.countSwap may add; null reads /proc/meminfo on this machine, "
        "0 for remote hosts (libvirt does not report swap).",
    )


class CpuPolicy(Model):
    """CPU overcommit: sum of vCPUs <= cpus x ratio, and no domain wider than maxVcpusPerDomain."""

    ratio: Ratio = Field(
        default=4.0,
        description="Sum of vCPUs may reach host CPUs × ratio (rounded down); default 4. At most 1000: "
        "past that the limit limits nothing a machine holds, and the arithmetic would overflow.",
    )
    max_vcpus_per_domain: Annotated[Count, Field(ge=1, le=MAX_HOST_CPUS)] | None = Field(
        default=None,
        description="Most vCPUs any one domain may have; null means the host's CPU count.",
    )
    count_inactive: Flag = Field(
        default=True,
        description="Whether shut-off domains count in cpu.total and memory.commit (they can be "
        "started at any time); default true.",
    )


class MemoryPolicy(Model):
    """Memory overcommit: sum of maximum memory <= (memory - reserved) x ratio, plus the balloon bound."""

    ratio: Ratio = Field(
        default=1.0,
        description="Sum of domains' maximum memory may reach (host memory − reserved) × ratio; default "
        "1. At most 1000: past that the limit limits nothing a machine holds, and the arithmetic would "
        "overflow.",
    )
    reserved: Size = Field(  # type: ignore[assignment]  # validate_default turns "1GiB" into bytes
        default="1GiB",
        description="Memory kept for the host itself, never given to domains; default 1GiB.",
    )
    count_swap: Flag = Field(
        default=False,
        description="Whether swap adds to what running domains' current memory may reach; default false.",
    )
    count_ksm: Flag = Field(
        default=False,
        description="Whether KSM savings add to what running domains' current memory may reach "
        "(they shrink when sharing drops); default false.",
    )


class Overcommit(Model):
    """How far the host may be overcommitted, and whether a breach refuses the plan or only warns."""

    enforcement: Literal["enforce", "warn"] = Field(
        default="enforce",
        description="'enforce' refuses a plan that breaks a limit on this host; 'warn' reports it and "
        "applies anyway.",
    )
    cpu: CpuPolicy = Field(default_factory=CpuPolicy, description="Limits on vCPUs.")
    memory: MemoryPolicy = Field(
        default_factory=MemoryPolicy, description="Limits on domains' maximum and current memory."
    )
