#!/usr/bin/env python3
"""Golden outputs of the real rsync for compat/testdata/cases.txt.

    python3 compat/testdata/capture.py            # rewrite golden/*.txt with rsync
    python3 compat/testdata/capture.py --tree DIR # only make the source tree in DIR
    python3 compat/testdata/capture.py --old DIR  # only make the old destination in DIR

Each golden file holds the exit code on its first line, then rsync's
stdout lines sorted (rsync's generator and receiver interleave by timing),
without the lines that depend on protocol overhead or time ("sent ...",
"total size is", "Total bytes sent/received", "File list ..."). The test
`rsync_golden` makes the same trees with this script, runs intersync with
the same arguments and compares.
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_600_000_000

FILES = [
    ("a.txt", 100), ("b.bin", 5000), ("z", 10), ("main.c", 300), ("main.o", 200),
    ("core", 50), ("notes.log", 40), ("src/lib.c", 400), ("src/lib.o", 300),
    ("src/deep/file.c", 120), ("docs/readme.md", 70), ("build/out.bin", 700),
]
DIRS = ["", "src", "src/deep", "docs", "build", "empty"]


def content(i, n):
    # Deterministic bytes without a random generator shared with Rust.
    return bytes((i * 31 + j * 7 + (j >> 8)) & 0xFF for j in range(n))


def make_tree(root):
    for d in DIRS:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for i, (name, n) in enumerate(FILES):
        p = os.path.join(root, name)
        with open(p, "wb") as f:
            f.write(content(i, n))
        os.utime(p, (T0 + i * 60, T0 + i * 60))
    os.symlink("a.txt", os.path.join(root, "link"))
    os.utime(os.path.join(root, "link"), (T0, T0 + 5000), follow_symlinks=False)
    os.chmod(os.path.join(root, "b.bin"), 0o600)
    for d in DIRS:
        p = os.path.join(root, d)
        os.utime(p, (T0 - 1000, T0 - 1000))


def make_old(src, dst):
    subprocess.run(["cp", "-a", src, dst], check=True)
    with open(os.path.join(dst, "a.txt"), "wb") as f:
        f.write(b"short")
    os.utime(os.path.join(dst, "a.txt"), (T0, T0))
    b = os.path.join(dst, "b.bin")
    data = bytearray(open(b, "rb").read())
    data[10] ^= 0xFF
    open(b, "wb").write(bytes(data))
    os.utime(b, (T0 + 60, T0 + 60))
    os.chmod(os.path.join(dst, "z"), 0o666)
    os.remove(os.path.join(dst, "docs/readme.md"))
    for name in ["extra.txt", "gone/inner.txt"]:
        p = os.path.join(dst, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(b"extra")
        os.utime(p, (T0, T0))
    for d in ["", "docs", "gone"]:
        os.utime(os.path.join(dst, d), (T0 - 5, T0 - 5))


def comparable(stdout):
    skip = ("sent ", "total size is", "Total bytes sent", "Total bytes received",
            "File list ", "sending incremental file list")
    lines = sorted({l for l in stdout.splitlines() if l and not l.startswith(skip)})
    return lines


def cases():
    out = []
    for line in open(os.path.join(HERE, "cases.txt")):
        line = line.rstrip("\n")
        if not line or line.startswith("#"):
            continue
        name, args = line.split("|", 1)
        out.append((name, args.split(" ")))
    return out


def run(program, args, base):
    old = any(a.startswith("OLD:") for a in args)
    args = [a.replace("OLD:", "") for a in args]
    make_tree(os.path.join(base, "src"))
    if old:
        make_old(os.path.join(base, "src"), os.path.join(base, "dst"))
    argv = [program] + [a.replace("SRC", "src").replace("DST", "dst") for a in args]
    p = subprocess.run(argv, cwd=base, capture_output=True, text=True)
    return p.returncode, comparable(p.stdout)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--tree":
        make_tree(sys.argv[2])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--old":
        make_old(sys.argv[2], sys.argv[3])
        return
    os.makedirs(os.path.join(HERE, "golden"), exist_ok=True)
    for name, args in cases():
        with tempfile.TemporaryDirectory() as base:
            code, lines = run("rsync", args, base)
        with open(os.path.join(HERE, "golden", name + ".txt"), "w") as f:
            f.write(f"exit {code}\n")
            for l in lines:
                f.write(l + "\n")
        print(f"{name}: exit {code}, {len(lines)} lines")


if __name__ == "__main__":
    main()
