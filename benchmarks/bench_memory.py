"""Memory that is really freed: three SD-size checkpoints loaded in turn in one process, with a
memory budget that holds one.

    python benchmarks/bench_memory.py [--work DIR] [--keep]

Builds a Stable Diffusion 1.5-architecture diffusers folder with random weights (Loom's SD 1.x
configs, fp16 safetensors, ~2 GB on disk) once, and two more "checkpoints" as hard-linked copies
(other folders, so other models to Loom, at no disk cost). Then, in a fresh process:

  1. renders nothing, but runs Load Checkpoint + both text encoders (a graph whose output is a
     Show Text of the conditioning's shape) for checkpoint 1 and notes the resident memory (RSS)
     above the process's baseline: one model's worth (fp32 on the CPU, ~4.3 GB);
  2. sets the memory budget to 1.1 x the model manager's bytes for one checkpoint;
  3. runs the same graph for checkpoints 2 and 3, keeping every result cached (so each Load
     Checkpoint output, which once held its model, stays in the result cache);
  4. prints RSS after each, the ratio after the third against one model's (goal <= 1.2), and
     what the memory budget reports (models / results).
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "resources" / "configs" / "sd1"


def build_sd15(folder: Path) -> None:
    """A random-weight SD 1.5-architecture diffusers folder (fp16 weights)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for sub in ("scheduler", "tokenizer"):
        shutil.copytree(CONFIGS / sub, folder / sub, dirs_exist_ok=True)
    tok = ROOT / "resources" / "tokenizers" / "clip"
    for f in tok.iterdir():
        if f.is_file():
            shutil.copy(f, folder / "tokenizer" / f.name)
    shutil.copy(CONFIGS / "model_index.json", folder / "model_index.json")
    with torch.no_grad():
        unet = UNet2DConditionModel.from_config(
            json.loads((CONFIGS / "unet" / "config.json").read_text()))
        unet.to(torch.float16).save_pretrained(folder / "unet")
        del unet
        vae = AutoencoderKL.from_config(json.loads((CONFIGS / "vae" / "config.json").read_text()))
        vae.to(torch.float16).save_pretrained(folder / "vae")
        del vae
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(CONFIGS / "text_encoder"))
        te.to(torch.float16).save_pretrained(folder / "text_encoder")


def hard_link_copy(src: Path, dst: Path) -> None:
    if not dst.is_dir():
        shutil.copytree(src, dst, copy_function=os.link)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


CHILD = r"""
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
from benchmarks.bench_memory import rss_bytes
from engine.api import Session
from engine.graph import Graph
from nodes.lib.model_manager import manager

folders = json.loads(sys.argv[2])
s = Session()
gc.collect()
base = rss_bytes()
out = {"baseline_mb": base / 2**20, "after": []}
def graph(folder):
    g = Graph(s.registry)
    g.add_node("loaders.checkpoint", "ckpt", {"path": folder, "dtype": "fp32"})
    g.add_node("conditioning.text_encode", "prompt", {"text": "a harbour at sunset"})
    g.connect("ckpt", "clip", "prompt", "clip")
    g.add_node("text.show", "show")
    g.connect("prompt", "conditioning", "show", "value")
    return g
for i, folder in enumerate(folders):
    t = time.perf_counter()
    r = s.run(graph(folder), output_dir="/tmp/loom-bench-memory", device="cpu")
    assert r.ok, r.errors
    gc.collect()
    if i == 0:
        one_model = manager().nbytes()
        s.cache.set_budget(int(one_model * 1.1) + s.cache.nbytes())
        out["one_model_manager_mb"] = one_model / 2**20
    out["after"].append({"rss_mb": (rss_bytes() - base) / 2**20,
                         "seconds": time.perf_counter() - t,
                         "memory": s.cache.memory.stats(),
                         "cached_results": len(s.cache)})
print("RESULT " + json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="folder for the checkpoints")
    ap.add_argument("--keep", action="store_true", help="keep the built checkpoints")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="loom-bench-memory-"))
    first = work / "sd15_a"
    t = time.perf_counter()
    if not (first / "unet").is_dir():
        build_sd15(first)
    folders = [first]
    for name in ("sd15_b", "sd15_c"):
        hard_link_copy(first, work / name)
        folders.append(work / name)
    print(f"checkpoints ready in {time.perf_counter() - t:.0f} s under {work}")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT),
                           json.dumps([str(f) for f in folders])],
                          capture_output=True, text=True, env=env, timeout=3000)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return 1
    res = json.loads(line[len("RESULT "):])
    one = res["after"][0]["rss_mb"]
    print(f"model manager, one checkpoint: {res['one_model_manager_mb']:.0f} MB (fp32)")
    print("| after loading | RSS above baseline | models held | cached results | seconds |")
    print("|---|---:|---:|---:|---:|")
    for i, a in enumerate(res["after"], 1):
        m = a["memory"].get("models", {"count": 0, "bytes": 0})
        print(f"| checkpoint {i} | {a['rss_mb']:.0f} MB | {m['count']} "
              f"({m['bytes'] / 2**20:.0f} MB) | {a['cached_results']} | {a['seconds']:.1f} |")
    ratio = res["after"][-1]["rss_mb"] / one if one else float("nan")
    print(f"RSS after the third / after the first: {ratio:.2f} (goal <= 1.2)")
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
