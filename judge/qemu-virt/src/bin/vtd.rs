//! The VT-d driver against the real device model: iommu-rs's no_std core
//! and VT-d driver (`iommu_vtd::Vtd`) on QEMU's `q35` with QEMU's own
//! `intel-iommu` and its `edu` DMA device, entered through PVH.
//!
//! The remapping unit and the host address width come from QEMU's DMAR
//! (read with `iommu_firmware::dmar`), configuration space from its MCFG.
//! The driver runs the tables the unit offers, as Linux picks them (legacy;
//! scalable mode with second-stage tables under `x-scalable-mode=on`, with
//! first-stage tables under `x-flts=on`), or those `-append mode=legacy`
//! asks for. The program puts edu behind a DMA domain of the core and
//! checks: DMA lands where the tables say; an unmapped IOVA records a
//! fault with edu's source id, the page and the tables' "not present" or
//! "write not permitted" reason; after an unmap and its invalidation the
//! DMA faults and writes nothing; a read-only page refuses a write; an
//! unmap whose invalidation is held back leaves QEMU's IOTLB serving the
//! old page until the driver invalidates (the control); a 2 MiB page maps
//! and unmaps whole; a claimed group (no context entry, or in scalable
//! mode no PASID entry) drops DMA with that entry's "not present"; an
//! identity domain (pass-through) passes physical addresses. One line per
//! check and per fault over COM1; a host test reads them
//! (`crates/iommu-vtd/tests/qemu_judge.rs`).
#![no_std]
#![no_main]

extern crate alloc;

#[cfg(target_arch = "x86_64")]
mod q35 {
    use alloc::format;
    use alloc::string::String;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use core::fmt::Write;
    use iommu_core::{Bus, DeviceBuilder, DmaOwner, Iommu, IotlbGather, Iova, PhysAddr, Prot};
    use iommu_firmware::dmar::Dmar;
    use iommu_hw::VolatileMmio;
    use iommu_pgtable::HeapMemory;
    use iommu_qemu_judge::board::{print, Uart};
    use iommu_qemu_judge::pci::{Ecam, Edu, EDU_ID};
    use iommu_qemu_judge::{acpi, aligned_buffer, buffer, check, pa};
    use iommu_vtd::{TableMode, Vtd, VtdConfig, VtdFault};

    type Driver = Vtd<VolatileMmio, HeapMemory>;

    /// The DMAR: every unit's register base (segment 0), the host
    /// address width, and the table (whose scopes say which unit
    /// translates which requester id).
    fn dmar() -> Result<(Vec<u64>, u32, Dmar), String> {
        let table = acpi::find(b"DMAR")?.ok_or("no DMAR: is -device intel-iommu given?")?;
        acpi::dump("DMAR", table);
        let dmar = Dmar::parse(table).map_err(|e| format!("DMAR: {e}"))?;
        let bases: Vec<u64> = dmar
            .drhds()
            .filter(|d| d.segment == 0)
            .map(|d| d.register_base)
            .collect();
        if bases.is_empty() {
            return Err("no DRHD of segment 0 in the DMAR".into());
        }
        Ok((bases, dmar.address_width(), dmar))
    }

    /// Reads the fault records, prints each, then the phase's line.
    fn faults(drv: &Driver, phase: &str) -> Vec<VtdFault> {
        let fs = drv.handle_faults();
        for f in &fs {
            let _ = writeln!(
                Uart,
                "FAULT sid={:#x} reason={:#x} address={:#x} write={}",
                f.source_id, f.reason, f.address, f.write as u8
            );
        }
        let _ = writeln!(Uart, "PHASE {phase} faults={}", fs.len());
        fs
    }

    fn has(fs: &[VtdFault], sid: u16, reason: u8, page: u64) -> bool {
        fs.iter()
            .any(|f| f.source_id == sid && f.reason == reason && f.address == page && f.write)
    }

