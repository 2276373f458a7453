"""The commands README.md marks for scripts, extracted verbatim (the one rule `.ci/run` and
tests/test_readme.py share).

A marked command is an HTML comment line `<!-- ci:NAME -->` (invisible when the README is
rendered) followed, after optional blank lines, by exactly one line indented by four spaces
(a Markdown code block): that line, without its indentation, is the command. Each name is
marked once.

    python3 tools/readme_commands.py setup     # prints the setup command
    python3 tools/readme_commands.py --list    # the marked names

Standard library only: `.ci/run` calls it before any virtual environment exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"^<!--\s*ci:([A-Za-z0-9_-]+)\s*-->\s*$")
INDENT = "    "


class ReadmeCommandError(ValueError):
    """The README's markers do not follow the rule."""


def commands(text: str) -> dict[str, str]:
    """Every marked command in `text` (a README), by name."""
    lines = text.splitlines()
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = MARKER.match(line.strip())
        if not m:
            continue
        name = m.group(1)
        if name in found:
            raise ReadmeCommandError(f"README line {i + 1}: ci:{name} is marked twice")
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or not lines[j].startswith(INDENT) or not lines[j].strip():
            raise ReadmeCommandError(
                f"README line {i + 1}: ci:{name} is not followed by a line indented by four "
                "spaces")
        if j + 1 < len(lines) and lines[j + 1].strip():
            raise ReadmeCommandError(
                f"README line {j + 2}: ci:{name}'s command must be one line followed by a "
                "blank line")
        found[name] = lines[j][len(INDENT):].rstrip()
    return found


def command(name: str, path: Path = README) -> str:
    """The README command marked `ci:NAME`."""
    found = commands(path.read_text(encoding="utf-8"))
    if name not in found:
        raise ReadmeCommandError(f"{path.name} marks no command ci:{name} "
                                 f"(marked: {', '.join(sorted(found)) or 'none'})")
    return found[name]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: readme_commands.py NAME | --list", file=sys.stderr)
        return 2
    try:
        if argv[0] == "--list":
            print("\n".join(commands(README.read_text(encoding="utf-8"))))
        else:
            print(command(argv[0]))
    except ReadmeCommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
