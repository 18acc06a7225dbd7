"""Which mixed precision to train in, given what the hardware does natively.

bf16 pays off only where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and
CPUs with AVX512-BF16 or AMX. Elsewhere PyTorch emulates it: on this project's AVX2 machines,
bf16 `linear` ran at 0.14x the fp32 speed and a bf16-autocast training step was 23x slower
(scripts/bench.py prints both). `auto` picks bf16 only where it is native.
"""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# The instruction-set flags that decide how fast this model trains on a CPU, in the order a
# benchmark reports them.
MATMUL_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                    "amx_int8")


def _cpu_flags(cpuinfo: str | None) -> set[str] | None:
    if cpuinfo is None and Path("/proc/cpuinfo").exists():
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    if cpuinfo is None:
        return None
    return {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}


def cpu_isa_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of MATMUL_ISA_FLAGS this CPU has (empty where /proc/cpuinfo is missing)."""
    flags = _cpu_flags(cpuinfo) or set()
    return [flag for flag in MATMUL_ISA_FLAGS if flag in flags]


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """``cpuinfo``: the text of /proc/cpuinfo (read when not given)."""
    flags = _cpu_flags(cpuinfo)
    if flags is not None:
        return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")  # no /proc: a best guess


def resolve_precision(requested: str, on_cuda: bool) -> tuple[str, str | None]:
    """(precision for accelerate, a note for the user or None)."""
    native = torch.cuda.is_bf16_supported(including_emulation=False) if on_cuda else cpu_has_native_bf16()
    if requested == "auto":
        return ("bf16", None) if native else ("no", None)
    if requested == "bf16" and not native:
        where = "this GPU" if on_cuda else "this CPU (no avx512_bf16 or amx_bf16)"
        return requested, (f"warning: training.mixed_precision: bf16 is emulated on {where} and runs several times "
                           "slower than fp32; 'auto' or 'no' avoids that.")
    return requested, None
