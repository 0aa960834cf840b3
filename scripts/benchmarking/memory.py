"""Peak memory of a process and its children (DataLoader workers), sampled in a background thread.

``ru_maxrss`` sees one process only and counts pages shared with workers again in each; the proportional set size
(PSS) summed over the process tree counts every page once, which is what the machine has to hold.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil


def tree_memory_mib(process: psutil.Process) -> dict[str, float]:
    """PSS and RSS (MiB) summed over ``process`` and its living descendants (RSS where PSS is not available)."""
    pss = rss = 0.0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:  # the process ended
        return {"pss_mib": 0.0, "rss_mib": 0.0}
    for member in members:
        try:
            info = member.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return {"pss_mib": pss / 2**20, "rss_mib": rss / 2**20}


class PeakTreeMemory:
    """Context manager: the peak PSS and RSS of a process tree, sampled every ``interval`` seconds.

    Example::

        with PeakTreeMemory() as memory:
            run()
        memory.peak_pss_mib
    """

    def __init__(self, pid: int | None = None, interval: float = 0.2) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak_pss_mib = 0.0
        self.peak_rss_mib = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def sample(self) -> None:
        memory = tree_memory_mib(self.process)
        self.peak_pss_mib = max(self.peak_pss_mib, memory["pss_mib"])
        self.peak_rss_mib = max(self.peak_rss_mib, memory["rss_mib"])
        self.samples += 1

    def _sample_until_stopped(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> PeakTreeMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def read(self) -> dict[str, float]:
        return {"peak_pss_mib": round(self.peak_pss_mib, 1), "peak_rss_mib": round(self.peak_rss_mib, 1)}
