"""Hostile workflows never reach a traceback, and every input error is found before the first
node runs: mutate Loom's own workflows thousands of times and send each through `main.py run`
in-process, up to the point where nodes would run.

    python -m tools.reliability.fuzz_workflows [--count 10000] [--pngs 500] [--seed 0]
                                               [--limit 5] [--show 5]

Each item is a workflow from resources/workflows (the default, builtin/ and examples/) with 1-4
mutations: values of random types, huge and negative numbers, NaN and infinities, "nan" strings,
unicode, NULs, lone surrogates, 1 MB prompts, absurd image sizes, hostile paths (/usr, /dev/zero,
a FIFO, a symlink loop, a 300-byte name, a big folder, malformed model folders), deleted and added
keys, broken links, unknown node types; sometimes with `--set` overrides and a hostile output
folder; sometimes the workflow path itself is hostile (a FIFO, /dev/zero, a folder, a symlink
loop, a NUL); sometimes embedded in a crafted PNG (tEXt / zTXt / iTXt, truncated, cut,
random bytes).

The item goes through `main.main(["run", FILE, ...])` exactly as the command line does (load,
overrides, validation, the pre-run checks of `Executor.submit`), except that the executor's
run computes every node's cache key (file identities included) and then returns without running
any node. Counted: exit codes (2 = refused as an input error, 0 = valid), tracebacks (any
exception escaping main, or "Traceback" on stderr), raw OS errors (exit 2, but only through
main's last-resort OSError/ValueError handler, with no node named), and hangs (over --limit
seconds). Prints a markdown table.
tests/test_workflow_fuzz.py runs a few hundred items of the same.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import main as loom_main  # noqa: E402
from engine.executor import Executor, RunResult  # noqa: E402
from engine.registry import default_registry  # noqa: E402

WORKFLOWS = ROOT / "resources" / "workflows"


class Hang(BaseException):
    """Raised by the per-item timer (a BaseException: no `except Exception` swallows it)."""


# hostile fixtures --------------------------------------------------------------------------------


class Fixtures:
    """Files and folders that hostile values point at, made once in a temp folder."""

    def __init__(self, root: Path, big_files: int = 20_000):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.fifo = root / "fifo"
        os.mkfifo(self.fifo)
        self.loop = root / "loop_a"
        os.symlink(root / "loop_b", self.loop)
        os.symlink(self.loop, root / "loop_b")
        self.file = root / "a_file.txt"
        self.file.write_text("not a folder\n", encoding="utf-8")
        self.readonly = root / "readonly"
        self.readonly.mkdir()
        os.chmod(self.readonly, 0o500)
        self.big = root / "big"
        self.big.mkdir()
        for i in range(big_files):
            (self.big / f"f{i:05d}").touch()
        self.image = root / "tiny.png"
        from tests.support import png

        self.image.write_bytes(png.png_bytes())
        self.fake_png = root / "fake.png"
        self.fake_png.write_text("not a png", encoding="utf-8")
        self.bomb_png = root / "bomb.png"  # a header claiming 100000 x 100000 pixels
        self.bomb_png.write_bytes(b"\x89PNG\r\n\x1a\n" + png.chunk(
            b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + png.chunk(b"IEND", b""))
        self.models = self._broken_models(root / "models")

    @staticmethod
    def _broken_models(where: Path) -> list[Path]:
        """Copies of the built-in model's JSON files (no weights), each broken in one way."""
        src = ROOT / "resources" / "models" / "loom-shapes"
        breaks = {
            "utf8": ("model_index.json", b"{\"_class_name\": \"\xff\xfe\"}"),
            "json": ("model_index.json", b"{\"_class_name\": "),
            "list": ("model_index.json", b"[1, 2, 3]"),
            "class": ("model_index.json", b"{\"_class_name\": 5}"),
            "channels": ("unet/config.json", b"{\"in_channels\": \"four\"}"),
            "sched": ("scheduler/scheduler_config.json", b"{\"prediction_type\": [1]}"),
            "te": ("text_encoder/config.json", b"{\"hidden_size\": null}"),
            "deep": ("model_index.json", b"[" * 100_000),
        }
        out = []
        for name, (rel, data) in breaks.items():
            folder = where / name
            for f in src.rglob("*.json"):
                target = folder / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
            (folder / rel).write_bytes(data)
            out.append(folder)
        return out

    def paths(self) -> list[str]:
        return ["/usr", "/", "/dev/zero", "/dev/null", "/proc/self/mem", "/proc/kcore",
                "/etc/shadow", "~", "~no_such_user_x/y", "..", ".", "", " ", "a\0b", "\0",
                "\ud800", "x\udcff.png", "x" * 300, "/" + "d/" * 2100, "é" * 200,
                str(self.fifo), str(self.loop), str(self.loop) + "/x", str(self.file) + "/x",
                str(self.readonly), str(self.big), str(self.image), str(self.fake_png),
                str(self.bomb_png), "resources/models/loom-shapes",
                "resources/workflows/builtin/input.png", *map(str, self.models)]

    def output_dirs(self, normal: str) -> list[str]:
        return [normal] * 12 + [str(self.loop), str(self.file), str(self.file / "sub"),
                                str(self.readonly), str(self.readonly / "sub"), "a\0b",
                                "x" * 300, str(self.fifo), "/proc/version", "/dev/null"]


