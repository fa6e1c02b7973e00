"""What the status bar shows: this machine's device and the memory in use.

Read from ``/proc`` (or psutil when present) and ``nvidia-smi``, never through torch:
importing torch in the server would cost it seconds and hundreds of MB, only to name a
device. A GPU is reported only when ``nvidia-smi`` exists and answers.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def memory() -> dict[str, int | None]:
    """System memory in bytes: total and used (total - available)."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return {"total": int(vm.total), "used": int(vm.total - vm.available)}
    except ImportError:
        pass
    info: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {"total": None, "used": None}
    total = info.get("MemTotal")
    avail = info.get("MemAvailable", info.get("MemFree"))
    return {"total": total, "used": total - avail if total and avail is not None else None}


def gpus(timeout: float = 2.0) -> list[dict[str, Any]]:
    """Every GPU nvidia-smi lists, with its memory in bytes; [] when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            try:
                used, total = (int(float(x)) * 2**20 for x in parts[1:])  # MiB
            except ValueError:
                used = total = None
            found.append({"name": parts[0], "memory_used": used, "memory_total": total})
    return found


def status() -> dict[str, Any]:
    """The status bar's one JSON object."""
    gpu = gpus()
    return {"kind": "gpu" if gpu else "cpu",
            "device": gpu[0]["name"] if gpu else cpu_model(),
            "cpu": cpu_model(), "cores": os.cpu_count(),
            "memory": memory(), "gpus": gpu}
