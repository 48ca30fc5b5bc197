"""Reading what the process holds: RSS, and what a BPF ring buffer will add to it once its pages are first read."""
from __future__ import annotations

from pathlib import Path

from edge.runtime.rss import read_rss, read_unfaulted

SMAPS = """\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                 100 kB
VmFlags: rd wr mr mw me ac
7f2371636000-7f2371837000 r--s 00000000 00:0e 1061                       anon_inode:bpf-map
Size:               2052 kB
Rss:                 260 kB
VmFlags: rd mr me ms
7f2372fba000-7f2372fbb000 rw-s 00000000 00:0e 1061                       anon_inode:bpf-map
Size:                  4 kB
Rss:                   4 kB
7f2372fbc000-7f2372fbd000 rw-p 00000000 00:00 0
Size:                  4 kB
Rss:                   0 kB
"""


def test_the_ring_buffers_pages_not_yet_read_are_counted(tmp_path: Path) -> None:
    smaps = tmp_path / "smaps"
    smaps.write_text(SMAPS)
    assert read_unfaulted(smaps=str(smaps)) == (2052 - 260) * 1024
    assert read_unfaulted("[heap]", smaps=str(smaps)) == 32 * 1024


def test_no_smaps_means_nothing_to_add(tmp_path: Path) -> None:
    assert read_unfaulted(smaps=str(tmp_path / "missing")) == 0
    assert read_rss() > 0
