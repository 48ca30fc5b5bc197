#!/usr/bin/env python3
"""Checks a kernel's config (/boot/config-*) against a Kconfig fragment (firmware-configs/kernel/helix.config).

    scripts/kconfig-check.py FRAGMENT CONFIG

Prints one line for the kernel: the options it sets as the fragment asks, those it sets otherwise, and those it
does not know at all (a distribution config lists every option of its version, "# CONFIG_X is not set" included,
so an option absent from it did not exist yet, e.g. CONFIG_BPF_UNPRIV_DEFAULT_OFF before 5.13). Options after a
"# recommended:" comment in the fragment are reported apart and never fail the check. Exits 1 if a needed option
is set otherwise, 0 if the rest only lacks options its version does not have.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def read_config(path: Path) -> tuple[dict[str, str], set[str]]:
    """Option -> value ('n' for '# ... is not set') of a Kconfig file or fragment, and the recommended options."""
    out: dict[str, str] = {}
    recommended: set[str] = set()
    in_recommended = False
    for line in path.read_text().splitlines():
        line = line.strip()
        in_recommended |= line.startswith("# recommended:")
        if m := _SET.match(line):
            out[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            out[m.group(1)] = "n"
        else:
            continue
        if in_recommended:
            recommended.add(m.group(1))
    return out, recommended


def main(argv: list[str]) -> int:
    """Entry point; returns the exit code."""
    if len(argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    (wanted, recommended), (have, _) = read_config(Path(argv[1])), read_config(Path(argv[2]))
    release = Path(argv[2]).name.removeprefix("config-")
    differ = {k: f"{k}={have[k]} (wants {v})" for k, v in wanted.items() if k in have and have[k] != v}
    wrong = [text for k, text in differ.items() if k not in recommended]
    advisory = [text for k, text in differ.items() if k in recommended]
    unknown = [k for k in wanted if k not in have]
    ok = len(wanted) - len(differ) - len(unknown)
    line = f"{release}: {ok}/{len(wanted)} options as the fragment asks"
    if wrong:
        line += "; NEEDED but set otherwise: " + ", ".join(wrong)
    if advisory:
        line += "; recommended, set otherwise: " + ", ".join(advisory)
    if unknown:
        line += "; not in this kernel version: " + ", ".join(unknown)
    print(line)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
