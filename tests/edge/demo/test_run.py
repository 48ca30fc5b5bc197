from __future__ import annotations

import time

from edge.demo import run
from edge.model import Span


class _Peer:
    def __init__(self, spans: list[Span]) -> None:
        self._spans = spans

    def spans(self) -> list[Span]:
        return self._spans


def test_a_trace_missing_its_apps_parent_waits_past_the_sdks_default_export_delay(capsys) -> None:
    # The OpenTelemetry SDK exports every 5 s by default, so the kernel and device spans of a trace arrive first;
    # printed at the plain quiet time, the tree would show them without the app's spans.
    whole, partial = b"\x01" * 16, b"\x02" * 16
    spans = [Span(whole, b"\x01" * 8, "createOrder", 0, 10),
             Span(whole, b"\x02" * 8, "GET", 1, 5, parent_span_id=b"\x01" * 8),
             Span(partial, b"\x03" * 8, "GET", 1, 5, parent_span_id=b"\x09" * 8)]
    printed: set[bytes] = set()
    quiet_for = run._QUIET_S + 0.5
    last_change = {whole: time.monotonic() - quiet_for, partial: time.monotonic() - quiet_for}
    run._print_ready(_Peer(spans), printed, last_change, force=False)  # type: ignore[arg-type]
    assert printed == {whole}
    assert whole.hex() in capsys.readouterr().out
    last_change[partial] = time.monotonic() - run._QUIET_ORPHANS_S - 0.5
    run._print_ready(_Peer(spans), printed, last_change, force=False)  # type: ignore[arg-type]
    assert printed == {whole, partial}
    assert run._QUIET_ORPHANS_S > 5.0  # the SDK default BatchSpanProcessor schedule delay
