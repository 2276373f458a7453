"""Batch rendering: items per second in this process and on a local Ray instance with 1 and 2
workers, side by side in one run, and what the Ray path costs per item.

    python benchmarks/bench_batch.py [--items 24] [--steps 20] [--repeats 2]

Measures:
  - the default workflow at batch 1 (built-in model, 64x64), `--items` items (2 prompts x
    items/2 seeds): items/s in-process (a child process with torch's default threads, and one
    with OMP_NUM_THREADS=1), on Ray with one worker (1 CPU) and with two (1 CPU each), each
    after a warm-up batch (the best of `--repeats`);
  - worker start: from creating the Ray workers to their first finished item (Python + torch
    import, model load, one item);
  - empty items (Constant -> Save Text, no torch): items/s in-process and on Ray, so the Ray
    overhead per item (scheduling, transfer, the driver writing file and manifest line) and
    the driver's ceiling show without rendering time;
  - result transfer: bytes per item the workers send back (the PNGs);
  - sharing: 4 prompts x 25 seeds (100 items, 4 steps) in-process and on 2 workers: text-encoder
    runs (positive, negative) and model loads per worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.api import DEFAULT_WORKFLOW, Session, apply_overrides  # noqa: E402
from engine.batch import Batch, InProcessBackend, plan_batch  # noqa: E402
from engine.batch_ray import RayBackend, import_ray  # noqa: E402
from engine.graph import Graph  # noqa: E402
from tests.support import pynodes  # noqa: E402

PROMPTS = ["a red circle", "a blue star", "a yellow square at the top left",
           "a small green triangle on a white background"]


def run(graph, sweeps, backend) -> tuple[float, list, int]:
    """(seconds, results, bytes written) of one batch into a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix="loom-bench-batch-"))
    try:
        batch = Batch(plan_batch(graph, sweeps), out, backend=backend)
        batch.prepare()
        t0 = time.perf_counter()
        results = list(batch)
        dt = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in out.glob("*") if f.name.startswith(("loom", "v")))
        bad = [r.error for r in results if not r.ok]
        assert not bad, bad[:3]
        return dt, results, size
    finally:
        shutil.rmtree(out, ignore_errors=True)