# mutation -----------------------------------------------------------------------------------------

HUGE = [2**63, -(2**63) - 1, 10**400, -1, 0, 1e308, -1e308, 1e-320, 2**31, 16384, 65536, 64]
ODD = [None, True, False, [], {}, [1, 2], {"a": 1}, "nan", "NaN", "inf", "-inf", "1e999",
       "", "0x10", "\0", "\ud800", "\u202e", "日本語", "🙂" * 10, "a" * 5000,
       math.nan, math.inf, -math.inf, -0.0, 3.5]
PREFIXES = ["../x", "", ".", "..", "a/b", "/abs", "x" * 300, "a\0b", "a\ud800", "con:", "a*b",
            ".loom-tmp-1-", " ", "\n", "ok"]
SETS = ["noise.width=16384", "noise.height=16384", "noise.batch=64", "noise.width=9",
        "save.prefix=../x", "save.prefix=", "checkpoint.path=/usr", "checkpoint.path=x\x01",
        "prompt.text=" + "a " * 20_000, "nope.value=1", "noise.nope=1", "noise.seed=-1",
        "sampler.steps=abc", "noise", "=", ".=", "noise.width=1e9", "noise.seed=0x" + "f" * 40]


def _nodes(doc: Any) -> dict[str, Any]:
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    return nodes if isinstance(nodes, dict) else {}


def mutate(doc: dict[str, Any], rng: random.Random, fx: Fixtures, registry) -> Any:
    doc = copy.deepcopy(doc)
    paths = fx.paths()
    for _ in range(rng.randint(1, 4)):
        nodes = _nodes(doc)
        op = rng.choice(["value", "value", "value", "path", "path", "size", "prompt", "prefix",
                         "delete", "add", "link", "type", "root"])
        if not nodes or op == "root":
            key = rng.choice(["nodes", "schema_version", "ui", "extra"])
            doc[key] = rng.choice(ODD + HUGE + [{}, {"x": {"type": "image.load"}}])
            continue
        nid = rng.choice(sorted(nodes))
        node = nodes[nid]
        if not isinstance(node, dict):
            nodes[nid] = {"type": "image.load"}
            continue
        inputs = node.setdefault("inputs", {}) if isinstance(node.get("inputs", {}), dict) \
            else {}
        spec = registry.get(node.get("type")) if isinstance(node.get("type"), str) else None
        names = sorted(spec.inputs) if spec is not None else sorted(inputs) or ["value"]
        if op == "value":
            inputs[rng.choice(names + ["bogus"])] = rng.choice(ODD + HUGE)
        elif op == "path":
            pnames = [n for n, i in spec.inputs.items() if i.path] if spec is not None else []
            target = rng.choice(pnames or names)
            inputs[target] = rng.choice(paths)
        elif op == "size":
            for name in ("width", "height", "batch"):
                if name in names:
                    inputs[name] = rng.choice([16384, 8192, 64, 8, 9, 0, -8, 2**40])
        elif op == "prompt":
            if "text" in names:
                inputs["text"] = rng.choice(["a " * 500_000, "(" * 10_000, "BREAK " * 5000,
                                             "\0\ud800", "日本" * 20_000, "x" * 19_999])
        elif op == "prefix":
            if "prefix" in names:
                inputs["prefix"] = rng.choice(PREFIXES)
        elif op == "delete":
            victim = rng.choice(["node", "type", "version", "inputs", "input"])
            if victim == "node":
                del nodes[nid]
            elif victim == "input" and inputs:
                del inputs[rng.choice(sorted(inputs))]
            else:
                node.pop(victim, None)
        elif op == "add":
            types = [s.type_id for s in registry]
            nodes[rng.choice(["new", nid + "2", "\0", "ü"])] = {
                "type": rng.choice(types + ["no.such_type", "", 5]),
                "inputs": {rng.choice(["image", "path", "text", "x"]): rng.choice(paths + ODD)}}
        elif op == "link":
            links = [k for k, v in inputs.items() if isinstance(v, dict)]
            if links:
                k = rng.choice(links)
                inputs[k] = rng.choice([{"node": "missing", "output": "x"},
                                        {"node": nid, "output": "nope"},
                                        {"node": rng.choice(sorted(nodes)), "output": "image"},
                                        {"node": nid}, {"node": 5, "output": None}])
            else:
                inputs[rng.choice(names)] = {"node": rng.choice(sorted(nodes)),
                                             "output": rng.choice(["image", "model", "clip"])}
        elif op == "type":
            node["type"] = rng.choice(["no.such", "", "image.save", "latents.noise", 3])
    return doc


