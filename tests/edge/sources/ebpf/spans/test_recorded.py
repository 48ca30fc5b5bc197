"""Spans built from a fixed set of recorded ring-buffer records are exactly the spans expected of them.

recorded_spans.json holds what the builder made of _recorded.py's records (HTTP/1 heads of many shapes, pipelined,
split, cut, malformed; MQTT; TCP) before its hot paths were made faster: a faster decoder, parser or span builder must
give the same spans, attribute for attribute. Rewrite the file (`python -m tests.edge.sources.ebpf.spans._recorded`)
only for an intended change of span output. Both implementations are checked: the pure-Python modules (the reference)
and, where the package was built with it, the mypyc-compiled accelerator (edge/accel.py).
"""
from __future__ import annotations

import json

import pytest

from tests.edge._implementations import IMPLEMENTATIONS

from ._recorded import GOLDEN, build, recorded_records, spans_json


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("batch", [1, 7, 10_000])
def test_recorded_records_build_the_expected_spans(batch, implementation):
    expected = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(spans_json(build(recorded_records(), batch, implementation)), sort_keys=True))
    assert len(got) == len(expected) == 22
    for g, e in zip(got, expected):
        assert g == e, f"span {e['name']} {e['attributes'].get('url.path')} differs"
