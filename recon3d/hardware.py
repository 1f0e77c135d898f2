"""What this machine's hardware computes natively (bf16 on a CPU or a CUDA device: the precision choices of training
and inference depend on it), and how much memory a device has free."""

from __future__ import annotations

import platform

import torch


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (x86 avx512_bf16 or AMX, Arm bf16): there oneDNN's bf16
    matmuls run several times faster than fp32; elsewhere bf16 is emulated and no faster (docs/results.md)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(" ".join(line for line in f if line.lower().startswith(("flags", "features"))).split())
    except OSError:  # not Linux: macOS on Apple silicon has bf16, but torch's CPU kernels there gain little
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"}) or (platform.machine() == "aarch64" and "bf16" in flags)


def native_bf16(device_type: str) -> bool:
    """Whether a device of this type ("cuda" or "cpu") computes bf16 natively here: a CUDA GPU that supports it
    (Ampere and later), a CPU per native_bf16_cpu. Where it is emulated, bf16 is no faster than fp32 (or far slower)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device_type == "cpu" and native_bf16_cpu()


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes a new allocation can take on `device`: the kernel's MemAvailable for the CPU, the free memory of a CUDA
    device; 0 when it cannot be told (nothing is then refused for it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]) if torch.cuda.is_available() else 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
