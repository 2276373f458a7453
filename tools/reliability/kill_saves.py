"""No file is ever lost or half-written: kill -9 Loom while it saves, again and again.

    python -m tools.reliability.kill_saves [--kills 50] [--writers 24] [--seed 0] [--keep DIR]

A child process saves PNGs (Save Image's writer: encode with the embedded workflow, claim a new
numbered name) or replaces a workflow file (the editor's Save) in a tight loop and is killed with
SIGKILL at a random moment, many times. After every kill each file under a final name must be
complete: every PNG opens with Pillow and carries its workflow, the workflow file parses. Then
the next start (`main.py run`, which cleans the output folder and the workflow's folder) must
leave no temp file behind. Last, many writers (threads and processes) save into one folder at
once: every reported file must exist with its own content, and the count must match.

Prints a markdown table. tests/test_reliability_files.py runs the same pieces with fewer kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "kill"
WORKFLOW = "wf.json"

# the child: writes until it is killed ---------------------------------------------------------

CHILD = r"""
import json, os, sys, time
kind, folder, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, {root!r})

def doc(variant, pad):
    return json.dumps({{"schema_version": 1, "nodes": {{}},
                       "ui": {{"variant": variant, "pad": "x" * pad}}}}, indent=2) + "\n"

if kind == "images":
    import numpy as np
    from engine.files import write_numbered
    from nodes.lib.png import encode_png
    rng = np.random.default_rng(seed)
    blobs = [encode_png(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8),
                        {{"workflow": doc(v, 20000 * (v + 1))}}) for v in range(3)]
    print("GO", flush=True)
    i = 0
    while True:
        write_numbered(folder, {prefix!r}, ".png", blobs[i % 3])
        i += 1
elif kind == "workflows":
    from engine.workflow import atomic_write_text
    texts = [doc(v, 150000 * (v + 1)) for v in range(3)]
    print("GO", flush=True)
    i = 0
    while True:
        atomic_write_text(os.path.join(folder, {workflow!r}), texts[i % 3])
        i += 1
"""


def child_code() -> str:
    return CHILD.format(root=str(ROOT), prefix=PREFIX, workflow=WORKFLOW)


def check_png(path: Path) -> str | None:
    """Why the PNG at `path` is not a complete Save Image output, or None."""
    from PIL import Image

    from engine.workflow import parse_document, png_text_chunks

    try:
        with Image.open(path) as img:
            img.load()
        doc = parse_document(png_text_chunks(path.read_bytes(), str(path))["workflow"])
        if doc["ui"]["variant"] not in (0, 1, 2):
            return "unexpected workflow"
    except Exception as exc:  # noqa: BLE001 - any failure is a partial or broken file
        return f"{type(exc).__name__}: {exc}"
    return None


def check_workflow(path: Path) -> str | None:
    from engine.workflow import read_document

    try:
        if read_document(path)["ui"]["variant"] not in (0, 1, 2):
            return "unexpected workflow"
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def temp_files(folder: Path) -> list[Path]:
    from engine.files import TEMP_PREFIX

    return [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


def kill_loop(kind: str, folder: Path, kills: int, rng: random.Random,
              max_delay: float = 0.08) -> dict:
    """Start the child `kills` times, SIGKILL it at a random moment while it saves, and check
    the files under final names after every kill. Returns counts."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "workflows":  # an old workflow that must survive every kill
        from engine.workflow import atomic_write_text

        atomic_write_text(folder / WORKFLOW, json.dumps(
            {"schema_version": 1, "nodes": {}, "ui": {"variant": 0}}))
    checked: set[str] = set()
    partial: list[str] = []
    mid_write = 0  # kills that left the child's temp file: they landed while it wrote
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = child_code()
    for i in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", code, kind, str(folder), str(i)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            if line.strip() != "GO":
                raise RuntimeError(f"the {kind} child did not start: {proc.stderr.read()}")
            time.sleep(rng.uniform(0.0, max_delay))
        finally:
            proc.kill()
            proc.wait(30)
            proc.stdout.close()
            proc.stderr.close()
        if proc.returncode != -9:
            raise RuntimeError(f"the {kind} child stopped by itself ({proc.returncode})")
        if any(p.name.startswith(f".loom-tmp-{proc.pid}-") for p in temp_files(folder)):
            mid_write += 1
        if kind == "images":
            for p in sorted(folder.glob(f"{PREFIX}_*.png")):
                if p.name not in checked:
                    why = check_png(p)
                    if why:
                        partial.append(f"{p.name}: {why}")
                    checked.add(p.name)
        else:
            why = check_workflow(folder / WORKFLOW)
            if why:
                partial.append(f"{WORKFLOW} after kill {i}: {why}")
    others = [p.name for p in folder.iterdir()
              if not p.name.startswith(".loom-tmp-") and p.name != WORKFLOW
              and not (p.name.startswith(f"{PREFIX}_") and p.suffix == ".png")]
    return {"kills": kills, "mid_write": mid_write,
            "finals": len(checked) if kind == "images" else 1,
            "partial": partial, "temps_before": len(temp_files(folder)), "others": others}


