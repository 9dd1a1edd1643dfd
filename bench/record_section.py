"""Shared by the bench scripts' Python steps (run from the repository root, with `bench` on
`sys.path`): `machine()` describes this machine for a results table, and `record(section)` puts a
generated section into bench/RESULTS.md, replacing the section with the same `## ` title (up to
the next `## ` heading) or appending it when there is none yet."""
import os
import pathlib
import re
import sys


def machine():
    """`2 vCPU AMD EPYC, 23 GiB`: cores, CPU model (without its core count), memory."""
    model = "unknown CPU"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = re.sub(r" \d+-Core Processor", "", line.split(":", 1)[1].strip())
            break
    mem_kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    return f"{os.cpu_count()} vCPU {model}, {mem_kb // (1024 * 1024)} GiB"


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