def _text(doc: Any) -> str:
    try:
        return json.dumps(doc, ensure_ascii=False)
    except (ValueError, TypeError, RecursionError):
        return "{}"


def crafted_png(text: str, rng: random.Random) -> bytes:
    from tests.support import png

    kind = rng.choice(["text", "ztext", "itext", "cut", "bytes", "length", "bomb", "none"])
    latin = text.encode("latin-1", "replace").decode("latin-1")
    if kind == "text":
        return png.png_bytes([png.text("workflow", latin)])
    if kind == "ztext":
        return png.png_bytes([png.ztext("workflow", latin)])
    if kind == "itext":
        return png.png_bytes([png.itext("workflow", text.encode("utf-8", "replace")
                                        .decode("utf-8"))])
    if kind == "cut":
        data = png.png_bytes([png.text("workflow", latin)])
        return data[:rng.randint(8, len(data))]
    if kind == "bytes":
        return b"\x89PNG\r\n\x1a\n" + rng.randbytes(rng.randint(0, 300))
    if kind == "length":  # a chunk that claims 4 GB
        return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 0xFFFFFFFF) + b"tEXt" + b"workflow\0{}"
    if kind == "bomb":  # 200 MB of spaces compressed into a zTXt chunk
        z = zlib.compressobj()
        body = b"".join(z.compress(b" " * 1_000_000) for _ in range(200)) + z.flush()
        return png.png_bytes([(b"zTXt", b"workflow\0\0" + body)])
    return png.png_bytes([])


# one item through main.py run ---------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str  # ok | refused | raw_os_error | failed | traceback | hang
    seconds: float
    detail: str = ""


def _keys_only_run(self, run_id, graph, targets, needed, options, on_event, cancel, ins=None):
    """Stands in for Executor._run: compute every needed node's cache key (file identities of
    path inputs included), as a run does first, and run no node."""
    if ins is None:
        ins = graph.inputs_by_node()
    result = RunResult(run_id)
    for nid in self._topological(graph, needed):
        spec = self.registry.get(graph.nodes[nid].type)
        result.keys[nid] = self._key(graph, nid, spec, result.keys, options, ins.get(nid, {}))
    return result


def run_item(argv: list[str], limit: float) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()

    def alarm(signum, frame):
        raise Hang()

    raw: list[str] = []
    last_resort = loom_main._refused_by_system

    def counted(exc: BaseException) -> int:
        raw.append("".join(traceback.format_exception(exc))[-1500:])
        return last_resort(exc)

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    loom_main._refused_by_system = counted
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = loom_main.main(argv)
    except Hang:
        return Outcome("hang", time.perf_counter() - t0, " ".join(map(repr, argv))[:300])
    except BaseException:  # noqa: BLE001 - that is what is counted
        return Outcome("traceback", time.perf_counter() - t0, traceback.format_exc())
    finally:
        loom_main._refused_by_system = last_resort
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - t0
    text = err.getvalue()
    if "Traceback" in text:
        return Outcome("traceback", seconds, text[-2000:])
    if code == 2:
        # refused; through main's last-resort OSError/ValueError handler counts apart (exit 2,
        # one plain line, but no check named the node and input)
        if raw:
            return Outcome("raw_os_error", seconds, raw[0])
        return Outcome("refused", seconds, text[:300])
    if code == 0:
        return Outcome("ok", seconds)
    return Outcome("failed", seconds, f"exit {code}: {text[:300]}")


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    slowest: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, o: Outcome, show: int) -> None:
        self.counts[o.kind] += 1
        self.slowest = max(self.slowest, o.seconds)
        if o.kind not in ("ok", "refused"):
            self.examples.setdefault(o.kind, [])
            if len(self.examples[o.kind]) < show:
                self.examples[o.kind].append(o.detail)


