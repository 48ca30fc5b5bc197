"""The compiled accelerator (edge/accel.py) against the pure-Python reference: which one runs, and that on random and
hostile input both decode the same records, parse the same HTTP/1 heads and build the same spans, without raising."""
from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import accel
from tests.edge.sources.ebpf.spans._helpers import OFFSET
from tests.edge.sources.ebpf.spans._recorded import recorded_records, spans_json

ROOT = Path(__file__).resolve().parents[2]

compiled_only = pytest.mark.skipif(
    not accel.status().compiled and os.environ.get("HELIX_REQUIRE_ACCEL") != "1",
    reason=f"accelerator not in use: {accel.status().detail}")


def _status_in_subprocess(env: dict[str, str]) -> dict[str, object]:
    code = "import json, edge.accel as a, edge.sources.ebpf.spans as s; " \
           "print(json.dumps({'compiled': a.status().compiled, 'detail': a.status().detail, 'file': s.__file__}))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_turned_off_runs_the_pure_modules():
    got = _status_in_subprocess({"HELIX_ACCEL": "0"})
    assert got["compiled"] is False and "HELIX_ACCEL=0" in str(got["detail"])
    assert str(got["file"]).endswith("__init__.py")


def test_the_pure_copy_is_loaded_from_sources():
    for name, mod in accel.modules("pure").items():
        assert mod.__file__ is not None and mod.__file__.endswith(".py"), name
    # The copy is private: what the rest of the process imports is unchanged.
    import edge.sources.ebpf.spans as active

    assert (active is accel.modules("pure")["edge.sources.ebpf.spans"]) is not accel.status().compiled


@compiled_only
def test_compiled_modules_are_the_ones_imported():
    for name, mod in accel.modules("compiled").items():
        assert mod.__file__ is not None and not mod.__file__.endswith(".py"), name
    assert "compiled" in accel.implementations()


def test_every_module_of_a_compiled_package_is_compiled_with_it():
    # A compiled package's __path__ does not lead to plain .py modules beside it: a module added there without
    # being compiled would not import in the compiled build.
    packages = [name for name in accel.MODULES if (ROOT / Path(*name.split("."))).is_dir()]
    for package in packages:
        folder = ROOT / Path(*package.split("."))
        for path in folder.glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            assert name in accel.MODULES, f"{path} lies in a compiled package: compile it (setup.py, edge/accel.py) " \
                                          "or move it out of the package"


def test_a_changed_source_falls_back_to_pure_python(tmp_path, monkeypatch):
    manifest = {"cache_tag": sys.implementation.cache_tag, "mypy": "x",
                "sources": {"edge/sources/ebpf/events.py": "0" * 64}}
    path = tmp_path / "accel_manifest.json"
    path.write_text(json.dumps(manifest))
    monkeypatch.setattr(accel, "_MANIFEST", path)
    got = accel._check()
    assert not got.compiled
    assert "changed since it was compiled" in got.detail or "no compiled module" in got.detail
    monkeypatch.setattr(accel, "_MANIFEST", tmp_path / "missing.json")
    assert "not compiled at install" in accel._check().detail


def test_the_c_extensions_can_be_turned_off_alone():
    code = "import json, edge.accel as a, edge.protocols.http1 as h; " \
           "print(json.dumps({'c': a.c_status().compiled, 'detail': a.c_status().detail, " \
           "'heads': h._heads is not None}))"
    for env, var in (({"HELIX_ACCEL_C": "0"}, "HELIX_ACCEL_C=0"), ({"HELIX_ACCEL": "0"}, "HELIX_ACCEL=0")):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT, capture_output=True,
                             text=True, check=True)
        got = json.loads(out.stdout)
        assert got == {"c": False, "detail": f"C extensions off ({var})", "heads": False}


def test_a_changed_or_missing_c_source_runs_the_python_parser(tmp_path, monkeypatch):
    src, _ = accel.C_EXTENSIONS["edge.protocols._http1_heads"]
    manifest = {"cache_tag": sys.implementation.cache_tag, "mypy": "x", "sources": {}, "c_sources": {src: "0" * 8}}
    path = tmp_path / "accel_manifest.json"
    path.write_text(json.dumps(manifest))
    monkeypatch.setattr(accel, "_MANIFEST", path)
    monkeypatch.delenv("HELIX_ACCEL_C", raising=False)
    monkeypatch.delenv("HELIX_ACCEL", raising=False)
    got = accel._check_c()
    assert not got.compiled
    assert "changed since it was compiled" in got.detail or "did not compile" in got.detail
    path.write_text(json.dumps({**manifest, "c_sources": {}}))
    assert "did not compile" in accel._check_c().detail
    monkeypatch.setattr(accel, "_MANIFEST", tmp_path / "missing.json")
    assert not accel._check_c().compiled


@pytest.mark.skipif(not accel.c_status().compiled and os.environ.get("HELIX_REQUIRE_ACCEL") != "1",
                    reason=f"C extensions not in use: {accel.c_status().detail}")
