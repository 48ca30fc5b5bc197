"""MetricBatch <-> OTLP metrics protobuf (ExportMetricsServiceRequest): cumulative sums, gauges, histograms."""
from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2

from ..model import Resource, Scope
from ..model import GAUGE, HISTOGRAM, SUM, HistogramPoint, Metric, MetricBatch, ResourceMetrics, SumPoint
from .otlp import _attrs_from_pb, _attrs_to_pb

__all__ = ["ExportMetricsServiceRequest", "ExportMetricsServiceResponse", "request_from_metrics",
           "metrics_from_request", "CUMULATIVE"]

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


def _number(dp: metrics_pb2.NumberDataPoint, value: int | float) -> None:
    if isinstance(value, int):
        dp.as_int = value
    else:
        dp.as_double = value


def request_from_metrics(batch: MetricBatch) -> ExportMetricsServiceRequest:
    """The OTLP export request for a batch (every point with start = batch start, time = batch time)."""
    req = ExportMetricsServiceRequest()
    for r in batch.resources:
        rm = req.resource_metrics.add()
        _attrs_to_pb(rm.resource.attributes, r.resource.as_dict())
        sm = rm.scope_metrics.add()
        sm.scope.name, sm.scope.version = r.scope.name, r.scope.version
        for m in r.metrics:
            pm = sm.metrics.add(name=m.name, unit=m.unit, description=m.description)
            if m.kind == HISTOGRAM:
                pm.histogram.aggregation_temporality = CUMULATIVE
                for p in m.points:
                    dp = pm.histogram.data_points.add(start_time_unix_nano=batch.start_ns,
                                                      time_unix_nano=batch.time_ns, count=p.count, sum=p.sum)
                    dp.explicit_bounds.extend(p.bounds)
                    dp.bucket_counts.extend(p.bucket_counts)
                    if p.min is not None:
                        dp.min = p.min
                    if p.max is not None:
                        dp.max = p.max
                    _attrs_to_pb(dp.attributes, p.attributes)
            elif m.kind == SUM:
                pm.sum.aggregation_temporality = CUMULATIVE
                pm.sum.is_monotonic = m.monotonic
                for p in m.points:
                    dp = pm.sum.data_points.add(start_time_unix_nano=batch.start_ns, time_unix_nano=batch.time_ns)
                    _number(dp, p.value)
                    _attrs_to_pb(dp.attributes, p.attributes)
            else:
                for p in m.points:
                    dp = pm.gauge.data_points.add(time_unix_nano=batch.time_ns)
                    _number(dp, p.value)
                    _attrs_to_pb(dp.attributes, p.attributes)
    return req


def metrics_from_request(req: ExportMetricsServiceRequest, node_id: str = "", seq: int = 0) -> MetricBatch:
    """A MetricBatch from an OTLP request (for tests and the demo peer); start/time from the first point."""
    start = now = 0
    out = MetricBatch(node_id, seq, 0, 0)
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            res = ResourceMetrics(Resource.of(_attrs_from_pb(rm.resource.attributes)),
                                  Scope(sm.scope.name, sm.scope.version))
            for pm in sm.metrics:
                which = pm.WhichOneof("data")
                if which == "histogram":
                    m = Metric(pm.name, HISTOGRAM, pm.unit, pm.description)
                    for dp in pm.histogram.data_points:
                        start, now = start or dp.start_time_unix_nano, now or dp.time_unix_nano
                        m.points.append(HistogramPoint(_attrs_from_pb(dp.attributes), dp.count, dp.sum,
                                                       tuple(dp.explicit_bounds), list(dp.bucket_counts),
                                                       dp.min if dp.HasField("min") else None,
                                                       dp.max if dp.HasField("max") else None))
                elif which in ("sum", "gauge"):
                    data = getattr(pm, which)
                    m = Metric(pm.name, SUM if which == "sum" else GAUGE, pm.unit, pm.description,
                               monotonic=bool(getattr(data, "is_monotonic", False)))
                    for dp in data.data_points:
                        start, now = start or dp.start_time_unix_nano, now or dp.time_unix_nano
                        value = dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                        m.points.append(SumPoint(_attrs_from_pb(dp.attributes), value))
                else:
                    continue  # summaries and exponential histograms are not produced by Helix
                res.metrics.append(m)
            out.resources.append(res)
    out.start_ns, out.time_ns = start, now
    return out
