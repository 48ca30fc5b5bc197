"""The C device SDK, built with AddressSanitizer and UBSan, round-trips exactly through the agent's decoder."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench._c_sdk import SANITIZE, SDK_C, arm_size, build, build_m4_object, build_mosquitto_device, undefined_symbols
from edge.codec.sdk_cbor import decode_payload
from edge.model import SpanKind, StatusCode
from edge.sources.mqtt_sdk import MqttSourceStats, SequenceGaps
from tests.sdk.conftest import need, need_file

HERE = Path(__file__).parent
REMOTE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("gcc")
    out = tmp_path_factory.mktemp("c-sdk") / "roundtrip"
    return build(out, [SDK_C / "helix_trace.c", HERE / "roundtrip.c"], SANITIZE)


def _run(exe: Path, *args: str) -> tuple[list[bytes], dict[str, list[str]], list[str]]:
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    msgs, spans, lines = [], {}, r.stdout.splitlines()
    for line in lines:
        if line.startswith("MSG "):
            msgs.append(bytes.fromhex(line[4:]))
        elif line.startswith("SPAN "):
            f = line.split()
            spans[f[3]] = f[1:]
    return msgs, spans, lines


def test_every_field_round_trips_through_the_agents_decoder(roundtrip: Path) -> None:
    msgs, printed, lines = _run(roundtrip)
    decoded = [decode_payload(m, {}) for m in msgs]
    assert all(d.errors == [] for d in decoded)
    spans = {s.span_id.hex(): s for d in decoded for s in d.spans}
    # Every span the device ended arrived once, with its exact ids, parent and times (the failed publish's lost).
    lost = set(printed) - set(spans)
    assert len(lost) == 4 and {printed[i][0] for i in lost} == {"step"}
    for sid, (name, trace, _, parent, start, end) in printed.items():
        if sid in lost:
            continue
        s = spans[sid]
        assert s.name == name[:64]
        assert s.trace_id.hex() == trace and (s.parent_span_id.hex() or "-") == parent
        assert (s.start_ns, s.end_ns) == (int(start), int(end))
    by = {s.name: s for s in spans.values()}
    h, r, a = by["handleCommand"], by["readSensor"], by["actuateValve"]
    assert h.parent_span_id.hex() == "00f067aa0ba902b7" and h.trace_id.hex() == REMOTE[3:35]
    assert h.kind == SpanKind.CONSUMER and h.status_code == StatusCode.OK and h.status_message == ""
    assert h.attributes == {"command": "open-valve", "valve.id": 42, "offset": -9_000_000_000, "temp": 21.4,
                            "manual": True}
    assert [e.name for e in h.events] == ["received"] and h.start_ns < h.events[0].time_ns < h.end_ns
    assert r.attributes == {"sensor.id": "pt100-é", "zero": 0} and r.parent_span_id == h.span_id
    assert a.kind == SpanKind.CLIENT and a.status_code == StatusCode.ERROR and a.status_message == "valve stuck"
    assert h.trace_state == r.trace_state == "vendor=abc,ot=th:8" and h.flags == 1
    assert f"INJECT 00-{a.trace_id.hex()}-{a.span_id.hex()}-01 vendor=abc,ot=th:8" in lines
    assert by["selfTest"].is_root and by["selfTest"].kind == SpanKind.SERVER
    res = h.resource.as_dict()
    assert res["service.name"] == "pump-ctrl" and res["device.id"] == "pump-7" and h.scope.name == "helix.c"
    # Cuts: never an overflow, always counted in the message.
    big = by["n" * 64]
    assert big.attributes["bad.utf8"] == "ok" and big.attributes["long"] == "0123456789" * 6 + "0€"
    assert len(big.attributes) == 19 and big.events == ()
    assert decoded[2].cut == {"attributes": 23, "events": 40, "strings": 3}
    assert "ATTRS 19 EVENTS 0" in lines
    # Numbered messages: the first tracer's 0, 1, 2; the small one's 0, 2, 3 (1 failed to publish).
    assert [d.seq for d in decoded] == [0, 1, 2, 0, 2, 3]
    # Each tracer names its run; a tracer's messages share it, so the agent tells a restart from a late message.
    assert len({d.run for d in decoded[:3]}) == 1 and len({d.run for d in decoded[3:]}) == 1
    assert decoded[0].run is not None and decoded[0].run != decoded[3].run
    gaps = SequenceGaps(MqttSourceStats())
    assert [gaps.observe("pump-7", d.seq, d.run) for d in decoded[3:]] == [0, 1, 0]
    assert "SMALL seq=4 published=3 failures=1" in lines


@pytest.mark.parametrize("traceparent", [
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has no more fields
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",  # short
    "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "",
    "0" * 100_000,  # huge
])
def test_a_bad_traceparent_starts_a_new_trace(roundtrip: Path, traceparent: str) -> None:
    msgs, printed, lines = _run(roundtrip, traceparent)
    assert "REMOTE 0" in lines
    h = next(s for d in map(lambda m: decode_payload(m, {}), msgs) for s in d.spans if s.name == "handleCommand")
    assert h.is_root and h.trace_id.hex() != REMOTE[3:35] and h.trace_state == ""


@pytest.mark.parametrize("traceparent", [REMOTE.replace("00-", "01-", 1), REMOTE.replace("00-", "cc-", 1) + "-more"])
def test_a_later_traceparent_version_is_read(roundtrip: Path, traceparent: str) -> None:
    msgs, _, lines = _run(roundtrip, traceparent)
    assert "REMOTE 1" in lines
    h = next(s for d in map(lambda m: decode_payload(m, {}), msgs) for s in d.spans if s.name == "handleCommand")
    assert h.parent_span_id.hex() == "00f067aa0ba902b7" and h.trace_id.hex() == REMOTE[3:35]


def test_extract_survives_a_bounded_libfuzzer_run(tmp_path: Path) -> None:
    """A bounded fuzz pass (about 10 s) over extract and the span API, under ASan and UBSan."""
    need("clang")
    exe = build(tmp_path / "fuzz", [SDK_C / "helix_trace.c", HERE / "fuzz_extract.c"],
                ["-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all"], cc="clang")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    tp = REMOTE.encode()
    (corpus / "seed").write_bytes(b"\x0b\x00" + bytes([len(tp)]) + b"traceparent" + tp
                                  + b"\x0a\x00\x05tracestatea=b,c")
    r = subprocess.run([str(exe), "-runs=150000", "-max_len=2048", "-max_total_time=60", str(corpus)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done 150000 runs" in r.stderr or "Done" in r.stderr


def test_cortex_m4_build_has_no_heap_and_no_static_ram(tmp_path: Path) -> None:
    need("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm")
    obj = build_m4_object(tmp_path / "helix_trace.o")
    size = arm_size(obj)
    assert size["data"] == 0 and size["bss"] == 0, size  # everything lives in the caller's storage
    assert undefined_symbols(obj) <= {"memcpy", "memmove", "memset"}  # no malloc, no printf


def test_examples_compile(tmp_path: Path) -> None:
    need("gcc")
    esp = SDK_C / "examples" / "esp_idf"
    build(tmp_path / "esp.o", [esp / "esp_idf_device.c"], [f"-I{esp / 'stub'}"], compile_only=True)
    need_file("/usr/include/mosquitto.h", "libmosquitto-dev")
    build_mosquitto_device(tmp_path / "mosquitto_device")