def test_the_c_head_parser_runs_in_the_active_modules():
    import edge.protocols.http1 as http1

    assert accel.c_status().compiled, accel.c_status().detail
    assert http1._heads is not None and http1._heads is accel.c_module("edge.protocols._http1_heads")
    # The pure copy is the reference: the C parser is off there.
    assert accel.modules("pure")["edge.protocols.http1"]._heads is None or not accel.status().compiled


# -- differential: compiled against pure ---------------------------------------------------------------------------

def _plain(value: object) -> object:
    """Decoded events and parsed heads as plain data, comparable across the two implementations' classes."""
    if isinstance(value, enum.Enum):
        return (type(value).__name__, value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _outcome(fn, *args) -> object:
    try:
        return ("ok", _plain(fn(*args)))
    except Exception as e:  # noqa: BLE001 - compared: both must fail alike (neither is expected to)
        return ("raised", type(e).__name__)


RECORDS = recorded_records()
_mutation = st.tuples(st.sampled_from(["flip", "cut", "extend", "drop", "dup", "swap", "kind"]),
                      st.integers(0, 10**6), st.integers(0, 10**6), st.binary(min_size=1, max_size=24))


def _mutate(records: list[bytes], mutations: list[tuple[str, int, int, bytes]]) -> list[bytes]:
    out = list(records)
    for op, i, j, blob in mutations:
        if not out:
            break
        i %= len(out)
        rec = out[i]
        if op == "flip":  # random bytes over a header field or the payload
            j %= max(len(rec), 1)
            out[i] = rec[:j] + blob + rec[j + len(blob):]
        elif op == "cut":
            out[i] = rec[:j % (len(rec) + 1)]
        elif op == "extend":
            out[i] = rec + blob * (1 + j % 40)
        elif op == "drop":
            del out[i]
        elif op == "dup":
            out.insert(j % len(out), rec)
        elif op == "swap":
            k = j % len(out)
            out[i], out[k] = out[k], out[i]
        else:  # another record type's number on these bytes
            out[i] = struct.pack("=I", j % 13) + rec[4:]
    return out


@compiled_only
@settings(max_examples=150, deadline=None)
@given(kind=st.integers(0, 13), body=st.binary(max_size=420),
       base=st.integers(0, len(RECORDS) - 1), mutations=st.lists(_mutation, max_size=3), use_base=st.booleans())
def test_records_decode_alike(kind, body, base, mutations, use_base):
    raw = _mutate([RECORDS[base]], mutations)[:1] if use_base else [struct.pack("=I", kind) + body]
    raw = raw or [b""]
    results = []
    for impl in ("pure", "compiled"):
        decode = accel.modules(impl)["edge.sources.ebpf.decode"]
        stats = decode.DecodeStats()
        results.append((_outcome(decode.decode_event, raw[0], stats), _plain(stats)))
    assert results[0] == results[1]
    assert results[0][0][0] == "ok"


_HEADS = [b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
          b"POST http://u:p@h:81/x?q#f HTTP/1.0\r\nContent-Length: 4\r\n\r\nbodyGET / HTTP/1.1\r\n\r\n",
          b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
          b"HTTP/1.1 204 No Content\nX: a\n b\n\nHTTP/1.0 500 \r\n\r\n"]


@compiled_only
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=300), st.tuples(st.sampled_from(_HEADS), st.integers(0, 200),
                                                          st.binary(max_size=12), st.integers(0, 200)).map(
    lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):t[3] + t[1] + 40])),
       methods=st.lists(st.sampled_from(["", "GET", "HEAD", "CONNECT", "POST"]), max_size=3))
def test_http1_heads_parse_alike(data, methods):
    results = []
    for impl in ("pure", "compiled"):
        h1 = accel.modules(impl)["edge.protocols.http1"]
        results.append([_outcome(h1.parse_requests, data), _outcome(h1.parse_responses, data, methods),
                        _outcome(h1.looks_like_http, data), _outcome(h1.chunked_body_end, data, 0)])
    assert results[0] == results[1]
    assert all(r[0] == "ok" for r in results[0])


def _build(impl: str, records: list[bytes], batch: int) -> tuple[list[object], object, object]:
    mods = accel.modules(impl)
    decode, spans_mod = mods["edge.sources.ebpf.decode"], mods["edge.sources.ebpf.spans"]
    b = spans_mod.SpanBuilder(spans_mod.SpanBuilderConfig(host_name="edge-1", max_connections=8, max_processes=4),
                              spans_mod.FixedClock(offset_ns=OFFSET))
    stats = decode.DecodeStats()
    spans = []
    for i in range(0, len(records), batch):
        spans += b.feed(decode.decode_batch(records[i:i + batch], stats))
        b.clock.now_ns = 10**9 * (i + 1)  # type: ignore[attr-defined]
        spans += b.flush(b.clock.now_ns)  # type: ignore[attr-defined]
    spans += b.flush(10**15)
    return spans_json(spans), _plain(b.stats), _plain(stats)


