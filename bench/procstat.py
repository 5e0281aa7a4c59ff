"""Percentiles and what /proc says about a process's CPU and memory.

Nothing here imports the app or a third-party package: the load-generator processes
use it too, and must stay lean.
"""

import math
import os
import time
from collections.abc import Iterable, Sequence

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    middle = percentile(present, 50)
    return None if middle is None else round(middle, 4)


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields we need follow its ")".
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def status_kb(pid: int | str, key: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / _TICKS, total / _TICKS


def children(pid: int) -> list[int]:
    """The direct children of a process (there is no /proc/<pid>/children here)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(name))
    return found


class CpuMeter:
    """CPU use of some processes and of the machine over a window, in cores."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self._start: dict[str, float] = {}
        self._machine = (0.0, 0.0)
        self._t = 0.0

    def start(self) -> None:
        self._t = time.monotonic()
        self._machine = machine_busy_seconds()
        self._start = {name: _cpu_or_zero(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        """Cores used by each named process, the whole machine and everything else."""
        wall = max(time.monotonic() - self._t, 1e-9)
        busy, _ = machine_busy_seconds()
        used = {
            name: round((_cpu_or_zero(pid) - self._start[name]) / wall, 3)
            for name, pid in self.pids.items()
        }
        used["machine"] = round((busy - self._machine[0]) / wall, 3)
        return used


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0
