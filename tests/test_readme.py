"""README.md's marked commands (what `.ci/run` runs verbatim, extracted by the same rule in
tools/readme_commands.py) say what they should, and the setup command's main job works: run
from the repository root with only `--out` redirected, it writes four 64x64 PNGs."""

from __future__ import annotations

import os
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tools import readme_commands
from tools.readme_commands import ReadmeCommandError, commands

ROOT = Path(__file__).resolve().parent.parent
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def segments(command: str) -> list[list[str]]:
    """A `a && b && c` command line as the argument lists of a, b and c (shell quoting
    undone); anything but a plain && chain is refused."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token == "&&":
            parts.append([])
        elif token and set(token) <= set("();<>|&"):
            raise AssertionError(f"unexpected shell operator {token!r} in {command!r}")
        else:
            parts[-1].append(token)
    assert all(parts), f"empty command in {command!r}"
    return parts


def _is_pip_install(argv: list[str]) -> bool:
    return argv[:2] == ["pip", "install"] or argv[1:4] == ["-m", "pip", "install"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is no PNG"
    return struct.unpack(">II", data[16:24])


# --- the extraction rule ----------------------------------------------------------------------


def test_readme_marks_setup_extras_and_test() -> None:
    found = commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert set(found) == {"setup", "extras", "test"}
    assert found["setup"] == readme_commands.command("setup")


def test_extraction_rule() -> None:
    text = "intro\n\n<!-- ci:a -->\n    echo 'a b' && true\n\n<!-- ci:b -->\n\n    echo b\n"
    assert commands(text) == {"a": "echo 'a b' && true", "b": "echo b"}
    assert commands("`<!-- ci:x -->` in prose\n") == {}
    with pytest.raises(ReadmeCommandError, match="marked twice"):
        commands("<!-- ci:a -->\n    x\n\n<!-- ci:a -->\n    y\n")
    with pytest.raises(ReadmeCommandError, match="indented"):
        commands("<!-- ci:a -->\nnot indented\n")
    with pytest.raises(ReadmeCommandError, match="one line"):
        commands("<!-- ci:a -->\n    x\n    y\n")
    with pytest.raises(ReadmeCommandError, match="marks no command"):
        readme_commands.command("no-such-command")


def test_ci_script_takes_the_commands_from_the_readme() -> None:
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    script = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    for name in ("setup", "extras", "test"):
        assert f"readme_commands.py {name}" in script
    # ... and does not carry its own copy of them
    assert "torch==2.13.0" not in script and "pytest -q" not in script
    assert "python3 -m venv" in script and "mktemp -d" in script


# --- the setup command --------------------------------------------------------------------------


def test_setup_installs_pinned_torch_first_and_ends_with_the_main_job() -> None:
    parts = segments(readme_commands.command("setup"))
    assert parts[0] == ["pip", "install", "torch==2.13.0"]  # before anything else
    assert not any("torch" in arg for argv in parts[1:] for arg in argv)
    assert ["pip", "install", "-r", "requirements-dev.txt"] in parts  # the test command's pytest
    assert parts[-1][:3] == ["python", "main.py", "run"]
    assert all(_is_pip_install(argv) for argv in parts[:-1])


def _with_out(argv: list[str], out: Path) -> list[str]:
    """`argv` with its --out value replaced by `out`."""
    result, i, seen = [], 0, False
    while i < len(argv):
        if argv[i] == "--out":
            result += ["--out", str(out)]
            i += 2
            seen = True
            continue
        if argv[i].startswith("--out="):
            result.append(f"--out={out}")
            seen = True
        else:
            result.append(argv[i])
        i += 1
    assert seen, f"no --out in {argv}"
    return result


def test_with_out() -> None:
    out = Path("/x/y")
    assert _with_out(["run", "--out", "out/", "-v"], out) == ["run", "--out", "/x/y", "-v"]
    assert _with_out(["run", "--out=out/"], out) == ["run", "--out=/x/y"]


def test_setup_main_job_writes_four_64px_pngs(tmp_path) -> None:
    parts = segments(readme_commands.command("setup"))
    jobs = parts[max(i for i, argv in enumerate(parts) if _is_pip_install(argv)) + 1:]
    assert len(jobs) == 1 and jobs[0][0] == "python", jobs
    out = tmp_path / "out"
    argv = [sys.executable, *_with_out(jobs[0], out)[1:]]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = [Path(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(printed) == 4, proc.stdout
    assert sorted(out.iterdir()) == sorted(printed)  # written where --out says, nothing else
    for path in printed:
        assert path.suffix == ".png"
        assert png_size(path) == (64, 64)


# --- the test command ---------------------------------------------------------------------------


def test_test_command_is_pytest_offscreen_and_offline() -> None:
    (argv,) = segments(readme_commands.command("test"))
    env = [a for a in argv if ENV_ASSIGNMENT.match(a)]
    rest = argv[len(env):]
    assert argv[:len(env)] == env  # the assignments lead
    assert dict(a.split("=", 1) for a in env) == {"QT_QPA_PLATFORM": "offscreen",
                                                  "HF_HUB_OFFLINE": "1"}
    assert rest[:3] == ["python", "-m", "pytest"]


def test_extras_install_the_open_clip_cross_check() -> None:
    parts = segments(readme_commands.command("extras"))
    assert parts == [["pip", "install", "--no-deps", "open_clip_torch==3.3.0"],
                     ["pip", "install", "ftfy"]]
