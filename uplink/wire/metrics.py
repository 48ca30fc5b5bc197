"""Metric frames: a `MetricBatch` (edge/model.py), what one node sends per export interval, as `HM` + version +
zstd(CBOR), next to span batches (`HX`) on the same link; the gateway tells them apart by the first bytes.

Decoding treats its input as hostile: every problem is a DecodeError naming it.
"""
from __future__ import annotations

import math
from typing import Any

import cbor2

from edge.errors import DecodeError
from edge.model import (GAUGE, HISTOGRAM, SUM, AttrValue, HistogramPoint, Metric, MetricBatch, Resource, ResourceMetrics,
                        Scope, SumPoint)

from .frame import METRICS_HEADER, METRICS_MAGIC, compress, decompress
from .values import Expansion

__all__ = ["encode_metrics", "decode_metrics", "decode_metrics_counted", "is_metric_batch", "METRICS_MAGIC", "METRICS_MEDIA_TYPE"]

METRICS_MEDIA_TYPE = "application/vnd.helix.metrics"
_VERSION = 1
_HEADER = METRICS_HEADER
_MAX_DEPTH = 16
_KINDS = (SUM, GAUGE, HISTOGRAM)  # wire codes of the kinds, in this order


def encode_metrics(batch: MetricBatch, level: int = 3) -> bytes:
    """The uplink frame of a metric batch: header + zstd(CBOR body)."""
    body = [batch.node_id, batch.seq, batch.start_ns, batch.time_ns,
            [[dict(r.resource.as_dict()), r.scope.name, r.scope.version, [_metric_out(m) for m in r.metrics]]
             for r in batch.resources]]
    raw = cbor2.dumps(body)
    return _HEADER.pack(METRICS_MAGIC, _VERSION) + compress(raw, level)


def decode_metrics(data: bytes, max_bytes: int = 8 * 1024 * 1024) -> MetricBatch:
    """Decode an uplink metrics frame; at most `max_bytes` are decompressed. Any problem is a DecodeError."""
    return decode_metrics_counted(data, max_bytes)[0]


def decode_metrics_counted(data: bytes, max_bytes: int, max_expanded: int | None = None) -> tuple[MetricBatch, int]:
    """Decode an uplink metrics frame and count the bytes its OTLP request will take: over `max_expanded`,
    ExpansionExceeded (a CBOR-shared text or attribute map is one object here, a copy for every use there)."""
    batch = _decode(data, max_bytes)
    if max_expanded is None:
        return batch, 0
    counter = Expansion(max_expanded, batch.node_id, batch.seq)
    counter.metrics(batch)
    return batch, counter.total


def _decode(data: bytes, max_bytes: int) -> MetricBatch:
    if len(data) < _HEADER.size or not is_metric_batch(data):
        raise DecodeError("not a Helix metrics batch (expected it to start with b'HM')")
    _, version = _HEADER.unpack_from(data)
    if version != _VERSION:
        raise DecodeError(f"metrics batch format version {version} is not supported (this gateway reads {_VERSION})")
    raw = decompress(bytes(data[_HEADER.size:]), 0, max_bytes, "metrics batch")
    try:
        body = cbor2.loads(raw, max_depth=_MAX_DEPTH)
    except Exception as e:  # noqa: BLE001 - the CBOR library raises several types on hostile input
        raise DecodeError(f"metrics batch body is not valid CBOR: {e}") from None
    try:
        return _batch_in(body)
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - a shape we did not foresee is still bad input, not a crash
        raise DecodeError(f"metrics batch is malformed: {type(e).__name__}: {e}") from None


def is_metric_batch(data: bytes) -> bool:
    """Whether an uplink payload is a metrics frame (rather than a span batch)."""
    return bytes(data[:2]) == METRICS_MAGIC


