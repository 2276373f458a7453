"""No file is ever lost or half-written (engine/files.py): kill -9 during saves, many writers
into one folder, symlinks, modes, a full disk, and PNGs Loom can read back. The long version
of the kill checks is tools/reliability/kill_saves.py."""

from __future__ import annotations

import errno
import json
import os
import random
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from engine import files
from engine import workflow as wf
from engine.errors import WorkflowError
from engine.files import FileWriteError, clean_stale_temp_files, write_numbered
from engine.node import RunContext
from tools.reliability import kill_saves as ks

ROOT = Path(__file__).resolve().parent.parent


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _ctx(out: Path, **options) -> RunContext:
    return RunContext("save", "text.save", {"output_dir": str(out), **options},
                      lambda *a: None, lambda: False)


def _save_text(out: Path, value: str, prefix: str = "t") -> Path:
    from nodes.primitives import SaveTextNode

    node = SaveTextNode()
    node.value, node.prefix = value, prefix
    ctx = _ctx(out)
    node.run(ctx)
    return Path(ctx.ui["files"][0])


# kill -9 -----------------------------------------------------------------------------------------


def test_kill_9_during_image_saves_leaves_no_partial_png(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    decoys = {".kill_00001.png.x1y2.tmp": b"an old-style temp: not Loom's naming today",
              ".loom-tmp-notapid-name": b"not Loom's pattern",
              "notes.txt": b"the user's"}
    for name, data in decoys.items():
        (out / name).write_bytes(data)
    r = ks.kill_loop("images", out, kills=24, rng=random.Random(1))
    assert r["partial"] == [] and r["finals"] > 0
    assert sorted(r["others"]) == sorted(n for n in decoys if not n.startswith(".loom-tmp-"))
    assert r["mid_write"] >= 1  # the kills did land while a file was being written
    # (each new writer cleans the folder first, so only the last kill's temp file may be left:
    # plant one more as a killed writer leaves it, for the next start to find)
    (out / f".loom-tmp-{_dead_pid()}-0123abcd-kill_00999.png").write_bytes(b"\x89PNG")
    start = ks.next_start(out, tmp_path)
    assert start.returncode == 2, start.stderr  # the workflow does not exist: start-up only
    assert ks.temp_files(out) == [out / ".loom-tmp-notapid-name"]  # not Loom's: kept
    for name, data in decoys.items():
        assert (out / name).read_bytes() == data


def test_kill_9_during_workflow_saves_keeps_a_whole_workflow(tmp_path) -> None:
    folder = tmp_path / "wfs"
    r = ks.kill_loop("workflows", folder, kills=24, rng=random.Random(2))
    assert r["partial"] == [] and r["others"] == []
    assert r["mid_write"] >= 1
    (folder / f".loom-tmp-{_dead_pid()}-0123abcd-wf.json").write_text('{"sche')
    start = ks.next_start(tmp_path / "out", folder)
    assert start.returncode == 2, start.stderr
    assert ks.temp_files(folder) == []
    assert ks.check_workflow(folder / ks.WORKFLOW) is None


# many writers --------------------------------------------------------------------------------


def test_24_processes_and_24_threads_save_into_one_folder(tmp_path) -> None:
    r = ks.concurrent_writers(tmp_path / "many", 24)
    assert r["wrong"] == []
    assert r["texts"] == r["reported_texts"] == 48
    assert r["pngs"] == r["reported_pngs"] == 48
    assert r["temps"] == 0


def test_24_threads_run_save_image(tmp_path) -> None:
    import torch
    from PIL import Image

    from nodes.image import SaveImageNode

    out, results, errors = tmp_path / "out", [], []
    barrier = threading.Barrier(24)

    def one(i: int) -> None:
        try:
            node = SaveImageNode()
            node.images = torch.full((2, 3, 8, 8), i / 255.0)  # two images each
            node.prefix = "img"
            ctx = _ctx(out, workflow_json=json.dumps({"schema_version": 1, "nodes": {},
                                                      "ui": {"writer": i}}))
            barrier.wait()
            node.run(ctx)
            results.append((i, ctx.ui["files"]))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    reported = [f for _i, fs in results for f in fs]
    assert len(set(reported)) == 48 == len(list(out.glob("img_*.png")))
    for i, fs in results:
        for f in fs:
            assert Image.open(f).getpixel((0, 0)) == (i, i, i)
            assert wf.read_document(f)["ui"]["writer"] == i
    assert ks.temp_files(out) == []


@pytest.mark.parametrize("without", ["link", "link+noreplace"])
def test_fallbacks_without_hard_links_are_still_atomic(tmp_path, monkeypatch, without) -> None:
    def no_link(src, dst):
        raise PermissionError(errno.EPERM, "Operation not permitted")  # as on FAT / exFAT

    monkeypatch.setattr(files, "_link", no_link)
    if without == "link+noreplace":
        monkeypatch.setattr(files, "_rename_noreplace", lambda src, dst: False)
    monkeypatch.setattr(files, "next_number", lambda *a: 1)  # every writer races for _00001
    target = tmp_path / "target.txt"
    target.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(target, out / "f_00002.txt")
    paths: list[Path] = []

    def one(i: int) -> None:
        paths.append(write_numbered(out, "f", ".txt", f"writer {i}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(paths)) == 24
    assert sorted(p.read_text() for p in paths) == sorted(f"writer {i}" for i in range(24))
    assert out / "f_00002.txt" not in paths and target.read_text() == "keep"
    assert len(list(out.iterdir())) == 25 and ks.temp_files(out) == []


# symlinks --------------------------------------------------------------------------------------


def test_a_symlink_under_a_numbered_name_is_skipped_never_written_through(tmp_path,
                                                                         monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    os.symlink(target, out / "t_00001.txt")
    os.symlink(tmp_path / "nowhere", out / "t_00002.txt")  # dangling: taken all the same
    monkeypatch.setattr(files, "next_number", lambda *a: 1)  # as if the scan missed them
    path = _save_text(out, "hello")
    assert path.name == "t_00003.txt" and path.read_text() == "hello\n"
    assert target.read_text() == "precious" and not (tmp_path / "nowhere").exists()
    assert (out / "t_00001.txt").is_symlink() and (out / "t_00002.txt").is_symlink()
    monkeypatch.undo()
    assert _save_text(out, "again").name == "t_00004.txt"  # numbered after the links


def test_a_workflow_saved_through_a_symlink_updates_the_target(tmp_path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "wf.json").write_text('{"schema_version": 1, "nodes": {}}')
    os.chmod(real / "wf.json", 0o640)
    link = tmp_path / "wf.json"
    os.symlink("real/wf.json", link)  # relative, as users make them
    wf.atomic_write_text(link, '{"schema_version": 1, "nodes": {}, "ui": {"new": 1}}')
    assert link.is_symlink() and os.readlink(link) == "real/wf.json"
    assert wf.read_document(real / "wf.json")["ui"] == {"new": 1}
    assert stat.S_IMODE((real / "wf.json").stat().st_mode) == 0o640
    assert sorted(p.name for p in real.iterdir()) == ["wf.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "wf.json"]


# modes -------------------------------------------------------------------------------------------

MODES_CHILD = textwrap.dedent("""
    import json, os, sys
    os.umask(int(sys.argv[2], 8))
    from pathlib import Path
    import numpy as np
    from engine.files import write_numbered
    from engine.node import RunContext
    from engine.workflow import atomic_write_text
    from nodes.lib.png import encode_png
    from nodes.primitives import SaveTextNode
    out = Path(sys.argv[1])
    node = SaveTextNode()
    node.value, node.prefix = "x", "m"
    ctx = RunContext("s", "text.save", {"output_dir": str(out)}, lambda *a: None, lambda: False)
    node.run(ctx)
    png = write_numbered(out, "m", ".png", encode_png(np.zeros((4, 4, 3), np.uint8), {}))
    atomic_write_text(out / "new.json", "{}")
    (out / "old.json").write_text("{}")
    os.chmod(out / "old.json", 0o604)
    atomic_write_text(out / "old.json", "{}")
    mode = lambda p: oct(os.stat(p).st_mode & 0o777)
    print(json.dumps({"txt": mode(ctx.ui["files"][0]), "png": mode(png),
                      "new": mode(out / "new.json"), "old": mode(out / "old.json")}))
""")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_get_0666_less_the_umask_replaced_ones_keep_their_mode(tmp_path,
                                                                        umask) -> None:
    r = subprocess.run([sys.executable, "-c", MODES_CHILD, str(tmp_path), oct(umask)],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    want = oct(0o666 & ~umask)
    assert json.loads(r.stdout) == {"txt": want, "png": want, "new": want, "old": oct(0o604)}


# a full disk -------------------------------------------------------------------------------------

FULL_CHILD = textwrap.dedent("""
    import json, os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that write() fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    from engine.files import FileWriteError, write_numbered
    from engine.workflow import atomic_write_text
    out = sys.argv[1]
    seen = []
    for what in ("numbered", "workflow"):
        try:
            if what == "numbered":
                write_numbered(out, "big", ".png", b"x" * 1_000_000)
            else:
                atomic_write_text(os.path.join(out, "wf.json"), "y" * 1_000_000)
            seen.append([what, None, None])
        except FileWriteError as exc:
            seen.append([what, exc.errno, str(exc)])
    print(json.dumps(seen))
""")


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="POSIX only")
def test_a_write_that_fails_midway_leaves_nothing_and_says_which_file(tmp_path) -> None:
    (tmp_path / "wf.json").write_text('{"old": true}')
    r = subprocess.run([sys.executable, "-c", FULL_CHILD, str(tmp_path)], cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (what1, code1, msg1), (what2, code2, msg2) = json.loads(r.stdout)
    assert code1 == errno.EFBIG and code2 == errno.EFBIG
    assert f"could not write {tmp_path / 'big_00001.png'}" in msg1
    assert "nothing was written under that name" in msg1 and "file-size limit" in msg1
    assert f"could not write {tmp_path / 'wf.json'}" in msg2
    assert "the old file is unchanged" in msg2
    assert sorted(os.listdir(tmp_path)) == ["wf.json"]  # no big_*.png, no temp file
    assert (tmp_path / "wf.json").read_text() == '{"old": true}'


def test_a_failing_write_in_process_is_a_loom_error_and_an_oserror(tmp_path,
                                                                    monkeypatch) -> None:
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(FileWriteError, match="disk is full") as info:
        write_numbered(tmp_path, "t", ".txt", "some text")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


# PNGs Loom can read back ----------------------------------------------------------------------


def test_save_image_embeds_a_workflow_only_when_the_png_can_be_reopened(tmp_path,
                                                                        monkeypatch) -> None:
    import torch

    from nodes.image import SaveImageNode

    limit = 40_000
    monkeypatch.setattr(wf, "MAX_FILE_BYTES", limit)  # read by the node and by the reader
    out = tmp_path / "out"
    node = SaveImageNode()
    node.images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    node.prefix = "p"
    small = json.dumps({"schema_version": 1, "nodes": {}, "ui": {"n": "x" * 1000}})
    ctx = _ctx(out, workflow_json=small)
    node.run(ctx)
    assert "warnings" not in ctx.ui
    ok = Path(ctx.ui["files"][0])
    assert ok.stat().st_size <= limit and wf.read_document(ok)["ui"]["n"] == "x" * 1000

    big = json.dumps({"schema_version": 1, "nodes": {}, "ui": {"n": "y" * 39_000}})
    assert len(big) < limit  # a workflow that opens as a .json ...
    ctx = _ctx(out, workflow_json=big)
    node.run(ctx)
    dropped = Path(ctx.ui["files"][0])  # ... but would not fit into a PNG that reopens
    assert dropped.stat().st_size <= limit
    assert "workflow" not in wf.png_text_chunks(dropped.read_bytes())
    [warning] = ctx.ui["warnings"]
    assert dropped.name in warning and "without its workflow" in warning
    with pytest.raises(WorkflowError, match="carries no Loom workflow"):
        wf.read_document(dropped)


def test_compressed_text_chunks_share_one_budget(monkeypatch) -> None:
    from tests.support.png import png_bytes, ztext

    monkeypatch.setattr(wf, "MAX_FILE_BYTES", 10_000)
    fits = png_bytes([ztext("a", "x" * 4000), ztext("workflow", "y" * 4000)])
    assert wf.png_text_chunks(fits)["workflow"] == "y" * 4000
    many = png_bytes([ztext(f"k{i}", "z" * 4000) for i in range(3)])  # each fits, not all
    with pytest.raises(WorkflowError, match="decompress to more than"):
        wf.png_text_chunks(many)


# stale temp files ------------------------------------------------------------------------------


def test_only_loom_temp_files_of_dead_writers_are_removed(tmp_path) -> None:
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            f".loom-tmp-{dead}-0123abcd-a.png": True,      # writer gone
            f".loom-tmp-{live.pid}-0123abcd-b.png": False,  # writer alive
            f".loom-tmp-{os.getpid()}-0123abcd-c.png": False,  # this process, writing
            f".loom-tmp-{live.pid}-89abcdef-old.png": True,  # alive but hours old
            ".loom-tmp-x-0123abcd-d.png": False,            # not Loom's pattern
            f".loom-tmp-{dead}-0123abc-e.png": False,        # not Loom's pattern
            f"loom-tmp-{dead}-0123abcd-f.png": False,
            "a_00001.png": False,
        }
        for name in names:
            (tmp_path / name).write_bytes(b"x")
        old = time.time() - files.STALE_AFTER_S - 60
        os.utime(tmp_path / f".loom-tmp-{live.pid}-89abcdef-old.png", (old, old))
        os.symlink(tmp_path / "a_00001.png", tmp_path / f".loom-tmp-{dead}-0123abcd-link")
        removed = clean_stale_temp_files(tmp_path)
        assert sorted(p.name for p in removed) == sorted(n for n, gone in names.items() if gone)
        left = set(os.listdir(tmp_path))
        assert left == {n for n, gone in names.items() if not gone} | {
            f".loom-tmp-{dead}-0123abcd-link"}
    finally:
        live.kill()
        live.wait()


def test_writing_into_a_folder_cleans_it_and_the_editor_start_does_too(tmp_path,
                                                                        monkeypatch) -> None:
    dead = _dead_pid()
    out, wfs, rec = tmp_path / "out", tmp_path / "wfs", tmp_path / "recovery"
    for d in (out, wfs, rec):
        d.mkdir()
        (d / f".loom-tmp-{dead}-0123abcd-x").write_bytes(b"left by a killed Loom")
    write_numbered(out, "n", ".txt", "x")  # a numbered write cleans its folder
    assert ks.temp_files(out) == []

    from editor.app import clean_stale_temp_files as clean_at_start

    class Window:
        output_dir = out

        def recent_files(self):
            return [str(wfs / "recent.json")]

    monkeypatch.setenv("LOOM_RECOVERY_DIR", str(rec))
    clean_at_start(Window(), None)
    assert ks.temp_files(wfs) == [] and ks.temp_files(rec) == []


def test_temp_names_are_recognisable_and_fit_in_a_file_name() -> None:
    name = files.temp_name("é" * 200 + ".png")
    assert name.startswith(f".loom-tmp-{os.getpid()}-") and files.is_temp_name(name)
    assert len(os.fsencode(name)) <= 255
    assert files.check_prefix(".loom-tmp-1-0123abcd-") is not None
    with pytest.raises(ValueError, match="must not contain"):
        write_numbered("/nonexistent", "../up", ".txt", "x")
