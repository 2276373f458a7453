"""Editor benchmarks: time from process start to window shown, and one full repaint of a
300-node graph (offscreen Qt unless a display is set).

    python benchmarks/bench_editor.py [--runs 5] [--nodes 300]

Goals on a 2-core machine: window shown <= 1.0 s, full repaint <= 16 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def time_to_window(runs: int) -> list[float]:
    """Seconds from spawning `python main.py --screenshot` to the window's first show."""
    out = []
    env = dict(os.environ, LOOM_STARTUP_REPORT="1", LOOM_NO_DIALOGS="1")
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory() as tmp:
        env["LOOM_RECOVERY_DIR"] = tmp
        for _ in range(runs):
            t0 = time.time()
            r = subprocess.run([sys.executable, "main.py", "--screenshot",
                                str(Path(tmp) / "s.png")], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
            line = next((ln for ln in r.stderr.splitlines()
                         if ln.startswith("loom-window-shown")), None)
            if line is None:
                raise RuntimeError(f"no startup report: {r.stderr}")
            out.append(float(line.split()[1]) - t0)
    return out


def repaint(nodes: int, runs: int) -> dict[str, list[float]]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QPointF
    from PySide6.QtWidgets import QApplication

    from editor import theme
    from editor.window import MainWindow
    from engine.api import Session

    app = QApplication.instance() or QApplication([])
    theme.apply(app)
    session = Session()
    w = MainWindow(session=session)
    w.resize(1480, 900)
    w.show()
    scene = w.scene
    kinds = ["sampling.scheduler", "latents.noise", "conditioning.text_encode", "sampling.sampler",
             "latents.vae_decode", "math.arithmetic", "primitive.int", "loaders.checkpoint"]
    kinds = [k for k in kinds if session.registry.get(k) is not None] or ["primitive.int"]
    cols = 20
    ids = []
    for i in range(nodes):
        ids.append(scene.add_node(kinds[i % len(kinds)],
                                  QPointF((i % cols) * 280, (i // cols) * 320)))
    for a, b in zip(ids, ids[1:]):  # wire what fits, like a real graph
        ia, ib = scene.node_items[a], scene.node_items[b]
        for out in ia.out_sockets.values():
            hit = next((s for s in ib.in_sockets.values()
                        if scene.graph.can_connect(a, out.name, b, s.name) is None), None)
            if hit is not None:
                scene.connect_sockets(out, hit)
                break
    app.processEvents()
    results: dict[str, list[float]] = {}
    vp = w.view.viewport()
    for label, setup in (("fit (all nodes visible)", w.view.fit),
                         ("100% zoom", lambda: w.view.set_zoom(1.0))):
        setup()
        app.processEvents()
        vp.repaint()  # warm the item caches
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            vp.repaint()
            times.append(time.perf_counter() - t0)
        results[label] = times
    results["_edges"] = [float(len(scene.edge_items))]
    w.doc.undo.setClean()
    w.close()
    return results


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=300)
    args = ap.parse_args()
    start = time_to_window(args.runs)
    print(f"time to window shown: median {statistics.median(start):.3f} s, "
          f"min {min(start):.3f} s over {len(start)} runs (goal <= 1.0 s)")
    res = repaint(args.nodes, max(args.runs, 10))
    edges = int(res.pop("_edges")[0])
    for label, times in res.items():
        print(f"full repaint, {args.nodes} nodes / {edges} edges, {label}: median "
              f"{statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms "
              f"(goal <= 16 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
