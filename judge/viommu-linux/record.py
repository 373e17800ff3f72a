#!/usr/bin/env python3
"""Records a real Linux guest's virtio-iommu traffic on QEMU's device.

Boots Debian's Linux 6.12 (the kernel judge/linux-groups fetches) on
QEMU's q35 with a virtio-iommu-pci and four endpoints behind it
(virtio-blk, virtio-net, e1000e, edu), in strict, lazy and passthrough
mode. The guest's init (beside this file) reads the disk, brings the
network up, unbinds and rebinds the e1000e driver and powers off; QEMU's
own virtio_iommu trace events record every request its device accepted,
the configuration it offered and the reserved regions its PROBE replies
carried. Each mode becomes one small text file that
`cargo nextest run -p iommu-virtio --test linux_replay` replays on the
project's device.

    record.py [--out DIR] [MODE ...]    MODE: strict lazy passthrough
                                        (default: all three, into
                                        crates/iommu-virtio/tests/data/linux)
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "judge" / "linux-groups"))
import judge  # noqa: E402  (the kernel and initramfs set-up)

MODES = {
    "strict": "iommu.strict=1",
    "lazy": "iommu.strict=0",
    "passthrough": "iommu.passthrough=1",
}
MODULES = ["virtio-iommu", "virtio-blk", "virtio-net", "e1000e"]
# The device's side of every request (map is traced only once accepted;
# attach, detach and unmap on arrival, unmap_done per mapping removed),
# its configuration and PROBE properties, and faults. Per-access
# translation events are left out: they are many and say nothing of
# requests.
EVENTS = [
    "virtio_iommu_get_features", "virtio_iommu_get_config", "virtio_iommu_set_config",
    "virtio_iommu_attach", "virtio_iommu_detach", "virtio_iommu_map", "virtio_iommu_unmap",
    "virtio_iommu_unmap_done", "virtio_iommu_fill_resv_property", "virtio_iommu_report_fault",
    # After an attach: whether the endpoint now translates or bypasses
    # (the attach event does not show the request's flags).
    "virtio_iommu_switch_address_space",
]
DEVICES = [
    "-device", "virtio-iommu-pci,addr=01.0",
    # Virtio devices use the DMA API (and so the IOMMU) only with
    # VIRTIO_F_ACCESS_PLATFORM, which QEMU offers when asked.
    "-device", "virtio-blk-pci,drive=disk0,addr=02.0,iommu_platform=on,disable-legacy=on",
    "-netdev", "user,id=net0",
    "-device", "virtio-net-pci,netdev=net0,addr=03.0,iommu_platform=on,disable-legacy=on",
    "-netdev", "user,id=net1", "-device", "e1000e,netdev=net1,addr=04.0",
    "-device", "edu,addr=05.0",
]


def trace_lines(text):
    """The device's events, each configuration read once (the driver reads
    the configuration field by field; it does not change)."""
    seen_config, out = set(), []
    for line in text.splitlines():
        line = line.rstrip()
        if not line.startswith("virtio_iommu_"):
            continue
        if line.startswith("virtio_iommu_get_config"):
            if line in seen_config:
                continue
            seen_config.add(line)
        out.append(line)
    return out


def record(mode, vmlinuz, initrd, out):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        disk = tmp / "disk.img"
        disk.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
        trace, serial = tmp / "trace.log", tmp / "serial.txt"
        cmd = [
            "qemu-system-x86_64", "-machine", "q35", "-nodefaults", "-no-reboot",
            "-display", "none", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
            "-drive", f"file={disk},if=none,id=disk0,format=raw",
            *DEVICES,
            "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet panic=-1 {MODES[mode]}",
            "-serial", "null", "-serial", f"file:{serial}",
            "-D", str(trace), *[a for e in EVENTS for a in ("-trace", e)],
        ]
        try:
            subprocess.run(cmd, capture_output=True, timeout=judge.BOOT_TIMEOUT,
                           stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            judge.log(f"{mode}: timed out after {judge.BOOT_TIMEOUT} s")
            return False
        guest = judge.split_sections(serial.read_text(errors="replace") if serial.exists() else "")
        if "end" not in guest:
            judge.log(f"{mode}: the guest did not finish")
            return False
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                              text=True).stdout.splitlines()[0]
        lines = [
            "# A Linux guest's virtio-iommu requests on QEMU's device, recorded by",
            "# judge/viommu-linux/record.py: facts about both, replayed by",
            "# crates/iommu-virtio/tests/linux_replay.rs.",
            f"=== meta",
            f"mode {mode}",
            f"kernel {guest.get('kernel', '').strip()}",
            f"cmdline {guest.get('cmdline', '').strip()}",
            f"qemu {qemu}",
            "devices " + " ".join(a for a in DEVICES if a.startswith(("virtio", "e1000e", "edu"))),
            "=== trace",
            *trace_lines(trace.read_text()),
            "=== guest-groups",
            *guest.get("iommu-groups", "").splitlines(),
            "=== guest-dmesg",
            *guest.get("dmesg", "").splitlines(),
        ]
        out.write_text("\n".join(lines) + "\n")
        return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "crates/iommu-virtio/tests/data/linux")
    ap.add_argument("modes", nargs="*", metavar="MODE", help="strict, lazy or passthrough (default: all)")
    args = ap.parse_args()
    for mode in args.modes:
        if mode not in MODES:
            ap.error(f"unknown mode {mode!r} (strict, lazy, passthrough)")
    vmlinuz, initrd = judge.setup(init=HERE / "init", modules=MODULES, tag="-viommu")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for mode in args.modes or list(MODES):
        out = args.out / f"{mode}.txt"
        judge.log(f"{mode}: booting")
        if record(mode, vmlinuz, initrd, out):
            judge.log(f"{mode}: {out}")
        else:
            failed += 1
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