def next_start(out_dir: Path, workflow_dir: Path) -> subprocess.CompletedProcess:
    """The next start of the CLI: `main.py run` on a workflow in `workflow_dir` with `--out
    out_dir` (the workflow does not exist, so it stops right after its start-up clean-up)."""
    return subprocess.run([sys.executable, str(ROOT / "main.py"), "run",
                           str(workflow_dir / "no-such-workflow.json"), "--out", str(out_dir)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)


# many writers into one folder -----------------------------------------------------------------

CONCURRENT_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
folder, tag, go = sys.argv[1], sys.argv[2], sys.argv[3]
import numpy as np
from engine.files import write_numbered
from engine.node import RunContext
from nodes.lib.png import encode_png_within
from nodes.primitives import SaveTextNode
arr = np.full((8, 8, 3), int(tag.split("-")[1]) % 256, dtype=np.uint8)
data, _ = encode_png_within(arr, {{"workflow": json.dumps({{"tag": tag}})}}, 1 << 26)
node = SaveTextNode()
node.value, node.prefix = tag, "many"
ctx = RunContext("save", "text.save", {{"output_dir": folder}}, lambda *a: None, lambda: False)
print("READY", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
node.run(ctx)
png = write_numbered(folder, "many", ".png", data)
print(json.dumps({{"tag": tag, "text": ctx.ui["files"][0], "png": str(png)}}), flush=True)
"""


def save_text_in_thread(folder: Path, tag: str, start: threading.Barrier, out: list) -> None:
    import numpy as np

    from engine.files import write_numbered
    from engine.node import RunContext
    from nodes.lib.png import encode_png_within
    from nodes.primitives import SaveTextNode

    node = SaveTextNode()
    node.value, node.prefix = tag, "many"
    ctx = RunContext("save", "text.save", {"output_dir": str(folder)}, lambda *a: None,
                     lambda: False)
    arr = np.full((8, 8, 3), int(tag.split("-")[1]) % 256, dtype=np.uint8)
    data, _ = encode_png_within(arr, {"workflow": json.dumps({"tag": tag})}, 1 << 26)
    start.wait()
    node.run(ctx)
    png = write_numbered(folder, "many", ".png", data)
    out.append({"tag": tag, "text": ctx.ui["files"][0], "png": str(png)})


def concurrent_writers(folder: Path, writers: int) -> dict:
    """`writers` processes and `writers` threads each save one text file (Save Text) and one
    PNG into `folder` at the same moment. Returns what they reported and what is on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    go = folder.parent / f"{folder.name}.go"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = CONCURRENT_CHILD.format(root=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(folder), f"proc-{i}", str(go)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(writers)]
    reports: list[dict] = []
    try:
        for p in procs:
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError(f"a writer did not start: {p.stderr.read()}")
        barrier = threading.Barrier(writers + 1)
        threads = [threading.Thread(target=save_text_in_thread,
                                    args=(folder, f"thread-{100 + i}", barrier, reports))
                   for i in range(writers)]
        for t in threads:
            t.start()
        go.touch()
        barrier.wait()
        for t in threads:
            t.join(60)
        for p in procs:
            out, err = p.communicate(timeout=60)
            if p.returncode != 0:
                raise RuntimeError(f"a writer failed: {err}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        go.unlink(missing_ok=True)
    return {"reports": reports, **check_concurrent(folder, reports)}


def check_concurrent(folder: Path, reports: list[dict]) -> dict:
    """Every reported file exists with its writer's own content; as many files as reports."""
    from engine.workflow import png_text_chunks

    wrong = []
    for r in reports:
        text, png = Path(r["text"]), Path(r["png"])
        if not text.is_file() or text.read_text() != f"{r['tag']}\n":
            wrong.append(f"{text.name} is not {r['tag']}'s")
        if not png.is_file() or json.loads(
                png_text_chunks(png.read_bytes())["workflow"])["tag"] != r["tag"]:
            wrong.append(f"{png.name} is not {r['tag']}'s")
    texts = sorted(p.name for p in folder.glob("many_*.txt"))
    pngs = sorted(p.name for p in folder.glob("many_*.png"))
    return {"wrong": wrong, "texts": len(texts), "pngs": len(pngs),
            "reported_texts": len({r["text"] for r in reports}),
            "reported_pngs": len({r["png"] for r in reports}),
            "temps": len(temp_files(folder))}


# the report -------------------------------------------------------------------------------------


def run_all(kills: int, writers: int, seed: int, base: Path) -> dict:
    """The kill -9 loops (images, workflows), the next start, and the concurrent writers, in
    folders under `base`. Returns everything `tables` and `passed` need."""
    rng = random.Random(seed)
    base.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    images = kill_loop("images", base / "out", kills, rng)
    workflows = kill_loop("workflows", base / "workflows", kills, rng)
    start = next_start(base / "out", base / "workflows")
    left_images = len(temp_files(base / "out"))
    left_workflows = len(temp_files(base / "workflows"))
    many = concurrent_writers(base / "many", writers)
    return {"seed": seed, "kills": kills, "writers": writers, "images": images,
            "workflows": workflows, "start_returncode": start.returncode,
            "left_images": left_images, "left_workflows": left_workflows, "many": many,
            "seconds": time.monotonic() - t0}


def problems(res: dict) -> list[str]:
    return (res["images"]["partial"] + res["workflows"]["partial"] + res["many"]["wrong"]
            + res["images"]["others"] + res["workflows"]["others"])


def passed(res: dict) -> bool:
    many, n = res["many"], 2 * res["writers"]
    return (not problems(res) and res["left_images"] == 0 and res["left_workflows"] == 0
            and res["start_returncode"] == 2
            and many["texts"] == many["reported_texts"] == n
            and many["pngs"] == many["reported_pngs"] == n and many["temps"] == 0)


def kill_table(res: dict) -> str:
    images, workflows = res["images"], res["workflows"]
    rows = [
        ("kill -9 during image saves", images["kills"], images["mid_write"],
         f"{images['finals']} PNGs", len(images["partial"]), images["temps_before"],
         res["left_images"]),
        ("kill -9 during workflow saves", workflows["kills"], workflows["mid_write"],
         "1 workflow (replaced)", len(workflows["partial"]), workflows["temps_before"],
         res["left_workflows"]),
    ]
    lines = ["| check | kills | kills that left a temp file (mid-write) | files under final names "
             "| partial files under final names | temp files before next start "
             "| temp files after next start |", "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def writers_table(res: dict) -> str:
    many, n, w = res["many"], 2 * res["writers"], res["writers"]
    return "\n".join([
        f"| concurrent writers ({w} processes + {w} threads) "
        "| reported | distinct | on disk | wrong content | temp files |",
        "|---|---|---|---|---|---|",
        f"| Save Text (.txt) | {n} | {many['reported_texts']} | {many['texts']} "
        f"| {sum('.txt' in x for x in many['wrong'])} | {many['temps']} |",
        f"| Save Image writer (.png) | {n} | {many['reported_pngs']} | {many['pngs']} "
        f"| {sum('.png' in x for x in many['wrong'])} | {many['temps']} |"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50, help="kills per kind (default 50)")
    ap.add_argument("--writers", type=int, default=24,
                    help="concurrent processes, and as many threads (default 24)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    args = ap.parse_args(argv)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="loom-kill-"))
    res = run_all(args.kills, args.writers, args.seed, base)
    print(f"Loom kill -9 check (seed {args.seed}, {res['seconds']:.0f} s, folder {base})\n")
    print(kill_table(res))
    print()
    print(writers_table(res))
    for p in problems(res):
        print(f"- {p}")
    ok = passed(res)
    print(f"\n{'PASS' if ok else 'FAIL'}")
    if ok and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
