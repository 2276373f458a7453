"""The reliability report: every check of issue #16, measured, as one markdown section for the
README (`## Reliability`). Progress goes to stderr, the section to stdout.

    python -m tools.reliability.report [--quick] [--only absurd,disk,runs,soak,kill,fuzz]
        [--count 10000] [--pngs 500] [--kills 50] [--writers 24] [--runs 24] [--soak 200]
        [--repeat 3] [--seed 0] [--results FILE.json]

The checks, each with its goal:

- absurd values (`absurd`): `python main.py run` with a 16384x16384x64 noise, a 1 MB prompt, a
  NUL in a path, a 300-byte name, a symlink loop as output folder, a bad prefix, 100,000,000
  steps, a negative seed: each refused with exit 2, the node and input named, no traceback,
  nothing written, in under a second from process start (the median of --repeat runs;
  `python main.py nodes`, Python plus Loom's imports, is timed alongside for reference).
- a full disk (`disk`): the default workflow (4 images) into an output folder on a small tmpfs
  that fills up after the first PNGs (where mounting is not allowed: a file-size limit,
  RLIMIT_FSIZE, with SIGXFSZ ignored): exit 1, the error names the node and the file, every
  file under a final name is complete and printed, no temp file is left. And a workflow saved
  over an old one on the full disk: the old file is unchanged.
- concurrent runs (`runs`): --runs `python main.py run` processes of the default workflow, one
  image each, a different seed each, into one --out folder at once: every printed path exists,
  all are distinct, and each PNG's embedded workflow carries its own run's seed.
- a soak (`soak`): one process, one engine.api.Session, the default workflow (built-in model,
  64 px, one image, a new seed each run so the sampler and decoder really run) --soak times;
  RSS (VmRSS) after every run; goal: at most 5 % growth from after warm-up (run 20) to the end.
- kill -9 during saves and concurrent writers (`kill`): tools/reliability/kill_saves.py.
- hostile workflows and PNGs (`fuzz`): tools/reliability/fuzz_workflows.py; 0 tracebacks,
  0 hangs, every item refused with exit 2 or valid.

--quick is a smoke run of every piece (a few minutes); tests/test_reliability_report.py runs
some of its pieces. With --results FILE each check's result is kept as soon as it is measured,
so `--only fuzz --results FILE` re-measures one check and prints the whole section again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT = ROOT / "resources" / "workflows" / "default.json"
CHECKS = ("absurd", "disk", "runs", "soak", "kill", "fuzz")
SOAK_GOAL = 5.0  # % RSS growth after warm-up
ABSURD_GOAL = 1.0  # seconds from process start to the refusal


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8",
                HF_HUB_OFFLINE="1", **extra)


def loom(args: list[str], timeout: float = 600, **popen) -> tuple[subprocess.CompletedProcess,
                                                                  float]:
    """`python main.py ARGS` from the repository root; (the finished process, wall seconds
    from its start to its exit)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT,
                          env=popen.pop("env", _env()), capture_output=True, text=True,
                          errors="replace", timeout=timeout, **popen)
    return proc, time.perf_counter() - t0


