#!/usr/bin/env python3
"""The real Linux kernel as the judge of the group prediction.

Boots Debian's Linux 6.12 under QEMU (TCG) on PCI machines QEMU can build,
collects what the kernel built (`lspci -vvvnn`, `lspci -xxxx`, every
/sys/kernel/iommu_groups entry with its `type` and `reserved_regions`, the
bound drivers), and keeps each run as a directory of small text files that
`cargo nextest run -p iommu-cli --test kernel_judge` compares with the
prediction. See README.md beside this file.

    judge.py setup                      kernel, modules and initramfs, cached
    judge.py gen --seed S               a random machine (JSON) on stdout
    judge.py run SPEC.json --out DIR    boot one machine, write DIR/*
    judge.py many --count N [--seed S] --out DIR
                                        generate and boot N machines, then
                                        compare all of them
"""

import argparse
import gzip
import json
import lzma
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("JUDGE_CACHE", REPO / "target" / "linux-groups"))
KERNEL_PACKAGE = os.environ.get("JUDGE_KERNEL_PACKAGE", "")
# Modules the guests may need, loaded in dependency order when present:
# the virtio-iommu, and igb (with what it needs) for SR-IOV.
MODULES = ["virtio-iommu", "igb"]
SECTIONS = ["cmdline", "kernel", "lspci-vvvnn", "lspci-xxxx", "iommu-groups", "drivers", "acpi-viot",
            "acpi-dmar", "acpi-ivrs"]
BOOT_TIMEOUT = int(os.environ.get("JUDGE_TIMEOUT", "120"))


def log(msg):
    print(f"judge: {msg}", file=sys.stderr, flush=True)


# ---- setup: the kernel, its modules, and the initramfs ---------------------


def private_apt(suite):
    """apt options for a private configuration holding only `suite`, made
    from the machine's own sources file (the system's sources stay as they
    are)."""
    apt = CACHE / "apt"
    shutil.rmtree(apt, ignore_errors=True)
    (apt / "sources").mkdir(parents=True)
    (apt / "lists" / "partial").mkdir(parents=True)
    (apt / "cache").mkdir(parents=True)
    src = Path("/etc/apt/sources.list.d/debian.sources").read_text()
    stanza = next(
        s for s in src.split("\n\n") if re.search(r"^Suites:.*\bbookworm\b", s, re.M)
    )
    stanza = re.sub(r"^Suites:.*$", f"Suites: {suite}", stanza, flags=re.M)
    (apt / "sources" / "judge.sources").write_text(stanza + "\n")
    opts = [
        "-o", "Dir::Etc::sourcelist=/dev/null",
        "-o", f"Dir::Etc::sourceparts={apt / 'sources'}",
        "-o", f"Dir::State::Lists={apt / 'lists'}",
        "-o", f"Dir::Cache={apt / 'cache'}",
        "-o", "Debug::NoLocking=1",
    ]
    subprocess.run(["apt-get", *opts, "update"], check=True, capture_output=True)
    return opts


def fetch_kernel():
    """Debian's newest Linux 6.12 image (bookworm-backports), unpacked
    under the cache."""
    root = CACHE / "kernel"
    if list(root.glob("boot/vmlinuz-*")):
        return root
    opts = private_apt("bookworm-backports")
    pkg = KERNEL_PACKAGE
    if not pkg:
        found = subprocess.run(
            ["apt-cache", *opts, "search", "--names-only", r"^linux-image-6\.12\..*-amd64-unsigned$"],
            check=True, capture_output=True, text=True,
        ).stdout
        names = [l.split()[0] for l in found.splitlines() if "cloud" not in l and "-rt-" not in l]
        if not names:
            sys.exit("judge: no linux-image-6.12 amd64 package in bookworm-backports")
        key = lambda n: [int(x) for x in re.findall(r"\d+", n)]
        pkg = max(names, key=key)
    log(f"fetching {pkg}")
    deb = CACHE / "deb"
    deb.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", *opts, "download", pkg], cwd=deb, check=True, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(next(deb.glob(f"{pkg}_*.deb"))), str(root)], check=True)
    return root