def _metric_out(m: Metric) -> list[Any]:
    if m.kind == HISTOGRAM:
        pts = [[p.attributes, p.count, float(p.sum), list(p.bounds), list(p.bucket_counts), p.min, p.max]
               for p in m.points]
    else:
        pts = [[p.attributes, p.value] for p in m.points]
    return [m.name, _KINDS.index(m.kind), m.unit, m.description, m.monotonic, pts]


def _expect(cond: bool, problem: str) -> None:
    if not cond:
        raise DecodeError(f"metrics batch: {problem}")


def _int(v: Any) -> bool:
    return type(v) is int


def _num(v: Any) -> bool:
    return type(v) in (int, float) and not (type(v) is float and math.isnan(v))


def _attrs(v: Any, what: str) -> dict[str, AttrValue]:
    _expect(type(v) is dict and all(type(k) is str for k in v), f"{what} attributes must be a map with string keys")
    for x in v.values():
        _expect(type(x) in (str, int, float, bool, bytes, list, dict), f"{what} has an attribute of unsupported type")
    return v


def _batch_in(body: Any) -> MetricBatch:
    _expect(type(body) is list and len(body) == 5, "body must be an array of 5 fields")
    node_id, seq, start, now, resources = body
    _expect(type(node_id) is str, "node id must be a string")
    _expect(_int(seq) and seq >= 0, "sequence number must be a non-negative integer")
    _expect(_int(start) and _int(now) and 0 <= start <= now, "start and time must be integers with start <= time")
    _expect(type(resources) is list, "resources must be an array")
    out = MetricBatch(node_id, seq, start, now)
    for ri, r in enumerate(resources):
        what = f"resource {ri}"
        _expect(type(r) is list and len(r) == 4, f"{what} must be [attributes, scope name, scope version, metrics]")
        attrs, sname, sver, metrics = r
        _expect(type(sname) is str and type(sver) is str, f"{what} scope must be strings")
        _expect(type(metrics) is list, f"{what} metrics must be an array")
        rm = ResourceMetrics(Resource.of(_attrs(attrs, what)), Scope(sname, sver))
        for mi, m in enumerate(metrics):
            rm.metrics.append(_metric_in(m, f"{what} metric {mi}"))
        out.resources.append(rm)
    return out


def _metric_in(m: Any, what: str) -> Metric:
    _expect(type(m) is list and len(m) == 6, f"{what} must have 6 fields")
    name, kind, unit, desc, mono, pts = m
    _expect(type(name) is str and name != "", f"{what} name must be a non-empty string")
    _expect(_int(kind) and 0 <= kind < len(_KINDS), f"{what} kind {kind!r} is unknown")
    _expect(type(unit) is str and type(desc) is str and type(mono) is bool, f"{what} unit/description/monotonic")
    _expect(type(pts) is list, f"{what} points must be an array")
    metric = Metric(name, _KINDS[kind], unit, desc, mono)
    for pi, p in enumerate(pts):
        pw = f"{what} point {pi}"
        if metric.kind == HISTOGRAM:
            _expect(type(p) is list and len(p) == 7, f"{pw} must have 7 fields")
            attrs, count, total, bounds, counts, lo, hi = p
            _expect(_int(count) and count >= 0 and _num(total), f"{pw} count/sum")
            _expect(type(bounds) is list and all(_num(b) for b in bounds), f"{pw} bounds must be numbers")
            _expect(type(counts) is list and len(counts) == len(bounds) + 1 and all(_int(c) and c >= 0 for c in counts),
                    f"{pw} needs len(bounds)+1 non-negative bucket counts")
            _expect(sum(counts) == count, f"{pw} bucket counts do not add up to the count")
            _expect((lo is None or _num(lo)) and (hi is None or _num(hi)), f"{pw} min/max")
            metric.points.append(HistogramPoint(_attrs(attrs, pw), count, float(total), tuple(float(b) for b in bounds),
                                                list(counts), lo, hi))
        else:
            _expect(type(p) is list and len(p) == 2 and _num(p[1]), f"{pw} must be [attributes, number]")
            metric.points.append(SumPoint(_attrs(p[0], pw), p[1]))
    return metric
