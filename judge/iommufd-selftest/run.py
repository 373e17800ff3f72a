#!/usr/bin/env python3
"""Runs Linux 7.3's own iommufd selftest, unmodified, against iommu-rs.

Linux's tools/testing/selftests/iommu/iommufd.c and iommufd_fail_nth.c
are built with gcc from Debian's linux-source-7.3 package (fetched with a
private apt configuration made from this machine's own sources file, its
suite changed to the next release's backports) and run with the
project's preload library (crates/iommufd-preload), which serves
/dev/iommu inside the process.

Every case must either pass or be listed, with its reason, in
known-failures.txt beside this file. A case that fails and is not listed
fails the run (a regression, or a new case); a listed case that passes is
reported so the list can shrink (--update rewrites it, keeping reasons).

    run.py [--src DIR] [--preload SO] [--out DIR] [--update]

--src: an extracted linux-source-7.3 tree (default: fetched into
target/linux-7.3); --preload: the library (default: built with cargo
into target/release); --out: where the programs and logs go (default
target/iommufd-selftest). Nothing of the kernel is kept in the repository.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PACKAGE = "linux-source-7.3"
SUITE = "trixie-backports"
# What the selftest needs of the tree: its sources, the harness, the
# tools headers, the uapi headers and the selftest's own mock header.
PATHS = [
    "tools/testing/selftests/iommu",
    "tools/testing/selftests/kselftest.h",
    "tools/testing/selftests/kselftest_harness.h",
    "tools/include",
    "include/uapi",
    "arch/x86/include/uapi",
    "drivers/iommu/iommufd/iommufd_test.h",
]
PROGRAMS = ["iommufd", "iommufd_fail_nth"]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def fetch(dest: Path) -> Path:
    """Downloads and extracts the parts of linux-source-7.3 the selftest
    needs into dest; returns the tree."""
    tree = dest / "tree"
    if (tree / "tools/testing/selftests/iommu/iommufd.c").exists():
        return tree
    apt = dest / "apt"
    parts = apt / "sources"
    for d in (parts, apt / "lists/partial", apt / "cache/archives/partial", dest / "deb"):
        d.mkdir(parents=True, exist_ok=True)
    # The machine's own main stanza, its suite changed.
    src = Path("/etc/apt/sources.list.d/debian.sources").read_text()
    stanza = next(
        s for s in re.split(r"\n\s*\n", src)
        if re.search(r"^Suites:.*\bbookworm\b", s, re.M) and "security" not in s
    )
    stanza = re.sub(r"^Suites:.*$", f"Suites: {SUITE}", stanza, flags=re.M)
    (parts / "next.sources").write_text(stanza + "\n")
    opts = [
        "-o", "Dir::Etc::sourcelist=/dev/null",
        "-o", f"Dir::Etc::sourceparts={parts}",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        "-o", "Debug::NoLocking=1",
        # The download lands in a folder of ours, not apt's own.
        "-o", "APT::Sandbox::User=root",
    ]
    sh(["apt-get", *opts, "update", "-qq"])
    sh(["apt-get", *opts, "download", "-qq", PACKAGE], cwd=dest / "deb")
    deb = next((dest / "deb").glob(f"{PACKAGE}_*.deb"))
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        tar = Path(tmp) / "src.tar.xz"
        with open(tar, "wb") as out:
            p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
            p2 = subprocess.Popen(
                ["tar", "-xO", f"./usr/src/{PACKAGE}.tar.xz"], stdin=p1.stdout, stdout=out
            )
            p1.stdout.close()
            if p2.wait() != 0 or p1.wait() != 0:
                sys.exit("could not unpack the source package")
        part = dest / "tree.part"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        sh(["tar", "-xJf", str(tar), "-C", str(part), "--strip-components=1",
            *[f"{PACKAGE}/{p}" for p in PATHS]])
        part.rename(tree)
    shutil.rmtree(dest / "deb")
    return tree


def build(tree: Path, out: Path):
    src = tree / "tools/testing/selftests/iommu"
    flags = [
        "-Wall", "-O2", "-Wno-unused-function", "-D_GNU_SOURCE",
        "-isystem", str(tree / "include/uapi"),
        "-isystem", str(tree / "arch/x86/include/uapi"),
        "-I", str(tree / "tools/include"),
        "-I", str(tree / "tools/testing/selftests"),
    ]
    for prog in PROGRAMS:
        r = subprocess.run(["gcc", *flags, str(src / f"{prog}.c"), "-o", str(out / prog), "-lcap"],
                           capture_output=True, text=True)
        # The kernel's headers redefine a few macros the C library's
        # define: warnings only, shown when the build fails.
        if r.returncode != 0:
            sys.exit(f"gcc failed for {prog}:\n{r.stderr}")


def run(out: Path, preload: Path, prog: str) -> dict:
    """Runs one program; returns {case: 'pass' | 'skip' | 'fail'}."""
    env = dict(os.environ, LD_PRELOAD=str(preload))
    log = out / f"{prog}.log"
    with open(log, "w") as f:
        try:
            subprocess.run([str(out / prog)], env=env, stdout=f, stderr=subprocess.STDOUT,
                           timeout=1200, cwd=out)
        except subprocess.TimeoutExpired:
            print(f"{prog}: timed out; see {log}")
    results = {}
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"^(not ok|ok) \d+ (\S+)(.*)$", line)
        if not m:
            continue
        ok, case, rest = m.groups()
        name = f"{prog}:{case}"
        if ok == "ok":
            results[name] = "skip" if "# SKIP" in rest else "pass"
        else:
            results[name] = "fail"
    return results


# The dirty-tracking cases' *_huge variants map 128 MiB of hugetlbfs
# pages (MAP_HUGETLB): 2 MiB pages reserved for the run where the machine
# lets us, as a test machine for the kernel's selftest is configured.
HUGEPAGES = 80


# The cases that map hugetlbfs pages (MAP_HUGETLB): without those pages
# they fail for the machine's sake, not ours.
HUGE_CASES = re.compile(r"_huge\.|hugepage|access_domain_destory|huge_map")


class hugepages:
    """Raises vm.nr_hugepages to at least n for the block, then puts it back;
    `ok` says whether that many are there."""

    PATH = Path("/proc/sys/vm/nr_hugepages")

    def __init__(self, n):
        self.n = n
        self.old = None
        self.ok = False

    def __enter__(self):
        try:
            old = int(self.PATH.read_text())
            if old < self.n:
                self.PATH.write_text(str(self.n))
                self.old = old
            self.ok = int(self.PATH.read_text()) >= self.n
        except (OSError, ValueError) as e:
            print(f"hugetlbfs pages not reserved ({e})")
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            try:
                self.PATH.write_text(str(self.old))
            except OSError:
                pass


def read_known(path: Path) -> dict:
    known = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            case, _, reason = line.partition(" ")
            known[case] = reason.strip()
    return known


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path)
    ap.add_argument("--preload", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "target/iommufd-selftest")
    ap.add_argument("--update", action="store_true", help="rewrite known-failures.txt")
    args = ap.parse_args()

    tree = args.src or fetch(REPO / "target/linux-7.3")
    preload = args.preload
    if preload is None:
        sh(["cargo", "build", "--quiet", "--release", "-p", "iommufd-preload"], cwd=REPO)
        preload = REPO / "target/release/libiommufd_preload.so"
    args.out.mkdir(parents=True, exist_ok=True)
    build(tree, args.out)

    results = {}
    with hugepages(HUGEPAGES) as huge:
        for prog in PROGRAMS:
            results.update(run(args.out, preload.resolve(), prog))
    if not huge.ok:
        # Not our failures: the machine gives no hugetlbfs pages.
        short = sorted(c for c, v in results.items() if v == "fail" and HUGE_CASES.search(c))
        if short:
            print(f"{len(short)} cases need {HUGEPAGES} hugetlbfs pages, which this machine does "
                  "not give (run as root, or raise vm.nr_hugepages); not counted:")
            for c in short:
                print(f"  {c}")
                results[c] = "skip"
    known_path = HERE / "known-failures.txt"
    known = read_known(known_path)

    counts = {k: sum(1 for v in results.values() if v == k) for k in ("pass", "skip", "fail")}
    for prog in PROGRAMS:
        sub = {k: v for k, v in results.items() if k.startswith(prog + ":")}
        n = {k: sum(1 for v in sub.values() if v == k) for k in ("pass", "skip", "fail")}
        print(f"{prog}: {len(sub)} cases, {n['pass']} passed, {n['skip']} skipped, {n['fail']} failed")
    regressions = sorted(c for c, v in results.items() if v == "fail" and c not in known)
    fixed = sorted(c for c, v in results.items() if v != "fail" and c in known)
    missing = sorted(c for c in known if c not in results)
    if fixed:
        print(f"{len(fixed)} listed cases now pass (remove them from known-failures.txt):")
        for c in fixed:
            print(f"  {c}")
    if missing:
        print(f"{len(missing)} listed cases no longer exist: {' '.join(missing)}")
    if args.update:
        lines = [l for l in known_path.read_text().splitlines() if l.startswith("#")] if known_path.exists() else []
        for c in sorted(c for c, v in results.items() if v == "fail"):
            lines.append(f"{c} {known.get(c, 'TODO: reason')}")
        known_path.write_text("\n".join(lines) + "\n")
        print(f"wrote {known_path}")
        return 0
    if regressions:
        print(f"{len(regressions)} cases fail that are not listed in known-failures.txt:")
        for c in regressions:
            print(f"  {c}")
        print(f"logs: {args.out}")
        return 1
    print(f"selftest: {counts['pass']} of {len(results)} cases pass, {counts['skip']} skipped, "
          f"{counts['fail']} listed as not passing yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