def read_module(ko):
    """A module's bytes, decompressed."""
    data = ko.read_bytes()
    if ko.name.endswith(".xz"):
        data = lzma.decompress(data)
    return data


def module_order(kroot, release, modules=MODULES):
    """The modules of `modules` and everything they depend on, dependencies
    first, as (name, bytes): the dependencies come from each module's own
    `depends=` field, so no depmod is needed."""
    mdir = kroot / "lib" / "modules" / release
    files = {}
    for ko in mdir.rglob("*.ko*"):
        files[ko.name.split(".ko")[0].replace("_", "-")] = ko
    order, seen = [], set()

    def visit(name):
        key = name.replace("_", "-")
        if key in seen:
            return
        seen.add(key)
        ko = files.get(key)
        if ko is None:
            return  # built in
        data = read_module(ko)
        m = re.search(rb"depends=([^\0]*)\0", data)
        for dep in (m.group(1).decode().split(",") if m and m.group(1) else []):
            visit(dep)
        order.append((ko.name.split(".ko")[0], data))

    for name in modules:
        if name.replace("_", "-") not in files:
            log(f"module {name} is not in this kernel (built in, or absent)")
        visit(name)
    return order


def cpio_newc(root):
    """The tree under `root` as a newc cpio archive (what the kernel unpacks
    as an initramfs)."""
    out = bytearray()

    def entry(name, mode, data=b"", ino=[0]):
        ino[0] += 1
        name_b = name.encode() + b"\0"
        fields = [ino[0], mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + name_b)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            entry(rel, st.st_mode, os.readlink(path).encode())
        elif path.is_dir():
            entry(rel, st.st_mode)
        else:
            entry(rel, st.st_mode, path.read_bytes())
    entry("TRAILER!!!", 0)
    return bytes(out)


