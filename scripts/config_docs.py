"""Write docs/configuration.md from the YAML files under conf/: every key, its default and meaning.

    python scripts/config_docs.py          # rewrite docs/configuration.md
    python scripts/config_docs.py --check  # exit 1 when the file is out of date (the tests do this)

The meaning of a key is the comment on its line in the YAML, so the configs stay the one source.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OUT = ROOT / "docs" / "configuration.md"
LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.]*):(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")

HEADER = """# Configuration reference

Every key of every config file under `conf/`, with its default and meaning, generated from the
YAML files by `python scripts/config_docs.py` (the test suite checks it is current). Set any key
on the command line (`python -m facegen.train trainer.epochs=5`), choose a file of a group with
`group=option` (`data=fer2013`, `model=resnet`, `model/discriminator=resnet`), and see the composed
result of a command with `--cfg job`.
"""


def describe(path: Path) -> list[str]:
    rows, stack, in_defaults = [], [], False
    lines = path.read_text().splitlines()
    doc = [line[1:].strip() for line in lines if line.startswith("#") and "@package" not in line]
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.lstrip().startswith("- "):
            continue
        m = LINE.match(line)
        if not m:
            continue
        depth = len(m["indent"]) // 2
        stack = stack[:depth] + [m["key"]]
        if depth == 0:
            in_defaults = m["key"] == "defaults"
        if in_defaults:
            continue
        value = m["value"].strip()
        if value == "" and not m["comment"]:
            continue  # a section header
        key = ".".join(stack)
        rows.append(f"| `{key}` | `{value}` | {(m['comment'] or '').replace('|', '/')} |")
    out = []
    if doc:
        out.append(" ".join(doc))
        out.append("")
    if rows:
        out += ["| key | default | meaning |", "| --- | --- | --- |", *rows]
    return out


def render() -> str:
    parts = [HEADER]
    files = sorted(CONF.rglob("*.yaml"), key=lambda p: (len(p.relative_to(CONF).parts), str(p)))
    for path in files:
        rel = path.relative_to(CONF)
        if rel.parts[0] == "local":
            continue
        body = describe(path)
        group = "/".join(rel.parts[:-1])
        title = f"`{group}={rel.stem}`" if group else f"`{rel.name}`"
        parts.append(f"## {title} ({rel})\n")
        parts.append("\n".join(body) + "\n" if body else "(selects other files only)\n")
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/config_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