@compiled_only
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(_mutation, max_size=12), batch=st.sampled_from([1, 5, 64]))
def test_hostile_record_streams_build_the_same_spans(mutations, batch):
    records = _mutate(RECORDS, mutations)
    pure = _build("pure", records, batch)
    compiled = _build("compiled", records, batch)
    assert json.loads(json.dumps(pure, sort_keys=True)) == json.loads(json.dumps(compiled, sort_keys=True))
    assert compiled[1][1]["internal_errors"] == 0  # type: ignore[index]


def _written_inits() -> list[type]:
    """The dataclasses of the accelerated modules whose __init__ is written out rather than generated."""
    found = []
    for mod in accel.modules("pure").values():
        for value in vars(mod).values():
            if isinstance(value, type) and value.__module__ == mod.__name__ and dataclasses.is_dataclass(value) \
                    and not value.__dataclass_params__.init:  # type: ignore[attr-defined]
                found.append(value)
    return found


def test_written_out_inits_take_the_fields_in_order_with_their_defaults():
    classes = _written_inits()
    assert {c.__name__ for c in classes} >= {"DataEvent", "HttpRequest", "HttpResponse", "_Exchange"}
    for cls in classes:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        fields = dataclasses.fields(cls)
        assert [p.name for p in params] == [f.name for f in fields], cls
        for p, f in zip(params, fields):
            if f.default is not dataclasses.MISSING:
                assert p.default == f.default, (cls, f.name)
            elif f.default_factory is not dataclasses.MISSING:
                assert p.default is None, (cls, f.name)
            else:
                assert p.default is inspect.Parameter.empty, (cls, f.name)
        # Every field is set, and a field with a factory gets what the factory makes.
        required = [object() for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        made = cls(*required)
        for f in fields:
            got = getattr(made, f.name)
            if f.default is not dataclasses.MISSING:
                assert got == f.default, (cls, f.name)
            elif f.default_factory is not dataclasses.MISSING and f.name != "span_id":
                assert got == f.default_factory(), (cls, f.name)
        assert made.__dataclass_fields__ and dataclasses.replace(made) == made


_HEADER_VALUES = st.one_of(
    st.sampled_from(["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                     " 01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra\t",
                     "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                     "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
                     "4bf92f3577b34da6:00f067aa0ba902b7:0:1", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", "d"]),
    st.text(alphabet="0123456789abcdefABX-:=, \t", max_size=70), st.binary(max_size=60), st.integers())


@compiled_only
@settings(max_examples=150, deadline=None)
@given(headers=st.dictionaries(st.sampled_from(["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                                                "x-b3-sampled", "x-b3-flags", "uber-trace-id"]), _HEADER_VALUES))
def test_trace_context_is_read_alike(headers):
    results = []
    for impl in ("pure", "compiled"):
        prop = accel.modules(impl)["edge.propagation"]
        results.append([_outcome(prop.extract, headers), _outcome(prop.parse_traceparent, headers.get("traceparent"),
                                                                  headers.get("tracestate"))])
    assert results[0] == results[1]
    assert all(r[0] == "ok" for r in results[0])


@pytest.mark.parametrize(("command", "kept"), [(["bdist_wheel", "--help"], True), (["--name"], True),
                                               (["develop", "--help"], False),
                                               (["build_ext", "--inplace", "--help"], False)])
def test_a_wheel_built_without_the_accelerator_leaves_the_trees_build_alone(tmp_path: Path, command: list[str],
                                                                            kept: bool):
    # The device image and arm64 smoke builds make a pure wheel from this tree (HELIX_ACCEL_BUILD=0): that must not
    # switch the tree's own editable install to pure Python. An in-place build without the accelerator must.
    (tmp_path / "setup.py").write_bytes((ROOT / "setup.py").read_bytes())
    (tmp_path / "edge").mkdir()
    manifest = tmp_path / "edge" / "accel_manifest.json"
    manifest.write_text("{}\n")
    subprocess.run([sys.executable, "setup.py", *command], cwd=tmp_path, env={**os.environ, "HELIX_ACCEL_BUILD": "0"},
                   capture_output=True, text=True, timeout=120)
    assert manifest.exists() is kept


@pytest.mark.parametrize("compiler", ["gcc", "aarch64-linux-gnu-gcc"])
@pytest.mark.parametrize("source", sorted(src for src, _ in accel.C_EXTENSIONS.values()))
def test_the_c_sources_are_plain_c99_for_the_devices(source, compiler, tmp_path):
    # The devices are aarch64: no intrinsics or extensions; the cross compiler (Debian gcc-aarch64-linux-gnu) is
    # optional on a development machine. The host's Python headers stand in for the device's (same 64-bit layout).
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    include = sysconfig.get_paths()["include"]
    out = subprocess.run([compiler, "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror", "-fPIC",
                          f"-I{include}", "-c", str(ROOT / source), "-o", str(tmp_path / "ext.o")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
