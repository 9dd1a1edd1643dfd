"""Puts a generated section into bench/RESULTS.md: `record(section)` replaces the section with the
same `## ` title (up to the next `## ` heading), or appends it when there is none yet. The bench
scripts' Python steps import it (run from the repository root)."""
import pathlib
import re
import sys


def record(section, path="bench/RESULTS.md"):
    title = section.split("\n", 1)[0]
    p = pathlib.Path(path)
    text = p.read_text()
    pattern = re.compile(re.escape(title) + r"\n.*?(?=\n## |\Z)", re.S)
    body = section.rstrip("\n") + "\n"
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    p.write_text(text)
    print(f"\nbench: recorded in {path}", file=sys.stderr)