def seeds(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


def rendering(graph, items: int, backend, repeats: int, salt: int) -> tuple[float, int]:
    """Best items/s of `repeats` timed batches (after a warm-up), and bytes per item."""
    half = max(1, items // 2)
    run(graph, {"prompt.text": PROMPTS[:2], "noise.seed": seeds(900_000 + salt, 2)}, backend)
    rates, size = [], 0
    for r in range(repeats):
        sweeps = {"prompt.text": PROMPTS[:2], "noise.seed": seeds(salt + 1000 * r, half)}
        dt, results, size = run(graph, sweeps, backend)
        rates.append(len(results) / dt)
    return max(rates), size // (2 * half)


def empty_items(graph, n: int, backend, repeats: int, salt: int) -> float:
    run(graph, {"a.value": seeds(700_000 + salt, 4)}, backend)
    return max(n / run(graph, {"a.value": seeds(salt + 100_000 * r, n)}, backend)[0]
               for r in range(repeats))


def sharing(graph, backend) -> dict[str, Counter]:
    dt, results, _ = run(graph, {"prompt.text": PROMPTS, "noise.seed": seeds(1, 25)}, backend)
    counts: dict[str, Counter] = {}
    for node in ("checkpoint", "prompt", "negative"):
        counts[node] = Counter(r.worker for r in results if node in r.ran)
    counts["items"] = Counter(r.worker for r in results)
    counts["seconds"] = Counter({"all": round(dt, 1)})
    return counts


def local_part(args) -> dict:
    """The in-process measurements (run in a child process, so that its thread count is set
    before torch starts)."""
    import torch

    graph, share_graph, tiny, registry = graphs(args.steps)
    local = InProcessBackend(Session(graph.registry))
    return {"threads": torch.get_num_threads(), "torch": torch.__version__,
            "render": rendering(graph, args.items, local, args.repeats, 1),
            "empty": empty_items(tiny, args.empty, InProcessBackend(), args.repeats, 1),
            "sharing": {k: dict(v) for k, v in
                        sharing(share_graph, InProcessBackend(Session(graph.registry))).items()}}


def graphs(steps: int):
    session = Session()
    graph = session.load(DEFAULT_WORKFLOW)
    apply_overrides(graph, session.registry, ["noise.batch=1", f"scheduler.steps={steps}"])
    share_graph = graph.copy()
    apply_overrides(share_graph, session.registry, ["scheduler.steps=4"])
    registry = pynodes.make_registry()
    tiny = Graph(registry)
    tiny.add_node("test.const", "a", {"value": 0})
    tiny.add_node("text.save", "save", {"prefix": "v"})
    tiny.connect("a", "value", "save", "value")
    return graph, share_graph, tiny, registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--empty", type=int, default=200, help="empty items per timed batch")
    ap.add_argument("--local-part", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.local_part:
        print(json.dumps(local_part(args)))
        return

    rows: dict[str, dict] = {}
    shares: dict[str, dict] = {}
    base_argv = [sys.executable, __file__, "--local-part", "--items", str(args.items),
                 "--steps", str(args.steps), "--repeats", str(args.repeats),
                 "--empty", str(args.empty)]
    for threads in (None, "1"):  # torch's default threads, then one (OMP_NUM_THREADS=1)
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if threads:
            env["OMP_NUM_THREADS"] = threads
        proc = subprocess.run(base_argv, env=env, capture_output=True, text=True, check=True)
        part = json.loads(proc.stdout.strip().splitlines()[-1])
        label = f"in-process, {part['threads']} thr"
        rows[label] = {"render": tuple(part["render"]), "empty": part["empty"]}
        shares[label] = part["sharing"]
    print(f"torch {part['torch']}; default workflow at batch 1, 64x64, {args.steps} steps; "
          f"{args.items} items per timed batch, best of {args.repeats}")

    graph, share_graph, tiny, _ = graphs(args.steps)
    ray = import_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 2**20)
    try:
        for workers in (1, 2):
            backend = RayBackend(workers=workers)
            t0 = time.perf_counter()
            # worker start: create the workers, then one item each (import, model load, item)
            run(graph, {"noise.seed": seeds(800_000 + workers, workers)}, backend)
            start = time.perf_counter() - t0
            name = f"ray, {workers} worker{'s' if workers > 1 else ''} x 1 CPU"
            rows[name] = {"render": rendering(graph, args.items, backend, args.repeats,
                                              10 + workers),
                          "empty": empty_items(tiny, args.empty, backend, args.repeats,
                                               10 + workers),
                          "start": start}
            backend.close()
        backend = RayBackend(workers=2)  # fresh workers: model loads and encodings counted
        shares["ray, 2 workers"] = {k: dict(v) for k, v in sharing(share_graph,
                                                                   backend).items()}
        backend.close()
    finally:
        ray.shutdown()

    base = next(iter(rows.values()))
    print(f"\n{'':28}{'items/s':>9}{'s/item':>9}{'vs row 1':>9}{'empty/s':>10}"
          f"{'overhead':>10}{'start s':>9}{'bytes/item':>11}")
    for name, row in rows.items():
        rate, size = row["render"]
        overhead = (1 / row["empty"] - 1 / base["empty"]) * 1000
        start = f"{row['start']:.1f}" if "start" in row else "-"
        print(f"{name:28}{rate:9.2f}{1 / rate:9.3f}{rate / base['render'][0]:9.2f}"
              f"{row['empty']:10.0f}{overhead:8.2f}ms{start:>9}{size:11d}")
    print("(empty/s: Constant -> Save Text items, no torch; overhead: the extra time per such "
          "item against row 1; start: workers created to one item each done; bytes/item: the "
          "PNG files, what a worker sends back)")
    for label, counts in shares.items():
        print(f"sharing, 4 prompts x 25 seeds, 4 steps, {label}: " + json.dumps(counts))


if __name__ == "__main__":
    main()
