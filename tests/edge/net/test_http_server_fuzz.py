"""The HTTP/1 server's head and body readers fed hostile requests: whatever the bytes, a 4xx/5xx or a closed
connection, never an exception out of the server."""
from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.net import http_server

_lengths = st.sampled_from(["5", "\xb2", "0x5", "+5", "-1", " 5", "5 ", "1_0", "9" * 30, "", "05", "5, 5"])
_chunks = st.lists(st.one_of(st.sampled_from(["5", "0x5", "1_0", "+5", "ffffffffffffffffff", "5;ext=1", "5 ;e",
                                              "\x005", "g", "-1"]), st.text(max_size=6)), max_size=4)
_names = st.one_of(st.sampled_from(["Content-Length", "Transfer-Encoding", "Content-Encoding", "Expect", "Host"]),
                   st.text(max_size=12))


@settings(max_examples=200, deadline=None)
@given(target=st.text(max_size=20), headers=st.lists(st.tuples(_names, st.text(max_size=30)), max_size=5),
       length=st.one_of(st.none(), _lengths), chunks=st.one_of(st.none(), _chunks),
       encoding=st.sampled_from(["", "gzip", "deflate", "br"]), body=st.binary(max_size=64))
def test_hostile_heads_and_bodies_are_refused_never_raised(target, headers, length, chunks, encoding, body) -> None:
    lines = [f"POST /{target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunks is not None:
        lines.append("Transfer-Encoding: chunked")
    if encoding:
        lines.append(f"Content-Encoding: {encoding}")
    tail = body if chunks is None else "".join(f"{c}\r\n" for c in chunks).encode() + body
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + tail

    async def run() -> None:
        reader = asyncio.StreamReader(limit=http_server.MAX_HEAD)
        reader.feed_data(data[1:])
        reader.feed_eof()
        budget = http_server.RequestBudget(1024)
        deadline = asyncio.get_running_loop().time() + 1.0
        try:
            _, _, _, h = await http_server._read_head(data[:1], reader)
            raw_body = await http_server._read_body(reader, h, 4096, budget, "me", deadline)
            await http_server._decode(raw_body, h.get("content-encoding", ""), 4096, budget, "me", deadline)
        except http_server._Refused as e:
            assert 400 <= e.status < 600 and len(str(e)) < 200
        except (ConnectionResetError, asyncio.TimeoutError):
            pass  # the client went away, or never finished

    asyncio.run(run())
