#!/usr/bin/env python3
"""Prints the sizes and field offsets of the iommufd uAPI structures the
crate mirrors, by compiling a header with gcc:

    python3 gen-layout.py LINUX_TREE > uapi-7.3.layout

LINUX_TREE is an extracted linux-source tree (for its
include/uapi/linux/iommufd.h); nothing of it is kept here."""
import os, re, subprocess, sys, tempfile

WANT = """iommu_destroy iommu_ioas_alloc iommu_iova_range iommu_ioas_iova_ranges
iommu_ioas_allow_iovas iommu_ioas_map iommu_ioas_noiommu_get_pa iommu_ioas_map_file
iommu_ioas_copy iommu_ioas_unmap iommu_option iommu_vfio_ioas iommu_hwpt_arm_smmuv3
iommu_hwpt_alloc iommu_hw_info_arm_smmuv3 iommu_hw_info iommu_hwpt_set_dirty_tracking
iommu_hwpt_get_dirty_bitmap iommu_viommu_arm_smmuv3_invalidate iommu_hwpt_invalidate
iommu_fault_alloc iommu_viommu_alloc iommu_vdevice_alloc iommu_ioas_change_process
iommu_vevent_arm_smmuv3 iommu_veventq_alloc iommu_hw_queue_alloc iommu_hwpt_pgfault
iommu_hwpt_page_response""".split()

tree = sys.argv[1]
header = os.path.join(tree, "include/uapi/linux/iommufd.h")
src = open(header).read()
out = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/types.h>",
       '#include "linux/iommufd.h"', "int main(void) {"]
for name, body in re.findall(r"^struct (iommu_[a-z_0-9]+) \{(.*?)^\};", src, re.S | re.M):
    if name not in WANT:
        continue
    out.append(f'printf("{name} size=%zu\\n", sizeof(struct {name}));')
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    for m in re.finditer(r"^\s*__[a-z0-9_]+\s+([a-z_0-9]+)(\[\d+\])?;", body, re.M):
        f = m.group(1)
        out.append(f'printf("{name}.{f} %zu\\n", offsetof(struct {name}, {f}));')
out.append("return 0; }")
with tempfile.TemporaryDirectory() as d:
    os.makedirs(os.path.join(d, "linux"))
    open(os.path.join(d, "linux/iommufd.h"), "w").write(src)
    open(os.path.join(d, "l.c"), "w").write("\n".join(out))
    subprocess.run(["gcc", "-I", d, os.path.join(d, "l.c"), "-o", os.path.join(d, "l")], check=True)
    sys.stdout.write(subprocess.run([os.path.join(d, "l")], check=True, capture_output=True, text=True).stdout)