def copy_binary(binary, root):
    """`binary` and the shared libraries it loads, at their own paths."""
    paths = [Path(binary)]
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.search(r"(/\S+)", line.split("=>")[-1])
        if m:
            paths.append(Path(m.group(1)))
    for p in paths:
        dst = root / p.relative_to("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p.resolve(), dst)


def setup(init=HERE / "init", modules=MODULES, tag=""):
    """The kernel and an initramfs with `init` and `modules`, built once
    into the cache (`tag` tells initramfs of other judges apart)."""
    for tool in ["busybox", "lspci"]:
        if not shutil.which(tool):
            sys.exit(f"judge: {tool} is missing (apt-get install busybox-static pciutils)")
    busybox = shutil.which("busybox")
    if "statically linked" not in subprocess.run(["file", "-L", busybox], capture_output=True, text=True).stdout \
            and subprocess.run(["ldd", busybox], capture_output=True).returncode == 0:
        sys.exit("judge: busybox must be the static one (apt-get install busybox-static)")
    kroot = fetch_kernel()
    vmlinuz = next(kroot.glob("boot/vmlinuz-*"))
    release = vmlinuz.name[len("vmlinuz-"):]
    initrd = CACHE / f"initrd{tag}-{release}.cpio.gz"
    if initrd.exists() and initrd.stat().st_mtime >= Path(init).stat().st_mtime:
        return vmlinuz, initrd
    log(f"building the initramfs for {release}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ["bin", "dev", "proc", "sys", "lib/modules", "usr/share/misc"]:
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        shutil.copy2(init, root / "init")
        copy_binary(shutil.which("lspci"), root)
        ids = Path("/usr/share/misc/pci.ids")
        if ids.exists():
            shutil.copy2(ids, root / "usr/share/misc/pci.ids")
        names = []
        for name, data in module_order(kroot, release, modules):
            (root / "lib/modules" / f"{name}.ko").write_bytes(data)
            names.append(name)
        (root / "lib/modules/load-order").write_text("\n".join(names) + "\n")
        initrd.write_bytes(gzip.compress(cpio_newc(root), compresslevel=1))
    return vmlinuz, initrd


# ---- gen: a random machine QEMU can build ------------------------------------

# Endpoints, by what a slot can take: PCIe-native ones for root and
# downstream ports, conventional ones for PCI bridges.
PCIE_ENDPOINTS = ["e1000e", "virtio-net-pci", "virtio-rng-pci", "nvme", "qemu-xhci", "igb", "edu"]
PCI_ENDPOINTS = ["e1000", "pci-testdev", "virtio-rng-pci", "edu", "ich9-usb-uhci1"]


class Builder:
    """Accumulates -device arguments with unique ids and chassis numbers."""

    def __init__(self, rng):
        self.rng = rng
        self.args = []
        self.n = 0
        self.chassis = 0
        self.root_slot = 2  # 00:00.0 is the host bridge, 00:01.0 the IOMMU's if PCI
        self.root_ports = []  # addresses of root ports on bus 0

    def id(self, kind):
        self.n += 1
        return f"{kind}{self.n}"

    def dev(self, spec):
        self.args += ["-device", spec]

    def endpoint(self, bus, conventional, addr=None):
        kind = self.rng.choice(PCI_ENDPOINTS if conventional else PCIE_ENDPOINTS)
        spec = f"{kind},bus={bus}"
        if kind == "nvme":
            spec += f",serial=judge{self.n}"
        if addr:
            spec += f",addr={addr}"
        self.dev(spec)
        self.n += 1

    def next_root_slot(self):
        slot = self.root_slot
        self.root_slot += 1
        return slot

    def root_port(self, bus="pcie.0", addr=None):
        self.chassis += 1
        pid = self.id("rp")
        acs = ",disable-acs=on" if self.rng.random() < 0.3 else ""
        where = f",addr={addr}" if addr else ""
        if bus == "pcie.0" and addr:
            self.root_ports.append(f"0000:00:{addr}")
        self.dev(f"pcie-root-port,id={pid},bus={bus},chassis={self.chassis},slot={self.chassis}{acs}{where}")
        return pid

    def below_port(self, port, depth):
        r = self.rng.random()
        if depth < 2 and r < 0.2:
            up = self.id("up")
            self.dev(f"x3130-upstream,id={up},bus={port}")
            for _ in range(self.rng.randint(1, 3)):
                self.chassis += 1
                dn = self.id("dn")
                self.dev(f"xio3130-downstream,id={dn},bus={up},chassis={self.chassis},slot={self.chassis}")
                if self.rng.random() < 0.8:
                    self.below_port(dn, depth + 1)
        elif depth < 2 and r < 0.32:
            pb = self.id("pb")
            self.dev(f"pcie-pci-bridge,id={pb},bus={port}")
            self.conventional_bus(pb)
        elif r < 0.45:
            # A multifunction endpoint: two or three functions in one slot.
            fns = self.rng.randint(2, 3)
            for f in range(fns):
                mf = ",multifunction=on" if f == 0 else ""
                kind = self.rng.choice(["virtio-rng-pci", "e1000e", "edu"])
                self.dev(f"{kind},bus={port},addr=00.{f}{mf}")
        else:
            self.endpoint(port, conventional=False)

    def conventional_bus(self, bus):
        for slot in range(1, self.rng.randint(2, 4)):
            if self.rng.random() < 0.2:
                self.chassis += 1
                br = self.id("br")
                self.dev(f"pci-bridge,id={br},bus={bus},chassis_nr={self.chassis},addr={slot:02x}.0")
                self.endpoint(br, conventional=True, addr="01.0")
            else:
                self.endpoint(bus, conventional=True, addr=f"{slot:02x}.0")


def generate(seed):
    """A random q35 machine: root ports (some without ACS), switches, PCIe-to-
    PCI and PCI-to-PCI bridges, the DMI-to-PCI bridge, multifunction slots,
    expander buses, igb SR-IOV, under one IOMMU, with grouping and domain
    parameters on the command line."""
    rng = random.Random(seed)
    b = Builder(rng)
    # The virtio-iommu is not generated yet: Debian builds it as a module,
    # and a late-loaded virtio-iommu gives a group only to devices whose
    # driver probes after it (unbound functions get none), while QEMU's
    # device refuses endpoints addressed by a PCI bridge's alias. Both are
    # boot-order facts a prediction from configuration space cannot know.
    iommu = rng.choice(["intel-vtd", "intel-vtd", "amd-vi"])
    machine = ["-machine", "q35"]
    if iommu == "intel-vtd":
        opts = rng.choice(["", ",x-scalable-mode=on", ",intremap=on"])
        if "intremap" in opts:
            machine = ["-machine", "q35,kernel-irqchip=split"]
        b.args += ["-device", f"intel-iommu{opts}"]
    elif iommu == "amd-vi":
        # Under TCG, Linux 6.12 on QEMU's AMD IOMMU panics with interrupt
        # remapping (the IO-APIC timer check fails through it) and hangs
        # at the 8254 timer check without it, unless the IO-APIC is left
        # alone (`noapic`).
        b.args += ["-device", "amd-iommu,intremap=off"]
    # Root ports: some single, some packed into one multifunction slot.
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.3:
            slot = b.next_root_slot()
            ports = []
            for f in range(rng.randint(2, 3)):
                b.chassis += 1
                pid = b.id("rp")
                mf = ",multifunction=on" if f == 0 else ""
                acs = ",disable-acs=on" if rng.random() < 0.3 else ""
                b.dev(f"pcie-root-port,id={pid},bus=pcie.0,chassis={b.chassis},slot={b.chassis},addr={slot:02x}.{f}{mf}{acs}")
                b.root_ports.append(f"0000:00:{slot:02x}.{f}")
                ports.append(pid)
            for p in ports:
                b.below_port(p, 0)
        else:
            p = b.root_port(addr=f"{b.next_root_slot():02x}.0")
            b.below_port(p, 0)
    # Integrated endpoints on the root bus, one maybe multifunction.
    for _ in range(rng.randint(0, 2)):
        slot = b.next_root_slot()
        if rng.random() < 0.4:
            for f in range(2):
                mf = ",multifunction=on" if f == 0 else ""
                b.dev(f"{rng.choice(['virtio-rng-pci', 'e1000e', 'edu'])},bus=pcie.0,addr={slot:02x}.{f}{mf}")
        else:
            b.endpoint("pcie.0", conventional=False, addr=f"{slot:02x}.0")
    # The DMI-to-PCI bridge with a PCI-to-PCI bridge behind it.
    if rng.random() < 0.3:
        dmi = b.id("dmi")
        b.dev(f"i82801b11-bridge,id={dmi},bus=pcie.0,addr={b.next_root_slot():02x}.0")
        b.conventional_bus(dmi)
    # An expander bus with its own root port.
    if rng.random() < 0.3:
        pxb = b.id("pxb")
        b.dev(f"pxb-pcie,id={pxb},bus_nr=128,bus=pcie.0,addr={b.next_root_slot():02x}.0")
        p = b.root_port(bus=pxb)
        b.below_port(p, 1)
    # Kernel parameters that change the groups or their default domain.
    cmdline = ["noapic"] if iommu == "amd-vi" else []
    if iommu == "intel-vtd":
        cmdline.append(rng.choice(["intel_iommu=on", "intel_iommu=on", "intel_iommu=on,sm_on"]))
    dom = rng.random()
    if dom < 0.15:
        cmdline.append("iommu=pt")
    elif dom < 0.3:
        cmdline.append("iommu.strict=1")
    elif dom < 0.4:
        cmdline.append("iommu.strict=0")
    elif dom < 0.45:
        cmdline.append("iommu.passthrough=1")
    # Mainline's ACS parameters (Debian carries no ACS override patch).
    if b.root_ports and rng.random() < 0.25:
        port = rng.choice(b.root_ports)
        if rng.random() < 0.5:
            cmdline.append(f"pci=disable_acs_redir={port}")
        else:
            cmdline.append(f"pci=config_acs={rng.choice(['000xx', '0xxxx', 'xx0xx'])}@{port}")
    vfs = 2 if any("igb" in a for a in b.args) else 0
    return {
        "name": f"gen-{seed}",
        "iommu": iommu,
        "qemu": machine + b.args,
        "cmdline": " ".join(cmdline),
        "vfs": vfs,
    }


# ---- run: boot one machine and keep what the kernel built -----------------


def qemu_command(spec, vmlinuz, initrd, out_file):
    append = "console=ttyS0 quiet panic=-1 " + spec["cmdline"]
    if spec.get("vfs"):
        append += f" judge.vfs={spec['vfs']}"
    return [
        "qemu-system-x86_64", "-nodefaults", "-no-reboot", "-display", "none",
        "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
        *spec["qemu"],
        "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", append.strip(),
        "-serial", "stdio", "-serial", f"file:{out_file}",
    ]


def split_sections(text):
    out, name = {}, None
    for line in text.replace("\r", "").splitlines():
        m = re.fullmatch(r"=== (\S+)", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name:
            out[name].append(line)
    return {k: "\n".join(v) + "\n" for k, v in out.items()}


def run(spec, out_dir, vmlinuz, initrd):
    """Boots `spec`, writes its sections into `out_dir`; False when the
    guest did not finish."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "serial.raw"
    cmd = qemu_command(spec, vmlinuz, initrd, raw)
    try:
        console = subprocess.run(cmd, capture_output=True, text=True, timeout=BOOT_TIMEOUT,
                                 stdin=subprocess.DEVNULL)
        console_text = console.stdout + console.stderr
    except subprocess.TimeoutExpired as e:
        partial = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        console_text = f"timed out after {BOOT_TIMEOUT} s\n{partial}"
    sections = split_sections(raw.read_text(errors="replace") if raw.exists() else "")
    raw.unlink(missing_ok=True)
    if "end" not in sections:
        (out_dir / "console.log").write_text(str(console_text))
        log(f"{spec['name']}: the guest did not finish (console in {out_dir / 'console.log'})")
        return False
    for name in SECTIONS:
        (out_dir / f"{name}.txt").write_text(sections.get(name, ""))
    # Written last: a directory with machine.json is a whole run.
    meta = dict(spec)
    meta["qemu_version"] = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                          text=True).stdout.splitlines()[0]
    (out_dir / "machine.json").write_text(json.dumps(meta, indent=2) + "\n")
    return True


def compare(dirs):
    """The prediction of every kept run, by the same test CI runs."""
    env = dict(os.environ, IOMMU_KERNEL_JUDGE_DIRS=os.pathsep.join(str(d) for d in dirs))
    return subprocess.run(
        ["cargo", "nextest", "run", "-p", "iommu-cli", "--test", "kernel_judge",
         "--no-fail-fast", "--success-output", "never"],
        cwd=REPO, env=env,
    ).returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup")
    g = sub.add_parser("gen")
    g.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("spec")
    r.add_argument("--out", required=True)
    m = sub.add_parser("many")
    m.add_argument("--count", type=int, default=10)
    m.add_argument("--seed", type=int, default=1)
    m.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    if a.cmd == "setup":
        vmlinuz, initrd = setup()
        print(vmlinuz)
        print(initrd)
    elif a.cmd == "gen":
        print(json.dumps(generate(a.seed), indent=2))
    elif a.cmd == "run":
        vmlinuz, initrd = setup()
        spec = json.loads(Path(a.spec).read_text())
        sys.exit(0 if run(spec, Path(a.out), vmlinuz, initrd) else 1)
    elif a.cmd == "many":
        vmlinuz, initrd = setup()
        done, failed = [], 0
        for seed in range(a.seed, a.seed + a.count):
            spec = generate(seed)
            d = Path(a.out) / spec["name"]
            if (d / "machine.json").exists() or run(spec, d, vmlinuz, initrd):
                done.append(d)
                log(f"{spec['name']}: booted ({len(done)} of {seed - a.seed + 1})")
            else:
                failed += 1
        log(f"{len(done)} machines booted, {failed} did not finish; comparing")
        sys.exit(compare(done) if done else 1)
    elif a.cmd == "compare":
        sys.exit(compare([Path(d) for d in a.dirs]))


if __name__ == "__main__":
    main()
