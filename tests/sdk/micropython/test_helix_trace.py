"""The MicroPython device SDK, run for real under MicroPython (WebAssembly port in Node.js) as source and as
mpy-cross bytecode, round-trips exactly through the agent's decoder."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import _micropython as mpy
from bench._c_sdk import must_run
from edge.codec.sdk_cbor import decode_payload
from edge.model import SpanKind, StatusCode

HERE = Path(__file__).parent


@pytest.fixture(scope="module", params=["source", "mpy-cross"])
def output(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    reason = mpy.missing()
    if reason:
        if must_run():
            pytest.fail(f"{reason}; CI must run the MicroPython SDK tests")
        pytest.skip(reason)
    module = mpy.MODULE
    if request.param == "mpy-cross":
        module = mpy.compile_mpy(tmp_path_factory.mktemp("mpy"))
        assert module.suffix == ".mpy" and module.stat().st_size > 0
    r = mpy.run(HERE / "scenario.py", module)
    assert "micropython" in mpy.run(HERE / "implementation.py").stdout  # not CPython by mistake
    return r.stdout.splitlines()


def test_every_field_round_trips_through_the_agents_decoder(output: list[str]) -> None:
    decoded = [decode_payload(bytes.fromhex(line.split()[2]), {}) for line in output if line.startswith("MSG ")]
    assert all(line.split()[1] == "helix/sdk/valve-3/spans" for line in output if line.startswith("MSG "))
    assert all(d.errors == [] for d in decoded)
    spans = {s.span_id.hex(): s for d in decoded for s in d.spans}
    printed = {f[3]: f[1:] for f in (line.split() for line in output if line.startswith("SPAN "))}
    lost = set(printed) - set(spans)
    assert len(lost) == 4 and {printed[i][0] for i in lost} == {"step"}  # the batch whose publish raised
    for sid, (name, trace, _, parent, start, end) in printed.items():
        if sid not in lost:
            s = spans[sid]
            assert (s.name, s.trace_id.hex(), s.parent_span_id.hex() or "-") == (name[:256], trace, parent)
            assert (s.start_ns, s.end_ns) == (int(start), int(end))
    by = {s.name: s for s in spans.values()}
    h, r, a, st = by["handleCommand"], by["readSensor"], by["actuateValve"], by["selfTest"]
    assert h.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736" and h.parent_span_id.hex() == "00f067aa0ba902b7"
    assert h.kind == SpanKind.CONSUMER and h.status_code == StatusCode.OK and h.trace_state == "vendor=abc,ot=th:8"
    assert h.attributes == {"command": "open", "valve.id": 3, "offset": -9_000_000_000, "temp": 21.4, "manual": True,
                            "raw": b"\x00\x01", "tags": ["a", 1]}
    assert [(e.name, e.attributes) for e in h.events] == [("received", {"bytes": 12})]
    assert h.start_ns <= h.events[0].time_ns <= h.end_ns
    assert r.attributes == {"sensor.id": "pt100-é"} and r.parent_span_id == h.span_id
    assert a.kind == SpanKind.CLIENT and (a.status_code, a.status_message) == (StatusCode.ERROR, "valve stuck")
    assert st.is_root and st.status_code == StatusCode.ERROR and st.status_message == "ValueError: sensor out of range"
    assert st.events[0].attributes["exception.type"] == "ValueError"
    assert h.resource.as_dict()["device.model.identifier"] == "ESP32-S3" and h.scope.name == "helix.micropython"
    inject = next(line for line in output if line.startswith("INJECT"))
    assert f"('traceparent', '00-{a.trace_id.hex()}-{a.span_id.hex()}-01')" in inject and "old" not in inject
    assert "('x', 'y')" in inject and "('tracestate', 'vendor=abc,ot=th:8')" in inject
    big = by["x" * 256]
    assert big.attributes["long"] == "y" * 256 and len(big.attributes) == 32 and len(big.events) == 16
    assert [d.cut for d in decoded][2] == {"attributes": 9, "events": 4, "strings": 2}
    assert [d.seq for d in decoded] == [0, 1, 2, 0, 2]  # the second tracer's message 1 failed to publish
    assert [d.run is not None for d in decoded] == [True] * 5
    assert len({d.run for d in decoded[:3]}) == 1 and decoded[0].run != decoded[3].run == decoded[4].run
    assert "SMALL seq=3 published=2 failures=1" in output


def test_bad_context_on_the_extract_side_is_refused_without_a_crash(output: list[str]) -> None:
    assert "BAD 10 10" in output  # upper case, version ff, zero ids, extra fields on 00, short, empty, 100 kB, types
    assert "ODD True" in output  # malformed pairs are skipped
    assert "LATER 00f067aa0ba902b7 True" in output  # a later version is read; an oversized tracestate dropped
