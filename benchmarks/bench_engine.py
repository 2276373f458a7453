"""Engine overhead: what the executor costs per node when node bodies do (almost) nothing.

    python benchmarks/bench_engine.py [--repeats 9] [--profile]

Measures, in one run, medians of several repeats:
  - a cold run (empty cache) of 500-node pure-Python graphs, a chain and a wide fan-in tree:
    total time and time per node (submit: copy + validation, planning, keys, running, events);
  - a fully cached re-run of 50- and 500-node graphs (everything served from the cache);
  - a re-run after changing the last node only, and workflow save + load of the 500-node chain.
Uses the pure-Python test nodes in tests/support/pynodes.py; imports neither torch nor Qt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.cache import ResultCache  # noqa: E402
from engine.executor import Executor  # noqa: E402
from engine.graph import Graph  # noqa: E402
from engine.registry import Registry  # noqa: E402
from engine.workflow import load_workflow, save_workflow  # noqa: E402
from tests.support import pynodes  # noqa: E402


def chain_graph(registry: Registry, n: int) -> Graph:
    """const -> add -> add -> ... -> show: n nodes, n - 1 edges."""
    g = Graph(registry)
    g.add_node("test.const", "n0", {"value": 1})
    for i in range(1, n - 1):
        g.add_node("test.add", f"n{i}", {"b": 1})
        g.connect(f"n{i - 1}", "value" if i == 1 else "sum", f"n{i}", "a")
    g.add_node("test.show", f"n{n - 1}")
    g.connect(f"n{n - 2}", "sum", f"n{n - 1}", "value")
    return g


def fan_in_graph(registry: Registry, n: int) -> Graph:
    """Many constants summed by a tree of 8-input nodes into one output: about n nodes."""
    g = Graph(registry)
    leaves = max(1, round(n * 7 / 8))
    level = []
    for i in range(leaves):
        g.add_node("test.const", f"c{i}", {"value": i})
        level.append((f"c{i}", "value"))
    depth = 0
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level), 8):
            nid = f"s{depth}_{j // 8}"
            g.add_node("test.sum8", nid)
            for k, (src, out) in enumerate(level[j:j + 8]):
                g.connect(src, out, nid, f"i{k}")
            nxt.append((nid, "sum"))
        level, depth = nxt, depth + 1
    g.add_node("test.show", "out")
    g.connect(level[0][0], level[0][1], "out", "value")
    return g


class Timing(float):
    """A median time in seconds that also remembers the fastest repeat."""

    best: float

    def __str__(self) -> str:
        return f"{self * 1e3:8.2f} ms  (best {self.best * 1e3:7.2f} ms)"


def median_time(fn: Callable[[], object], repeats: int,
                setup: Callable[[], object] | None = None) -> Timing:
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    t = Timing(statistics.median(times))
    t.best = min(times)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--profile", action="store_true", help="cProfile the 500-node cold run")
    args = ap.parse_args(argv)
    registry = pynodes.make_registry()
    executor = Executor(registry, ResultCache())
    r = args.repeats
    rows: list[tuple[str, str]] = []

    def cold(g: Graph) -> Callable[[], object]:
        def run() -> None:
            result = executor.run(g)
            assert result.ok and len(result.ran) == len(g.nodes), len(result.ran)
        return run

    def fresh_cache() -> None:
        executor.cache.clear()
        pynodes.reset()

    for name, build in (("chain", chain_graph), ("fan-in", fan_in_graph)):
        g = build(registry, 500)
        n = len(g.nodes)
        fresh_cache()
        cold(g)()  # warm up imports and code paths
        t = median_time(cold(g), r, fresh_cache)
        rows.append((f"cold run, {n}-node {name}", f"{t}   {t / n * 1e6:6.1f} us/node"))

    for n in (50, 500):
        for name, build in (("chain", chain_graph), ("fan-in", fan_in_graph)):
            g = build(registry, n)
            fresh_cache()
            executor.run(g)

            def cached(g=g) -> None:
                result = executor.run(g)
                assert not result.ran
            t = median_time(cached, r)
            rows.append((f"fully cached re-run, {len(g.nodes)}-node {name}", str(t)))

    g = chain_graph(registry, 500)
    fresh_cache()
    executor.run(g)
    toggle = iter(range(10**9))

    def last_changed() -> None:
        g.set_value("n498", "b", next(toggle) + 2)
        result = executor.run(g)
        assert len(result.ran) == 2
    t = median_time(last_changed, r)
    rows.append(("re-run after editing the last node, 500-node chain", str(t)))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wf.json"
        t_save = median_time(lambda: save_workflow(g, path), r)
        t_load = median_time(lambda: load_workflow(path, registry), r)
    rows.append(("save workflow, 500-node chain", str(t_save)))
    rows.append(("load + validate workflow, 500-node chain", str(t_load)))

    print(f"Loom engine benchmark: Python {sys.version.split()[0]}, medians of {r} repeats "
          "(and the fastest)")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")

    if args.profile:
        g = chain_graph(registry, 500)
        fresh_cache()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            fresh_cache()
            executor.run(g)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue())
    executor.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