def fuzz(count: int = 10_000, pngs: int = 500, seed: int = 0, limit: float = 5.0,
         show: int = 5, big_files: int = 20_000, progress: bool = False) -> dict[str, Tally]:
    """Run `count` mutated workflows and `pngs` crafted PNGs; a Tally per kind of item."""
    rng = random.Random(seed)
    registry = default_registry()
    seeds = [json.loads(p.read_text(encoding="utf-8"))
             for p in sorted(WORKFLOWS.rglob("*.json"))]
    tallies = {k: Tally() for k in ("workflow (.json)", "workflow + --set", "hostile --out",
                                    "hostile workflow path", "crafted PNG")}
    original = Executor._run
    Executor._run = _keys_only_run
    tmp = Path(tempfile.mkdtemp(prefix="loom-fuzz-"))
    try:
        fx = Fixtures(tmp / "fx", big_files)
        out_dir = str(tmp / "out")
        total = count + pngs
        for i in range(total):
            doc = mutate(rng.choice(seeds), rng, fx, registry)
            text = _text(doc)
            argv = ["run"]
            if i >= count:
                kind = "crafted PNG"
                path = tmp / "item.png"
                path.write_bytes(crafted_png(text, rng))
            else:
                path = tmp / "item.json"
                path.write_text(text, encoding="utf-8", errors="surrogatepass")
                kind = rng.choices(["workflow (.json)", "workflow + --set", "hostile --out",
                                    "hostile workflow path"], [60, 20, 20, 1])[0]
            if kind == "hostile workflow path":  # a FIFO would block a read, /dev/zero never end
                path = rng.choice([fx.fifo, Path("/dev/zero"), fx.loop, fx.big, fx.file / "x",
                                   "a\0b.json", "\udcff.json", "x" * 300, fx.readonly])
            argv.append(str(path))
            out = out_dir
            if kind == "workflow + --set":
                for _ in range(rng.randint(1, 3)):
                    argv += ["--set", rng.choice(SETS)]
            if kind == "hostile --out":
                out = rng.choice(fx.output_dirs(out_dir))
            argv += ["--out", out, "--device", rng.choice(["cpu", "auto"])]
            tallies[kind].add(run_item(argv, limit), show)
            if progress and (i + 1) % 1000 == 0:
                print(f"{i + 1}/{total}", file=sys.stderr)
    finally:
        Executor._run = original
        with contextlib.suppress(OSError):
            os.chmod(tmp / "fx" / "readonly", 0o700)
        shutil.rmtree(tmp, ignore_errors=True)
    return tallies


def table(tallies: dict[str, Tally]) -> str:
    kinds = ["ok", "refused", "raw_os_error", "failed", "traceback", "hang"]
    head = ("| items | n | valid (exit 0) | refused (exit 2) | raw OS error | other exit | "
            "tracebacks | hangs | slowest (s) |")
    lines = [head, "|" + "---|" * 9]
    total = Tally()
    for name, t in tallies.items():
        n = sum(t.counts.values())
        lines.append(f"| {name} | {n} | " + " | ".join(str(t.counts[k]) for k in kinds)
                     + f" | {t.slowest:.2f} |")
        total.counts.update(t.counts)
        total.slowest = max(total.slowest, t.slowest)
    n = sum(total.counts.values())
    lines.append(f"| **all** | {n} | " + " | ".join(str(total.counts[k]) for k in kinds)
                 + f" | {total.slowest:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000, help="mutated .json workflows")
    ap.add_argument("--pngs", type=int, default=500, help="crafted PNG workflows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=float, default=5.0, help="seconds per item before a hang")
    ap.add_argument("--show", type=int, default=5, help="examples of each failure to print")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tallies = fuzz(args.count, args.pngs, args.seed, args.limit, args.show, progress=True)
    print(table(tallies))
    print(f"\n{args.count + args.pngs} items in {time.perf_counter() - t0:.0f} s "
          f"(seed {args.seed})")
    bad = 0
    for name, t in tallies.items():
        for kind, examples in t.examples.items():
            bad += t.counts[kind]
            for e in examples:
                print(f"\n### {name}: {kind}\n{e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