    pub fn run() {
        print("iommu-rs judge: QEMU q35, QEMU's intel-iommu, the edu device\n");
        let (bases, haw, table) = match dmar() {
            Ok(d) => d,
            Err(e) => {
                let _ = writeln!(Uart, "firmware: {e}");
                check("the DMAR names a remapping unit", false);
                return;
            }
        };
        for base in &bases {
            let _ = writeln!(Uart, "DRHD base={base:#x} haw={haw}");
        }
        check("the DMAR names a remapping unit", true);
        let Ok(ecam) = acpi::ecam() else {
            check("edu found through ECAM", false);
            return;
        };
        let ecam = Ecam::new(ecam);
        let Some(devfn) = ecam.find(EDU_ID) else {
            check("edu found through ECAM", false);
            return;
        };
        check("edu found through ECAM", true);
        let Some(bar) = ecam.enable(devfn)[0] else {
            check("edu has BAR 0", false);
            return;
        };
        let edu = Edu::at(bar as usize);
        check("edu identification register", edu.read32(0) == 0x0100_00ed);
        let sid = u16::from(devfn);

        // SAFETY: each DRHD's register page, identity-mapped uncached by
        // the boot code (they lie in the top GiB below 4 GiB).
        let mmios: Vec<VolatileMmio> = bases
            .iter()
            .map(|&base| unsafe { VolatileMmio::new(base as *mut u8, 0x1000) })
            .collect();
        // Which unit translates a requester id: the DMAR's scopes (QEMU's
        // devices sit on the root bus, so no scope path crosses a bridge).
        let table = Arc::new(table);
        let lookup: iommu_vtd::UnitLookup = Arc::new(move |id: u32| {
            let d = table.drhd_for(0, u16::try_from(id).ok()?, &|_, _| None, &|_| None)?;
            table
                .drhds()
                .filter(|x| x.segment == 0)
                .position(|x| x == d)
        });
        // The mode comes from the command line (`-append`): `qi=off`
        // invalidates through the registers.
        let args = iommu_qemu_judge::board::cmdline();
        let _ = writeln!(Uart, "CMDLINE {args}");
        let arg = |a: &str| args.split_whitespace().any(|w| w == a);
        let cfg = VtdConfig {
            host_address_width: haw,
            queued_invalidation: !arg("qi=off"),
            mode: arg("mode=legacy").then_some(TableMode::Legacy),
            ..VtdConfig::default()
        };
        let drv = match Vtd::probe_units(mmios, Arc::new(HeapMemory::new()), cfg, Some(lookup)) {
            Ok(d) => d,
            Err((unit, e)) => {
                let _ = writeln!(Uart, "probe of unit {unit}: {e}");
                check("VT-d probe", false);
                return;
            }
        };
        check("VT-d probe", true);
        check(
            "the DMAR's scope puts edu behind a unit the driver drives",
            drv.unit_for_source(u32::from(sid))
                .is_some_and(|u| u < drv.units()),
        );
        let caps = *drv.caps();
        let mode = drv.mode();
        let _ = writeln!(
            Uart,
            "CAPS cap={:#x} ecap={:#x} mode={} levels={} queued={} cm={} psi={} sl2m={} pt={} domain_bits={} fault_records={}",
            caps.cap,
            caps.ecap,
            match mode {
                TableMode::Legacy => "legacy",
                TableMode::ScalableSecondStage => "second-stage",
                TableMode::ScalableFirstStage => "first-stage",
            },
            drv.levels(),
            drv.queued() as u8,
            caps.caching_mode as u8,
            caps.psi as u8,
            caps.sl_2m as u8,
            caps.pass_through as u8,
            caps.domain_bits,
            caps.fault_records
        );

        let iommu = Iommu::default();
        let bus = Bus::new(&iommu, "pci").expect("bus");
        let dev = bus
            .add_device(
                DeviceBuilder::new(format!("0000:00:{:02x}.{}", devfn >> 3, devfn & 7))
                    .stream_ids([u32::from(sid)])
                    .pci(true),
            )
            .expect("device");
        check(
            "the core takes the bus with the VT-d driver",
            iommu.bus_set_iommu(&bus, Arc::new(drv.clone())).is_ok(),
        );
        let (Some(group), Some(domain)) = (
            dev.iommu_group(),
            dev.iommu_group().and_then(|g| g.default_domain()),
        ) else {
            check("the device has a group and a default DMA domain", false);
            return;
        };
        check("the device has a group and a default DMA domain", true);
        // The reasons of the tables in use (7.1.3): legacy and second
        // stage say "write not permitted" (5h) for a missing page too;
        // the first stage has its own.
        let first = mode == TableMode::ScalableFirstStage;
        let (absent, read_only) = if first { (0x71, 0x85) } else { (5, 5) };
        // Scalable mode: the PASID entry is cleared whole, which QEMU
        // calls invalid (5Bh; it checks the type before the present bit).
        let blocked = if mode.scalable() { 0x5b } else { 2 };
        let present = if mode.scalable() {
            // The context entry names the PASID directory; the RID_PASID's
            // PASID entry the tables (PGTT 001b or 010b) and the domain.
            let pgtt = if first { 1 } else { 2 };
            drv.context_entry(u32::from(sid))
                .is_some_and(|e| e[0] & 1 == 1)
                && drv
                    .pasid_entry(u32::from(sid))
                    .is_some_and(|p| p[0] & 1 == 1 && (p[0] >> 6) & 7 == pgtt && p[1] as u16 != 0)
        } else {
            drv.context_entry(u32::from(sid))
                .is_some_and(|e| e[0] & 1 == 1 && (e[0] >> 2) & 3 == 0 && e[1] >> 8 != 0)
        };
        check(
            "its entry is present, names the domain's tables and a domain id",
            present,
        );

        // 1. Data lands where the tables say.
        let src = buffer(0);
        for (i, b) in src.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7).wrapping_add(3);
        }
        let dst = buffer(0);
        let (iova_src, iova_dst, iova_hole) = (0x10_0000u64, 0x20_0000u64, 0x30_0000u64);
        let mapped = domain
            .map(
                Iova::new(iova_src),
                PhysAddr::new(pa(src)),
                0x1000,
                Prot::READ,
            )
            .and_then(|_| {
                domain.map(
                    Iova::new(iova_dst),
                    PhysAddr::new(pa(dst)),
                    0x1000,
                    Prot::RW,
                )
            });
        check("map through the core and the driver", mapped.is_ok());
        let ok = edu.dma(true, iova_src, 256) && edu.dma(false, iova_dst, 256);
        check("edu DMA completes", ok);
        check(
            "DMA data lands where the tables say",
            dst[..256] == src[..256] && dst[256..].iter().all(|&b| b == 0),
        );
        check("no fault for mapped DMA", faults(&drv, "mapped").is_empty());

        // 2. An IOVA nothing maps: the page, edu's source id.
        edu.dma(false, iova_hole, 64);
        let fs = faults(&drv, "hole");
        check(
            "an unmapped IOVA records a write fault with source id and page",
            has(&fs, sid, absent, iova_hole),
        );

        // 3. After unmap and its invalidation the DMA faults.
        dst.fill(0);
        check(
            "unmap through the core",
            domain.unmap(Iova::new(iova_dst), 0x1000) == Ok(0x1000),
        );
        edu.dma(false, iova_dst, 256);
        check("no data lands after unmap", dst.iter().all(|&b| b == 0));
        let fs = faults(&drv, "unmapped");
        check(
            "DMA after unmap records a fault",
            has(&fs, sid, absent, iova_dst),
        );

        // 4. A read-only page refuses a write. QEMU checks the permission
        // of a translation its IOTLB holds without recording a fault (the
        // read above cached it); walked afresh, the refusal is recorded.
        let pattern: Vec<u8> = src.to_vec();
        src[..16].fill(0xee);
        edu.dma(false, iova_src, 16);
        check(
            "a write to a read-only page lands nowhere",
            src[..16].iter().all(|&b| b == 0xee),
        );
        let _ = faults(&drv, "read-only-cached");
        check(
            "the domain's IOTLB entries invalidate",
            domain.flush_iotlb_all().is_ok(),
        );
        edu.dma(false, iova_src, 16);
        check(
            "walked afresh, it lands nowhere either",
            src[..16].iter().all(|&b| b == 0xee),
        );
        let fs = faults(&drv, "read-only");
        check(
            "and records 'write not permitted'",
            has(&fs, sid, read_only, iova_src),
        );
        src.copy_from_slice(&pattern);

        // 5. The control: without the invalidation QEMU's IOTLB keeps
        // serving the old page, so the checks above prove the driver's
        // invalidation, not just the table.
        let stale = buffer(0);
        let iova_stale = 0x40_0000u64;
        let _ = domain.map(
            Iova::new(iova_stale),
            PhysAddr::new(pa(stale)),
            0x1000,
            Prot::RW,
        );
        edu.dma(false, iova_stale, 16);
        stale.fill(0);
        let mut gather = IotlbGather::new();
        domain.unmap_fast(Iova::new(iova_stale), 0x1000, &mut gather);
        edu.dma(false, iova_stale, 16);
        check(
            "without the invalidation QEMU still uses its cached translation",
            stale[..16] == src[..16],
        );
        let _ = faults(&drv, "stale");
        stale.fill(0);
        check(
            "the invalidation completes",
            domain.iotlb_sync(&gather).is_ok(),
        );
        edu.dma(false, iova_stale, 16);
        check(
            "after it the DMA lands nowhere",
            stale.iter().all(|&b| b == 0),
        );
        let _ = faults(&drv, "synced");

        // 6. A 2 MiB page, where the unit has them.
        let block = aligned_buffer(0x20_0000, 0x20_0000);
        let iova_block = 0x60_0000u64;
        let mapped = domain.map(
            Iova::new(iova_block),
            PhysAddr::new(pa(block)),
            0x20_0000,
            Prot::RW,
        );
        let one_page = domain
            .first_mapping(Iova::new(iova_block), Iova::new(iova_block + 0x1f_ffff))
            == Some((Iova::new(iova_block), 0x20_0000));
        check(
            "a 2 MiB mapping is one page where the domain has 2 MiB pages",
            mapped.is_ok() && one_page == (domain.pgsize_bitmap() & 0x20_0000 != 0),
        );
        edu.dma(false, iova_block + 0x12_3400, 64);
        check(
            "DMA lands at the page's offset",
            block[0x12_3400..0x12_3400 + 64] == src[..64],
        );
        let _ = faults(&drv, "block");
        check(
            "the 2 MiB mapping unmaps whole",
            domain.unmap(Iova::new(iova_block), 0x20_0000) == Ok(0x20_0000),
        );
        block[0x1f_f000..].fill(0);
        edu.dma(false, iova_block + 0x1f_f000, 16);
        check(
            "after its unmap the last page faults",
            block[0x1f_f000..].iter().all(|&b| b == 0),
        );
        let _ = faults(&drv, "block-unmapped");

        // 7. A user claims the group: no context entry (scalable mode: no
        // PASID entry).
        check(
            "claiming DMA ownership blocks the group",
            iommu.group_claim_dma_owner(&group, DmaOwner::new()).is_ok(),
        );
        check(
            "a blocked device has no context (or PASID) entry",
            if mode.scalable() {
                drv.pasid_entry(u32::from(sid))
                    .is_some_and(|p| p[0] & 1 == 0)
            } else {
                drv.context_entry(u32::from(sid))
                    .is_some_and(|e| e[0] & 1 == 0)
            },
        );
        dst.fill(0);
        let _ = domain.map(
            Iova::new(iova_dst),
            PhysAddr::new(pa(dst)),
            0x1000,
            Prot::RW,
        );
        edu.dma(false, iova_dst, 16);
        check(
            "a blocked group's DMA lands nowhere",
            dst.iter().all(|&b| b == 0),
        );
        let fs = faults(&drv, "blocked");
        check(
            "and records that entry's 'not present'",
            fs.iter().any(|f| f.source_id == sid && f.reason == blocked),
        );
        iommu.group_release_dma_owner(&group);

        // 8. Identity through sysfs: a pass-through context entry.
        check(
            "echo identity > type",
            iommu
                .sysfs()
                .write(
                    &format!("kernel/iommu_groups/{}/type", group.id()),
                    "identity",
                )
                .is_ok(),
        );
        let ident = buffer(0);
        edu.dma(false, pa(ident), 32);
        check(
            "identity DMA lands at the physical address",
            ident[..32] == src[..32],
        );
        check("no fault in identity", faults(&drv, "identity").is_empty());

        let s = drv.stats();
        let _ = writeln!(
            Uart,
            "STATS invalidations={} waits={} timeouts={} queue_errors={} faults={} overflows={} context_writes={}",
            s.invalidations, s.waits, s.timeouts, s.queue_errors, s.faults, s.fault_overflows, s.context_writes
        );
        check(
            "no invalidation timed out or was refused",
            s.timeouts == 0 && s.queue_errors == 0,
        );
    }
}

/// Called by the boot code with paging on and a stack.
#[no_mangle]
extern "C" fn judge_main() -> ! {
    #[cfg(target_arch = "x86_64")]
    q35::run();
    #[cfg(not(target_arch = "x86_64"))]
    iommu_qemu_judge::check("the VT-d judge runs on x86 (q35) only", false);
    iommu_qemu_judge::finish()
}
