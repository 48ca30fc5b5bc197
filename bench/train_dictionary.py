"""Train the uplink's zstd dictionary on representative batch bodies and write it as package data.

Run: python bench/train_dictionary.py [--size 16384] [--out uplink/wire/dictionaries/helix-v1.zdict]

The samples are CBOR bodies (before compression) of batches cut from `bench/_workload.py` traces generated with
TRAIN_SEED, at the batch sizes nodes send (a quiet node sends a few dozen spans, a busy one 512). The benchmark
(bench/uplink_size.py) measures on another seed, so the figures are not the training data read back.
A shipped dictionary never changes: a new one gets a new id in uplink/wire/dictionaries/__init__.py.
The last printed line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._workload import realistic_spans  # noqa: E402
from uplink.wire import dictionaries  # noqa: E402
from uplink.wire.batch_v2 import body as batch_body  # noqa: E402

TRAIN_SEED = 101
_SIZES = (16, 32, 64, 128, 256, 512)


def samples(traces: int, seed: int) -> list[bytes]:
    """Batch bodies of mixed sizes from `traces` traces of the workload."""
    rng = random.Random(seed)
    spans = realistic_spans(traces, seed)
    out: list[bytes] = []
    i = 0
    while i < len(spans):
        n = rng.choice(_SIZES)
        out.append(batch_body(spans[i:i + n], f"edge-node-{rng.randrange(100):02d}", rng.getrandbits(52),
                              created_ns=1_732_500_000_000_000_000 + rng.getrandbits(40)))
        i += n
    return out


def main() -> None:
    """Train, write and describe the dictionary."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--traces", type=int, default=6000)
    ap.add_argument("--size", type=int, default=16384, help="dictionary size in bytes")
    ap.add_argument("--dict-id", type=int, default=dictionaries.CURRENT)
    ap.add_argument("--out", type=Path,
                    default=Path(dictionaries.__file__).parent / dictionaries.DICTIONARIES[dictionaries.CURRENT])
    args = ap.parse_args()
    data = samples(args.traces, TRAIN_SEED)
    d = zstandard.train_dictionary(args.size, data, dict_id=args.dict_id, level=3, threads=-1)
    args.out.write_bytes(d.as_bytes())
    result = {"dict_id": d.dict_id(), "bytes": len(d.as_bytes()), "samples": len(data),
              "sample_bytes": sum(map(len, data)), "train_seed": TRAIN_SEED, "out": str(args.out)}
    print(f"wrote {args.out}: dictionary id {d.dict_id()}, {len(d.as_bytes())} bytes, trained on {len(data)} batch "
          f"bodies ({result['sample_bytes']} bytes) from seed {TRAIN_SEED}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
