"""CPU time of the periodic rescan of processes for the uprobe attachers (TLS libraries, Python interpreters).

Compares, over every process of this host (a node's default: no allow-list), in one run:
- `two_passes`: each attacher reading every process's mappings itself, every period (the code before rescan.py:
  tls_libs.scan_process, then py_attach's interpreter lookup over a second read of /proc/<pid>/maps);
- `one_pass_full`: one read of the mappings handed to both (the first pass, and every FULL_EVERY-th);
- `one_pass_stamped`: the periodic pass of rescan.Rescanner, reading the mappings only of processes whose stamp
  (start time, address-space size) moved.
What each attacher does with the mappings is the same /proc and ELF work in all three; attaching is left out (the
attachers attach a file once, not per pass). Same-run reference: the calibration loop of bench/span_builder.py.

    python bench/rescan_cost.py [--passes 12]

Last line: JSON with ms of CPU per pass for each, per second at the default period, and the processes scanned.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from span_builder import calibration_loops_per_s  # noqa: E402

from edge.sources.ebpf.config import EbpfSourceConfig  # noqa: E402
from edge.sources.ebpf.proc_maps import Mapping, read_maps  # noqa: E402
from edge.sources.ebpf.py_attach import _interpreter_mapping  # noqa: E402
from edge.sources.ebpf.rescan import FULL_EVERY, Rescanner  # noqa: E402
from edge.sources.ebpf.tls_libs import Catalog, scan_process, traced_pids  # noqa: E402
from edge.sources.ebpf.uprobe_attach import UprobeAttacher  # noqa: E402


class _Reader(UprobeAttacher):
    """An attacher doing a real attacher's reading of the mappings, attaching nothing."""

    def __init__(self, tls: bool) -> None:
        super().__init__(None, own_pid=os.getpid())  # type: ignore[arg-type]
        self.tls = tls
        self.catalog = Catalog()
        self.known: set[int] = set()

    def known_pids(self) -> set[int]:
        return set(self.known)

    def scan_pid(self, pid: int, maps: list[Mapping] | None = None) -> None:
        try:
            if self.tls:
                scan_process(pid, self.catalog, maps)
            else:
                _interpreter_mapping(pid, read_maps(pid) if maps is None else maps)
        except OSError:
            return
        self.known.add(pid)

    def forget(self, pid: int) -> None:
        self.known.discard(pid)


def two_passes(readers: list[_Reader]) -> None:
    for r in readers:
        for pid in traced_pids(None, os.getpid()):
            r.scan_pid(pid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=2 * FULL_EVERY)
    args = ap.parse_args()
    cal = [calibration_loops_per_s()]
    old = [_Reader(True), _Reader(False)]
    new = [_Reader(True), _Reader(False)]
    rescanner = Rescanner(os.getpid())
    two_passes(old)  # the file classifications cached, as on a running node
    rescanner.rescan(new, None, full=True)
    times: dict[str, list[float]] = {"two_passes": [], "one_pass_full": [], "one_pass_stamped": []}
    for i in range(args.passes):
        t = time.process_time()
        two_passes(old)
        times["two_passes"].append(time.process_time() - t)
        full = (i + 1) % FULL_EVERY == 0  # the rescanner's own schedule, pass 0 having been the start's
        t = time.process_time()
        rescanner.rescan(new, None)
        times["one_pass_full" if full else "one_pass_stamped"].append(time.process_time() - t)
    cal.append(calibration_loops_per_s())
    ms = {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items() if v}
    period = EbpfSourceConfig().tls_rescan
    mean_new = sum(sum(v) for k, v in times.items() if k != "two_passes") / args.passes
    out = {"processes": len(traced_pids(None, os.getpid())), "ms_per_pass": ms,
           "ms_cpu_per_s": {"two_passes": round(statistics.mean(times["two_passes"]) * 1e3 / period, 3),
                            "one_pass": round(mean_new * 1e3 / period, 3)},
           "ratio_one_to_two": round(mean_new / statistics.mean(times["two_passes"]), 3),
           "scanned": rescanner.stats.processes_scanned, "unchanged": rescanner.stats.processes_unchanged,
           "calibration_loops_per_s": [round(c) for c in cal]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