def pass_fail(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def temp_files(folder: Path) -> list[Path]:
    from engine.files import TEMP_PREFIX

    try:
        return [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]
    except OSError:
        return []


def png_problem(path: Path) -> str | None:
    """Why `path` is not a complete PNG that Loom wrote with its workflow, or None."""
    from PIL import Image

    from engine.workflow import parse_document, png_text_chunks

    try:
        with Image.open(path) as img:
            img.load()
        parse_document(png_text_chunks(path.read_bytes(), str(path))["workflow"])
    except Exception as exc:  # noqa: BLE001 - any failure is a partial or broken file
        return f"{type(exc).__name__}: {exc}"
    return None


def png_seed(path: Path) -> int | None:
    """The noise seed in the workflow embedded in a PNG Loom wrote."""
    from engine.workflow import parse_document, png_text_chunks

    doc = parse_document(png_text_chunks(path.read_bytes(), str(path))["workflow"])
    return doc["nodes"]["noise"]["inputs"]["seed"]


def _short(text: str, n: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


# absurd values ------------------------------------------------------------------------------------


def absurd_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments after `main.py run`, what the error must name)."""
    (tmp / "loop_a").symlink_to(tmp / "loop_b")
    (tmp / "loop_b").symlink_to(tmp / "loop_a")
    doc = json.loads(DEFAULT.read_text(encoding="utf-8"))
    doc["nodes"]["prompt"]["inputs"]["text"] = "a " * 500_000
    (tmp / "prompt_1mb.json").write_text(json.dumps(doc), encoding="utf-8")
    doc = json.loads(DEFAULT.read_text(encoding="utf-8"))
    doc["nodes"]["checkpoint"]["inputs"]["path"] = "resources/models/loom\0shapes"
    (tmp / "nul_path.json").write_text(json.dumps(doc), encoding="utf-8")  # JSON's \u0000
    out = str(tmp / "out")
    return {
        "noise 16384×16384, batch 64": (
            ["--set", "noise.width=16384", "--set", "noise.height=16384",
             "--set", "noise.batch=64", "--out", out], "node 'noise' (latents.noise) input"),
        "1 MB prompt (in the workflow file)": (
            [str(tmp / "prompt_1mb.json"), "--out", out],
            "node 'prompt' (conditioning.text_encode) input 'text'"),
        "NUL in a path (checkpoint, in the workflow file)": (
            [str(tmp / "nul_path.json"), "--out", out],
            "node 'checkpoint' (loaders.checkpoint) input 'path'"),
        "300-byte file name (checkpoint.path)": (
            ["--set", "checkpoint.path=" + "x" * 300, "--out", out],
            "node 'checkpoint' (loaders.checkpoint) input 'path'"),
        "300-byte output folder name": (
            ["--out", str(tmp / ("y" * 300))], "node 'save' (image.save)"),
        "symlink loop as output folder": (
            ["--out", str(tmp / "loop_a")], "node 'save' (image.save)"),
        "bad prefix (save.prefix=../escape)": (
            ["--set", "save.prefix=../escape", "--out", out],
            "node 'save' (image.save) input 'prefix'"),
        "100,000,000 steps (scheduler.steps)": (
            ["--set", "scheduler.steps=100000000", "--out", out],
            "node 'scheduler' (sampling.scheduler) input 'steps'"),
        "negative seed (noise.seed=-1)": (
            ["--set", "noise.seed=-1", "--out", out],
            "node 'noise' (latents.noise) input 'seed'"),
    }


def check_absurd(repeat: int = 3, only: list[str] | None = None) -> dict:
    """Time each refusal (wall clock from process start to exit, median of `repeat`)."""
    tmp = Path(tempfile.mkdtemp(prefix="loom-absurd-"))
    try:
        cases = absurd_cases(tmp)
        rows = []
        nodes_times = [loom(["nodes"])[1] for _ in range(repeat)]
        for name, (args, where) in cases.items():
            if only is not None and name not in only:
                continue
            times, procs = [], []
            for _ in range(repeat):
                proc, seconds = loom(["run", *args], timeout=120)
                times.append(seconds)
                procs.append(proc)
            proc = procs[-1]
            message = next((ln.strip() for ln in proc.stderr.splitlines()
                            if ln.strip().startswith("- ")), proc.stderr.strip()[-300:])
            written = os.path.exists(tmp / "out") or os.path.exists(tmp / ("y" * 300))
            codes = sorted({p.returncode for p in procs})
            rows.append({
                "case": name, "codes": codes, "median": statistics.median(times),
                "max": max(times), "message": message.removeprefix("- ").replace(str(tmp), "…"),
                "names_input": all(where in p.stderr for p in procs),
                "traceback": any("Traceback" in p.stderr for p in procs),
                "stdout": any(p.stdout.strip() for p in procs), "written": written})
        for r in rows:
            r["ok"] = (r["codes"] == [2] and r["names_input"] and not r["traceback"]
                       and not r["stdout"] and not r["written"] and r["median"] < ABSURD_GOAL)
        return {"rows": rows, "nodes_median": statistics.median(nodes_times),
                "repeat": repeat, "ok": all(r["ok"] for r in rows)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def absurd_table(res: dict) -> str:
    lines = [f"| absurd value (`main.py run …`) | exit | seconds, median of {res['repeat']} "
             "(max) | the error | goal: exit 2 naming the node and input, nothing written, "
             "< 1 s |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['case']} | {', '.join(map(str, r['codes']))} | {r['median']:.2f} "
                     f"({r['max']:.2f}) | {_md(_short(r['message']))} | {pass_fail(r['ok'])} |")
    lines.append(f"| *reference: `python main.py nodes` (start-up, imports)* | 0 | "
                 f"{res['nodes_median']:.2f} | | |")
    return "\n".join(lines)


# a full disk ----------------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: int) -> bool:
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "loom-full", str(where)],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True, timeout=30)


def _fill(folder: Path, room: int) -> None:
    """Leave only `room` bytes free on the file system of `folder`."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - room))


def _fsize_limit(limit: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def check_disk(room: int = 20 * 1024, force_rlimit: bool = False) -> dict:
    """The default workflow (4 images, 64 px) into an output folder that fills up."""
    tmp = Path(tempfile.mkdtemp(prefix="loom-disk-"))
    disk = tmp / "disk"
    disk.mkdir()
    mounted = not force_rlimit and _mount_tmpfs(disk, 1 << 20)
    try:
        out = disk / "out"
        if mounted:
            how = f"on a 1 MiB tmpfs with {room // 1024} KiB left free"
            # an old workflow, replaced on the full disk below
            wf_path = disk / "saved.json"
            old = DEFAULT.read_text(encoding="utf-8")
            wf_path.write_text(old, encoding="utf-8")
            _fill(disk, room)
            proc, seconds = loom(["run", "--set", "noise.seed=7", "--out", str(out)],
                                 env=_env(OMP_NUM_THREADS="1"))
        else:
            how = (f"under a file-size limit (RLIMIT_FSIZE {room // 4} bytes, less than one "
                   "PNG; a tmpfs could not be mounted)")
            wf_path, old = None, None
            proc, seconds = loom(["run", "--set", "noise.seed=7", "--out", str(out)],
                                 env=_env(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1"),
                                 preexec_fn=_fsize_limit(room // 4))
        printed = [Path(ln) for ln in proc.stdout.splitlines() if ln.strip()]
        finals = sorted(out.glob("loom_*.png")) if out.is_dir() else []
        partial = [f"{p.name}: {why}" for p in finals if (why := png_problem(p))]
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        res = {"how": how, "returncode": proc.returncode, "seconds": seconds,
               "error": (errors[0].removeprefix("error: ") if errors
                         else proc.stderr[-300:]).replace(str(disk), "…"),
               "names_node": any("node 'save' (image.save)" in e for e in errors),
               "names_file": any(str(out) in e and ".png" in e for e in errors),
               "traceback": "Traceback" in proc.stderr,
               "finals": len(finals), "printed": len(printed),
               "printed_match": sorted(map(str, printed)) == sorted(map(str, finals)),
               "partial": partial, "temps": len(temp_files(out)) if out.is_dir() else 0}
        if wf_path is not None:
            from engine.errors import LoomError
            from engine.workflow import atomic_write_text

            try:
                atomic_write_text(wf_path, old + " " * (4 * room))
                res["workflow"] = "saved (the disk was not full?)"
            except LoomError as exc:
                res["workflow"] = str(exc).replace(str(disk), "…")
            res["workflow_kept"] = wf_path.read_text(encoding="utf-8") == old
            res["workflow_temps"] = len(temp_files(disk))
        res["ok"] = (res["returncode"] == 1 and res["names_node"] and res["names_file"]
                     and not res["traceback"] and not partial and res["temps"] == 0
                     and res["printed_match"] and res.get("workflow_kept", True)
                     and res.get("workflow_temps", 0) == 0)
        return res
    finally:
        if mounted:
            _umount(disk)
        shutil.rmtree(tmp, ignore_errors=True)


def disk_table(res: dict) -> str:
    lines = ["| full disk | exit | the error | PNGs under final names (printed) | partial "
             "| temp files left | goal: a clear error, nothing partial, no temp files |",
             "|---|---|---|---|---|---|---|",
             f"| `main.py run` (default workflow, 4 images) into a folder {res['how']} "
             f"| {res['returncode']} | {_md(_short(res['error'], 200))} | {res['finals']} "
             f"({res['printed']}) | {len(res['partial'])} | {res['temps']} "
             f"| {pass_fail(res['ok'])} |"]
    if "workflow" in res:
        lines.append(f"| a workflow saved over an old one on that full disk | – "
                     f"| {_md(_short(res['workflow'], 200))} "
                     f"| old file {'unchanged' if res['workflow_kept'] else 'CHANGED'} | – "
                     f"| {res['workflow_temps']} "
                     f"| {pass_fail(res['workflow_kept'] and res['workflow_temps'] == 0)} |")
    return "\n".join(lines)


# concurrent runs ------------------------------------------------------------------------------


def check_runs(n: int = 24, seed0: int = 1000) -> dict:
    """`n` `main.py run` processes of the default workflow (one image, seed seed0+i) into one
    folder at once (OMP_NUM_THREADS=1 each, to spare the CPU threads)."""
    tmp = Path(tempfile.mkdtemp(prefix="loom-runs-"))
    out = tmp / "out"
    try:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), "run",
                                   "--set", "noise.batch=1", "--set", f"noise.seed={seed0 + i}",
                                   "--out", str(out)], cwd=ROOT, env=_env(OMP_NUM_THREADS="1"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  errors="replace")
                 for i in range(n)]
        reports = []
        for i, p in enumerate(procs):
            stdout, stderr = p.communicate(timeout=1800)
            reports.append({"seed": seed0 + i, "code": p.returncode,
                            "paths": [ln for ln in stdout.splitlines() if ln.strip()],
                            "stderr": stderr[-500:]})
        seconds = time.perf_counter() - t0
        wrong: list[str] = []
        for r in reports:
            if r["code"] != 0 or len(r["paths"]) != 1:
                wrong.append(f"seed {r['seed']}: exit {r['code']}, {len(r['paths'])} paths "
                             f"{_short(r['stderr'], 200)}")
                continue
            path = Path(r["paths"][0])
            why = png_problem(path) if path.is_file() else "missing"
            if why is None and png_seed(path) != r["seed"]:
                why = f"carries seed {png_seed(path)}"
            if why is not None:
                wrong.append(f"seed {r['seed']}: {path.name}: {why}")
        printed = [p for r in reports for p in r["paths"]]
        on_disk = sorted(out.glob("loom_*.png")) if out.is_dir() else []
        mtimes = [p.stat().st_mtime for p in on_disk]
        res = {"runs": n, "ok_runs": sum(r["code"] == 0 for r in reports),
               "printed": len(printed), "distinct": len(set(printed)),
               "on_disk": len(on_disk), "wrong": wrong, "temps": len(temp_files(out)),
               "seconds": seconds, "save_window": max(mtimes) - min(mtimes) if mtimes else 0.0}
        res["ok"] = (not wrong and res["ok_runs"] == n and res["printed"] == res["distinct"]
                     == res["on_disk"] == n and res["temps"] == 0)
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def runs_table(res: dict) -> str:
    return "\n".join([
        f"| {res['runs']} concurrent `main.py run` into one folder | exit 0 | paths printed "
        "| distinct | PNGs on disk | wrong or missing (own seed in the embedded workflow) "
        "| temp files | goal: every printed file exists with its own content |",
        "|---|---|---|---|---|---|---|---|",
        f"| default workflow, 1 image, seeds {1000}…{1000 + res['runs'] - 1}; all done in "
        f"{res['seconds']:.0f} s, the PNGs written within {res['save_window']:.1f} s "
        f"| {res['ok_runs']} | {res['printed']} | {res['distinct']} | {res['on_disk']} "
        f"| {len(res['wrong'])} | {res['temps']} | {pass_fail(res['ok'])} |"])


# soak -------------------------------------------------------------------------------------------


def _rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def soak_child(n: int, folder: str) -> dict:
    """In this process: one Session, the default workflow at one image, `n` runs with new seeds;
    VmRSS after each."""
    from engine.api import Session
    from engine.memory import default_budget

    session = Session()
    graph = session.load(DEFAULT)
    session.set(graph, "noise.batch", 1)
    rss, cached, times, files, errors = [], [], [], 0, []
    for i in range(n):
        session.set(graph, "noise.seed", 5000 + i)
        t0 = time.perf_counter()
        result = session.run(graph, output_dir=folder)
        times.append(time.perf_counter() - t0)
        rss.append(_rss_kb())
        cached.append(session.cache.nbytes())
        files += len(result.files)
        if not result.ok:
            errors.append(f"run {i}: " + "; ".join(str(e) for e in result.errors.values()))
        if (i + 1) % 20 == 0:
            log(f"soak: {i + 1}/{n} runs, RSS {rss[-1] / 1024:.0f} MiB")
    return {"rss_kb": rss, "cache_bytes": cached, "times": times, "files": files,
            "errors": errors[:5], "stats": default_budget().stats(),
            "cache_entries": len(session.cache)}


def check_soak(n: int = 200, warmup: int = 20) -> dict:
    """The soak in a fresh process (nothing else measured has run in it)."""
    tmp = Path(tempfile.mkdtemp(prefix="loom-soak-"))
    try:
        proc = subprocess.run([sys.executable, "-m", "tools.reliability.report", "--soak-child",
                               str(n), str(tmp)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              text=True, errors="replace", timeout=max(600, 30 * n))
        if proc.returncode != 0:  # its stderr went to ours
            raise RuntimeError(f"the soak process failed (exit {proc.returncode})")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["on_disk"] = len(list(tmp.glob("loom_*.png")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rss = res["rss_kb"]
    warmup = min(warmup, n - 1)
    res["n"], res["warmup"] = n, warmup
    res["rss_warm"], res["rss_end"], res["rss_peak"] = rss[warmup - 1], rss[-1], max(rss)
    res["growth"] = 100.0 * (res["rss_end"] - res["rss_warm"]) / res["rss_warm"]
    cached = res["cache_bytes"]
    res["cache_growth_kb"] = (cached[-1] - cached[warmup - 1]) / 1024
    res["ok"] = (res["growth"] <= SOAK_GOAL and not res["errors"] and res["files"] == n
                 == res["on_disk"])
    return res


def _mib(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


def soak_table(res: dict) -> str:
    st = res["stats"]
    pools = ", ".join(f"{name} {v['count']} ({v['bytes'] / 2**20:.1f} MiB)"
                      for name, v in st.items() if name != "budget")
    times = res["times"]
    return "\n".join([
        f"| soak: one Session, {res['n']} runs of the default workflow (1 image, new seed each) "
        f"| RSS after run {res['warmup']} | RSS after run {res['n']} | growth | peak RSS "
        "| of which cached results | seconds per run (median) | memory budget pools at the end "
        f"| goal: growth ≤ {SOAK_GOAL:.0f} % |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {res['files']} PNGs written, {len(res['errors'])} failed runs "
        f"| {_mib(res['rss_warm'])} | {_mib(res['rss_end'])} | {res['growth']:+.2f} % "
        f"| {_mib(res['rss_peak'])} | {res['cache_growth_kb'] / 1024:+.1f} MiB "
        f"| {statistics.median(times):.2f} "
        f"| {pools}; budget {st['budget']['bytes'] / 2**30:.1f} GiB "
        f"| {pass_fail(res['ok'])} |"])


# kill -9 and hostile input: the existing scripts --------------------------------------------------


def check_kill(kills: int, writers: int, seed: int) -> dict:
    from tools.reliability import kill_saves as ks

    base = Path(tempfile.mkdtemp(prefix="loom-kill-"))
    try:
        res = ks.run_all(kills, writers, seed, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res["ok"] = ks.passed(res)
    res["problems"] = ks.problems(res)
    return res


def kill_tables(res: dict) -> str:
    from tools.reliability import kill_saves as ks

    extra = "".join(f"\n- {_md(p)}" for p in res["problems"][:5])
    return (ks.kill_table(res) + "\n\n" + ks.writers_table(res)
            + f"\n\nGoal: 0 partial files under final names, 0 temp files after the next start, "
              f"every reported file on disk with its own content: {pass_fail(res['ok'])} "
              f"({res['seconds']:.0f} s)." + extra)


def fuzz_child(count: int, pngs: int, seed: int) -> dict:
    """In this process: the fuzz of tools/reliability/fuzz_workflows.py."""
    from tools.reliability import fuzz_workflows as fz

    tallies = fz.fuzz(count, pngs, seed, progress=True)
    bad = {k: sum(t.counts[k] for t in tallies.values())
           for k in ("raw_os_error", "failed", "traceback", "hang")}
    examples = [f"{name}: {kind}: {_short(e[-400:], 300)}" for name, t in tallies.items()
                for kind, ex in t.examples.items() for e in ex[:2]]
    return {"table": fz.table(tallies), "bad": bad, "ok": not any(bad.values()),
            "examples": examples[:6]}


FUZZ_MEMORY = 8 << 30
"""Address-space limit of the fuzz process: an input that makes Loom allocate without bound
(it once read /dev/zero whole) is a counted MemoryError, not the machine's OOM killer."""


def check_fuzz(count: int, pngs: int, seed: int) -> dict:
    """The fuzz in a child process under an address-space limit (FUZZ_MEMORY)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (FUZZ_MEMORY, FUZZ_MEMORY))

    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tools.reliability.report", "--fuzz-child",
                           str(count), str(pngs), str(seed)], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, text=True, errors="replace",
                          preexec_fn=limit, timeout=max(3600, count))
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"the fuzz process died (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(seconds=time.perf_counter() - t0, count=count, pngs=pngs, seed=seed)
    return res


def fuzz_tables(res: dict) -> str:
    extra = "".join(f"\n- {_md(e)}" for e in res["examples"])
    return (res["table"] + f"\n\nGoal: 0 tracebacks, 0 hangs, every item valid or refused with "
            f"exit 2 naming what is wrong: {pass_fail(res['ok'])} ({res['count']} workflows + "
            f"{res['pngs']} PNGs, seed {res['seed']}, {res['seconds']:.0f} s)." + extra)


# the section ------------------------------------------------------------------------------------


def machine() -> str:
    mem = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       "")
    except OSError:
        pass
    import torch

    return (f"{os.cpu_count()} CPU cores{f' ({cpu})' if cpu else ''}, {mem / 2**30:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


TITLES = {
    "absurd": ("**Absurd values** are refused before anything runs (the time is the whole "
               "process, start-up included):", absurd_table),
    "disk": ("**A full disk**:", disk_table),
    "runs": ("**Concurrent runs** into one folder (each process 1 CPU thread):", runs_table),
    "soak": ("**Soak** (RSS from /proc/self/status after each run):", soak_table),
    "kill": ("**kill -9 during saves** (`tools/reliability/kill_saves.py`; each kill at a random "
             "moment of a child saving in a loop), then many writers at once:", kill_tables),
    "fuzz": ("**Hostile workflows and PNGs** through `main.py run` up to the first node "
             "(`tools/reliability/fuzz_workflows.py`: 1–4 mutations of Loom's own workflows "
             "each):", fuzz_tables),
}


def section(results: dict, quick: bool = False) -> str:
    """The README section for `results` ({check: result}, each with "date" and "elapsed")."""
    note = " (`--quick`: a smoke run, not the measured suite)" if quick else ""
    ok = all(r["ok"] for r in results.values())
    dates = sorted({r.get("date") or datetime.date.today().isoformat()
                    for r in results.values()}) or [datetime.date.today().isoformat()]
    seconds = sum(r.get("elapsed", 0.0) for r in results.values())
    took = (f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} seconds")
    parts = [
        "## Reliability",
        "",
        "No file is ever lost or half-written, hostile input never reaches a traceback. "
        "Regenerate this section with `python -m tools.reliability.report` (it prints it; "
        "`--quick` for a smoke run, `--only CHECKS --results FILE.json` to re-measure some "
        "checks).",
        "",
        f"Measured {' to '.join([dates[0], dates[-1]] if len(dates) > 1 else dates)}{note} "
        f"on {machine()}; all checks {took}. Overall: {pass_fail(ok)}.",
    ]
    for name in CHECKS:
        if name not in results:
            continue
        title, table = TITLES[name]
        r = results[name]
        body = (f"**FAIL**: the check itself failed: `{_md(r['crashed'])}`" if "crashed" in r
                else table(r))
        parts += ["", title, "", body]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--soak-child"]:
        print(json.dumps(soak_child(int(argv[1]), argv[2])))
        return 0
    if argv[:1] == ["--fuzz-child"]:
        print(json.dumps(fuzz_child(int(argv[1]), int(argv[2]), int(argv[3]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: fewer items, kills, runs (a minute or two)")
    ap.add_argument("--only", default=",".join(CHECKS),
                    help=f"comma-separated checks to run (default all: {','.join(CHECKS)})")
    ap.add_argument("--results", metavar="FILE.json",
                    help="keep each check's result in FILE as soon as it is measured; checks "
                         "not run now (see --only) are taken from FILE for the section")
    ap.add_argument("--count", type=int, help="mutated workflows (default 10000; quick 200)")
    ap.add_argument("--pngs", type=int, help="crafted PNGs (default 500; quick 20)")
    ap.add_argument("--kills", type=int, help="kills per kind (default 50; quick 8)")
    ap.add_argument("--writers", type=int, help="concurrent writers (default 24; quick 4)")
    ap.add_argument("--runs", type=int, help="concurrent main.py runs (default 24; quick 4)")
    ap.add_argument("--soak", type=int, help="soak runs (default 200; quick 10)")
    ap.add_argument("--repeat", type=int, help="timings per absurd value (default 3; quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    q = args.quick
    count = args.count if args.count is not None else (200 if q else 10_000)
    pngs = args.pngs if args.pngs is not None else (20 if q else 500)
    kills = args.kills if args.kills is not None else (8 if q else 50)
    writers = args.writers if args.writers is not None else (4 if q else 24)
    runs = args.runs if args.runs is not None else (4 if q else 24)
    soak = args.soak if args.soak is not None else (10 if q else 200)
    repeat = args.repeat if args.repeat is not None else (1 if q else 3)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(only) - set(CHECKS)
    if unknown:
        ap.error(f"unknown checks: {', '.join(sorted(unknown))} (known: {', '.join(CHECKS)})")

    store = Path(args.results) if args.results else None
    results: dict[str, dict] = {}
    if store is not None and store.exists():
        results = {k: v for k, v in json.loads(store.read_text(encoding="utf-8")).items()
                   if k in CHECKS}
    steps = {
        "absurd": lambda: check_absurd(repeat),
        "disk": check_disk,
        "runs": lambda: check_runs(runs),
        "soak": lambda: check_soak(soak, 20 if soak >= 40 else max(1, soak // 2)),
        "kill": lambda: check_kill(kills, writers, args.seed),
        "fuzz": lambda: check_fuzz(count, pngs, args.seed),
    }
    for name in CHECKS:
        if name not in only:
            continue
        log(f"{name} ...")
        t1 = time.perf_counter()
        try:
            res = steps[name]()
        except Exception as exc:  # noqa: BLE001 - one broken check must not lose the others
            import traceback

            traceback.print_exc()
            res = {"ok": False, "crashed": _short(f"{type(exc).__name__}: {exc}", 300)}
        res["elapsed"] = time.perf_counter() - t1
        res["date"] = datetime.date.today().isoformat()
        results[name] = res
        log(f"{name}: {'PASS' if res['ok'] else 'FAIL'} in {res['elapsed']:.0f} s")
        if store is not None:
            store.write_text(json.dumps(results, default=str), encoding="utf-8")
    print(section(results, q))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
