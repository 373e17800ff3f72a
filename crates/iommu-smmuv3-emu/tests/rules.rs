//! The emulated SMMUv3, rule by rule, with the section of Arm IHI 0070
//! (SMMU architecture specification, version 3) each rule comes from.

mod common;

use common::*;
use iommu_smmuv3_emu::{regs::*, Access, DmaError, EventId, Features, Smmuv3};
use iommu_types::Prot;

const SID: u32 = 5;

fn ev_id(ev: &[u64; 4]) -> u8 {
    ev[0] as u8
}

fn ev_sid(ev: &[u64; 4]) -> u32 {
    (ev[0] >> 32) as u32
}

/// A rig with stream `SID` translating through a fresh stage-1 table.
fn s1_rig() -> (
    Rig,
    iommu_pgtable::IoPageTable<
        iommu_pgtable::lpae::Lpae,
        std::sync::Arc<iommu_pgtable::GuestTableMemory<Mem>>,
    >,
) {
    let rig = Rig::new();
    let pt = rig.s1_table();
    let cd = rig.write_cd(0, 7, pt.root().raw());
    rig.write_ste(SID, Rig::s1_ste(cd));
    (rig, pt)
}

#[test]
fn id_registers_describe_the_features_6_3_1() {
    let rig = Rig::new();
    let idr0 = rig.smmu.read32(IDR0);
    assert_eq!(idr0 & 0b11, 0b11, "S1P and S2P");
    assert_eq!((idr0 >> 2) & 3, 2, "TTF: AArch64");
    assert_eq!((idr0 >> 27) & 3, 1, "ST_LEVEL: two-level");
    assert_eq!((idr0 >> 21) & 3, 2, "TTENDIAN: little");
    let idr1 = rig.smmu.read32(IDR1);
    assert_eq!(idr1 & 0x3f, 16, "SIDSIZE");
    assert_eq!((idr1 >> 21) & 0x1f, 12, "CMDQS");
    assert_eq!((idr1 >> 6) & 0x1f, 0, "SSIDSIZE: no substreams");
    assert_eq!(rig.smmu.read32(IDR3) & (1 << 10), 1 << 10, "RIL");
    let idr5 = rig.smmu.read32(IDR5);
    assert_eq!(idr5 & 7, 5, "OAS 48 bits");
    assert_eq!(idr5 & 0x70, 0x70, "4K, 16K and 64K granules");
}

#[test]
fn features_the_id_registers_cannot_express_are_refused() {
    for f in [
        Features {
            stage1: false,
            stage2: false,
            ..Features::default()
        },
        Features {
            oas: 47,
            ..Features::default()
        },
        Features {
            cmdq_bits: 20,
            ..Features::default()
        },
        Features {
            sid_bits: 33,
            ..Features::default()
        },
        Features {
            granules: vec![],
            ..Features::default()
        },
    ] {
        assert!(Smmuv3::new(memory(), f).is_err());
    }
}

#[test]
fn cr0ack_follows_cr0_6_3_9() {
    let rig = Rig::new();
    rig.enable(CR0_CMDQEN);
    rig.enable(0);
    // Bits this SMMU does not implement (PRIQEN, ATSCHK) are not acknowledged.
    rig.smmu.write32(CR0, CR0_PRIQEN | CR0_ATSCHK | CR0_SMMUEN);
    assert_eq!(rig.smmu.read32(CR0ACK), CR0_SMMUEN);
}

#[test]
fn base_registers_ignore_writes_while_their_unit_is_enabled_6_3_23() {
    let rig = Rig::new();
    rig.smmu.write64(STRTAB_BASE, 0x5000);
    rig.smmu.write64(CMDQ_BASE, 0x6000 | 4);
    rig.smmu.write32(STRTAB_BASE_CFG, 3);
    assert_eq!(rig.smmu.read64(STRTAB_BASE), STRTAB);
    assert_eq!(rig.smmu.read64(CMDQ_BASE), CMDQ | CMDQ_LOG2);
    assert_eq!(rig.smmu.read32(STRTAB_BASE_CFG), SID_BITS);
    rig.enable(0);
    rig.smmu.write32(STRTAB_BASE, 0x7000);
    rig.smmu.write32(STRTAB_BASE + 4, 0x1);
    assert_eq!(
        rig.smmu.read64(STRTAB_BASE),
        0x1_0000_7000,
        "two 32-bit halves"
    );
}

#[test]
fn a_disabled_smmu_applies_gbpa_6_3_14() {
    let rig = Rig::new();
    rig.enable(0);
    assert_eq!(
        rig.smmu.translate(SID, 0x1000, Access::Read),
        Err(DmaError::Terminated {
            event: None,
            fault: None
        }),
        "GBPA.ABORT is set at reset"
    );
    rig.smmu.write32(GBPA, GBPA_UPDATE);
    assert_eq!(rig.smmu.read32(GBPA) & GBPA_UPDATE, 0, "UPDATE completes");
    assert_eq!(
        rig.smmu.translate(SID, 0x1234, Access::Write).unwrap().pa,
        0x1234
    );
}

#[test]
fn bypass_ste_passes_addresses_through_5_2() {
    let rig = Rig::new();
    rig.write_ste(SID, [1 | (0b100 << 1), 0, 0, 0]);
    assert_eq!(
        rig.smmu
            .translate(SID, DATA + 0x42, Access::Write)
            .unwrap()
            .pa,
        DATA + 0x42
    );
    assert!(rig.events().is_empty());
}

#[test]
fn abort_ste_terminates_without_an_event_5_2() {
    let rig = Rig::new();
    rig.write_ste(SID, [1, 0, 0, 0]);
    assert_eq!(
        rig.smmu.translate(SID, 0x1000, Access::Read),
        Err(DmaError::Terminated {
            event: None,
            fault: None
        })
    );
    assert!(rig.events().is_empty());
}

#[test]
fn invalid_or_reserved_ste_is_c_bad_ste_5_2() {
    let rig = Rig::new();
    for (sid, words) in [
        (1u32, [0u64, 0, 0, 0]),                      // V = 0
        (2, [1 | (0b001 << 1), 0, 0, 0]),             // reserved Config
        (3, [1 | (0b101 << 1) | (1 << 59), 0, 0, 0]), // S1CDMax without substreams
    ] {
        rig.write_ste(sid, words);
        let r = rig.smmu.translate(sid, 0, Access::Read);
        assert_eq!(
            r,
            Err(DmaError::Terminated {
                event: Some(EventId::BadSte),
                fault: Some(EventId::BadSte)
            })
        );
        let evs = rig.events();
        assert_eq!(evs.len(), 1);
        assert_eq!((ev_id(&evs[0]), ev_sid(&evs[0])), (0x04, sid));
    }
}

#[test]
fn stream_id_outside_the_table_is_c_bad_streamid_3_3_2() {
    let rig = Rig::new();
    let r = rig.smmu.translate(1 << SID_BITS, 0, Access::Read);
    assert!(matches!(
        r,
        Err(DmaError::Terminated {
            event: Some(EventId::BadStreamId),
            ..
        })
    ));
    let evs = rig.events();
    assert_eq!((ev_id(&evs[0]), ev_sid(&evs[0])), (0x02, 1 << SID_BITS));
}

#[test]
fn stage1_dma_lands_where_the_table_says_3_4() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x4000, DATA + 0x3000, 0x1000, Prot::RW);
    rig.cfgi_ste(SID);
    rig.smmu.dma_write(SID, 0x4010, b"hello").unwrap();
    let mut got = [0u8; 5];
    vm_memory::Bytes::read_slice(&*rig.mem, &mut got, vm_memory::GuestAddress(DATA + 0x3010))
        .unwrap();
    assert_eq!(&got, b"hello");
    let mut back = [0u8; 5];
    rig.smmu.dma_read(SID, 0x4010, &mut back).unwrap();
    assert_eq!(&back, b"hello");
}

#[test]
fn unmapped_address_is_f_translation_with_the_input_address_7_3_12() {
    let (rig, _pt) = s1_rig();
    let r = rig.smmu.translate(SID, 0x9000, Access::Write);
    assert_eq!(
        r,
        Err(DmaError::Terminated {
            event: Some(EventId::Translation),
            fault: Some(EventId::Translation)
        })
    );
    let ev = rig.events()[0];
    assert_eq!(ev_id(&ev), 0x10);
    assert_eq!(ev_sid(&ev), SID);
    assert_eq!(ev[2], 0x9000, "InputAddr");
    assert_eq!((ev[1] >> 35) & 1, 0, "RnW = 0: a write");
    assert_eq!((ev[1] >> 39) & 1, 0, "stage 1");
    assert_eq!((ev[1] >> 40) & 3, 2, "CLASS = IN");
}

#[test]
fn write_to_a_read_only_page_is_f_permission_7_3_15() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x4000, DATA, 0x1000, Prot::READ);
    assert!(rig.smmu.translate(SID, 0x4000, Access::Read).is_ok());
    let r = rig.smmu.translate(SID, 0x4000, Access::Write);
    assert!(matches!(
        r,
        Err(DmaError::Terminated {
            event: Some(EventId::Permission),
            ..
        })
    ));
    let ev = rig.events()[0];
    assert_eq!((ev_id(&ev), ev[2]), (0x13, 0x4000));
}

#[test]
fn faults_are_not_recorded_without_cd_r_5_4() {
    let (rig, pt) = s1_rig();
    let at = rig.write_cd(0, 7, pt.root().raw());
    rig.poke(at, rig.peek(at) & !(1 << 45));
    rig.cfgi_ste(SID);
    assert_eq!(
        rig.smmu.translate(SID, 0x9000, Access::Read),
        Err(DmaError::Terminated {
            event: None,
            fault: Some(EventId::Translation)
        })
    );
    assert!(rig.events().is_empty());
}

#[test]
fn privileged_only_page_faults_an_unprivileged_device_access() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x4000, DATA, 0x1000, Prot::RW | Prot::PRIV);
    assert!(matches!(
        rig.smmu.translate(SID, 0x4000, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::Permission),
            ..
        })
    ));
}

#[test]
fn tlb_keeps_a_stale_translation_until_tlbi_nh_va_4_4_2() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x4000, DATA, 0x1000, Prot::RW);
    assert!(rig.smmu.translate(SID, 0x4000, Access::Read).is_ok());
    unmap(&pt, 0x4000, 0x1000);
    // The table no longer maps it, but nothing invalidated the TLB.
    assert_eq!(
        rig.smmu.translate(SID, 0x4000, Access::Read).unwrap().pa,
        DATA
    );
    // TLBI_NH_VA for another ASID leaves it.
    rig.cmd(0x12 | (8u64 << 48), 0x4000);
    rig.sync();
    assert!(rig.smmu.translate(SID, 0x4000, Access::Read).is_ok());
    rig.cmd(0x12 | (7u64 << 48), 0x4000);
    rig.sync();
    assert!(rig.smmu.translate(SID, 0x4000, Access::Read).is_err());
}

#[test]
fn tlbi_nh_asid_and_nsnh_all_empty_the_tlb_4_4() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x4000, DATA, 0x1000, Prot::RW);
    rig.smmu.translate(SID, 0x4000, Access::Read).unwrap();
    assert_eq!(rig.smmu.tlb_entries(), 1);
    rig.cmd(0x11 | (7u64 << 48), 0);
    assert_eq!(rig.smmu.tlb_entries(), 0);
    rig.smmu.translate(SID, 0x4000, Access::Read).unwrap();
    rig.cmd(0x30, 0);
    assert_eq!(rig.smmu.tlb_entries(), 0);
}

#[test]
fn range_tlbi_covers_num_plus_one_times_two_to_scale_granules_4_4_1_1() {
    let (rig, pt) = s1_rig();
    for i in 0..8u64 {
        map(
            &pt,
            0x10_0000 + i * 0x1000,
            DATA + i * 0x1000,
            0x1000,
            Prot::RW,
        );
        rig.smmu
            .translate(SID, 0x10_0000 + i * 0x1000, Access::Read)
            .unwrap();
    }
    assert_eq!(rig.smmu.tlb_entries(), 8);
    // NUM = 1, SCALE = 1: (1 + 1) << 1 = 4 pages of 4 KiB (TG = 1) from 0x10_2000.
    rig.cmd(
        0x12 | (7u64 << 48) | (1 << 12) | (1 << 20),
        0x10_2000 | (1 << 10),
    );
    assert_eq!(rig.smmu.tlb_entries(), 4);
    for i in 0..8u64 {
        let stale_gone = (2..6).contains(&i);
        let hit_before = rig.smmu.stats().tlb_hits;
        rig.smmu
            .translate(SID, 0x10_0000 + i * 0x1000, Access::Read)
            .unwrap();
        assert_eq!(
            rig.smmu.stats().tlb_hits == hit_before,
            stale_gone,
            "page {i}"
        );
    }
}

#[test]
fn tlbi_of_an_address_in_a_block_removes_the_whole_block_4_4_2() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x20_0000, 0x40_0000, 0x20_0000, Prot::RW);
    rig.smmu.translate(SID, 0x3f_f000, Access::Read).unwrap();
    rig.cmd(0x12 | (7u64 << 48), 0x20_0000);
    assert_eq!(rig.smmu.tlb_entries(), 0);
}

#[test]
fn ste_changes_need_cfgi_ste_4_3_1() {
    let rig = Rig::new();
    rig.write_ste(SID, [1 | (0b100 << 1), 0, 0, 0]);
    assert!(rig.smmu.translate(SID, 0x1000, Access::Read).is_ok());
    rig.write_ste(SID, [1, 0, 0, 0]); // now abort
    assert!(
        rig.smmu.translate(SID, 0x1000, Access::Read).is_ok(),
        "cached STE"
    );
    rig.cfgi_ste(SID);
    assert!(rig.smmu.translate(SID, 0x1000, Access::Read).is_err());
    // CFGI_ALL (CFGI_STE_RANGE, range 31) forgets every stream.
    rig.write_ste(SID, [1 | (0b100 << 1), 0, 0, 0]);
    rig.cmd(0x04, 31);
    assert!(rig.smmu.translate(SID, 0x1000, Access::Read).is_ok());
}

#[test]
fn an_illegal_command_stops_the_queue_until_gerrorn_acknowledges_it_7_1() {
    let rig = Rig::new();
    rig.write_ste(SID, [1 | (0b100 << 1), 0, 0, 0]);
    rig.smmu.translate(SID, 0x1000, Access::Read).unwrap();
    rig.write_ste(SID, [1, 0, 0, 0]);
    rig.cmd(0xff, 0); // no such opcode
    rig.cmd(0x03 | (u64::from(SID) << 32), 0);
    let cons = rig.smmu.read32(CMDQ_CONS);
    assert_eq!((cons >> 24) & 0x7f, CERROR_ILL);
    assert_eq!(cons & 0xff, 0, "CONS stays at the bad command");
    assert_eq!(rig.smmu.read32(GERROR) & GERROR_CMDQ_ERR, GERROR_CMDQ_ERR);
    assert_eq!(rig.smmu.take_interrupts().gerror, 1);
    assert!(
        rig.smmu.translate(SID, 0x1000, Access::Read).is_ok(),
        "CFGI not run yet"
    );
    // Software replaces the bad command with a CMD_SYNC and acknowledges.
    rig.poke(CMDQ, 0x46);
    rig.smmu.write32(GERRORN, rig.smmu.read32(GERROR));
    assert_eq!(rig.smmu.read32(CMDQ_CONS), 2);
    assert!(
        rig.smmu.translate(SID, 0x1000, Access::Read).is_err(),
        "CFGI ran"
    );
}

#[test]
fn commands_for_a_missing_stage_are_illegal_4_1() {
    let rig = Rig::with(Features {
        stage2: false,
        ..Features::default()
    });
    rig.cmd(0x28 | (1 << 32), 0); // TLBI_S12_VMALL
    assert_eq!((rig.smmu.read32(CMDQ_CONS) >> 24) & 0x7f, CERROR_ILL);
}

#[test]
fn a_command_fetch_outside_memory_is_cerror_abt_7_1() {
    let rig = Rig::new();
    rig.enable(CR0_SMMUEN | CR0_EVTQEN);
    rig.smmu.write64(CMDQ_BASE, (MEM + 0x1000) | CMDQ_LOG2);
    rig.enable(CR0_SMMUEN | CR0_EVTQEN | CR0_CMDQEN);
    rig.smmu.write32(CMDQ_PROD, 1);
    assert_eq!((rig.smmu.read32(CMDQ_CONS) >> 24) & 0x7f, CERROR_ABT);
}

#[test]
fn cmd_sync_with_msi_writes_its_data_4_7_3() {
    let rig = Rig::new();
    let msi = DATA + 0x800;
    rig.cmd(0x46 | (1 << 12) | (0xabcd_1234u64 << 32), msi);
    assert_eq!(rig.peek(msi) as u32, 0xabcd_1234);
    rig.cmd(0x46 | (1 << 12), 0);
    assert_eq!(
        rig.smmu.take_interrupts().cmd_sync,
        1,
        "wired completion interrupt"
    );
    rig.cmd(0x46 | (3 << 12), 0);
    assert_eq!(
        (rig.smmu.read32(CMDQ_CONS) >> 24) & 0x7f,
        CERROR_ILL,
        "CS = 0b11 is reserved"
    );
}

#[test]
fn a_full_event_queue_overflows_and_loses_records_7_4() {
    let rig = Rig::new();
    for i in 0..(1u32 << EVTQ_LOG2) + 3 {
        let _ = rig
            .smmu
            .translate(1 << SID_BITS, u64::from(i), Access::Read);
    }
    let prod = rig.smmu.read32(EVTQ_PROD);
    assert_eq!(prod & Q_OVF, Q_OVF, "OVFLG toggled");
    assert_eq!(rig.smmu.stats().events_lost, 3);
    assert_eq!(rig.events().len(), 1 << EVTQ_LOG2);
    // Acknowledged (CONS.OVACKFLG = PROD.OVFLG by `events`); the next overflow toggles again.
    for i in 0..(1u32 << EVTQ_LOG2) + 1 {
        let _ = rig
            .smmu
            .translate(1 << SID_BITS, u64::from(i), Access::Read);
    }
    assert_eq!(rig.smmu.read32(EVTQ_PROD) & Q_OVF, 0);
}

#[test]
fn events_are_lost_while_the_event_queue_is_disabled_6_3_9() {
    let rig = Rig::new();
    rig.enable(CR0_SMMUEN | CR0_CMDQEN);
    let r = rig.smmu.translate(1 << SID_BITS, 0, Access::Read);
    assert!(matches!(
        r,
        Err(DmaError::Terminated {
            event: None,
            fault: Some(EventId::BadStreamId)
        })
    ));
    assert_eq!(rig.smmu.stats().events_lost, 1);
}

#[test]
fn two_level_stream_table_follows_l1_descriptors_3_3_3() {
    let rig = Rig::new();
    rig.enable(0);
    let l1 = STRTAB;
    let l2 = STRTAB + 0x1_0000;
    // SPLIT = 6 (64 STEs per level-2 table), 12-bit stream ids.
    rig.smmu
        .write32(STRTAB_BASE_CFG, (STRTAB_FMT_2LVL << 16) | (6 << 6) | 12);
    rig.enable(CR0_CMDQEN | CR0_EVTQEN | CR0_SMMUEN);
    let sid = (3 << 6) | 9;
    rig.poke(l1 + 3 * 8, l2 | 7); // SPAN 7: 64 STEs
    rig.poke(l2 + 9 * 64, 1 | (0b100 << 1));
    assert_eq!(
        rig.smmu.translate(sid, 0x77, Access::Read).unwrap().pa,
        0x77
    );
    // An invalid level-1 descriptor (SPAN 0), and an index past SPAN.
    assert!(matches!(
        rig.smmu.translate((4 << 6) | 1, 0, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::BadStreamId),
            ..
        })
    ));
    rig.poke(l1 + 5 * 8, l2 | 2); // SPAN 2: 2 STEs
    assert!(matches!(
        rig.smmu.translate((5 << 6) | 2, 0, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::BadStreamId),
            ..
        })
    ));
}

#[test]
fn ste_fetch_outside_memory_is_f_ste_fetch_with_the_address_7_3_4() {
    let rig = Rig::new();
    rig.enable(0);
    rig.smmu.write64(STRTAB_BASE, MEM);
    rig.enable(CR0_CMDQEN | CR0_EVTQEN | CR0_SMMUEN);
    assert!(matches!(
        rig.smmu.translate(2, 0, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::SteFetch),
            ..
        })
    ));
    let ev = rig.events()[0];
    assert_eq!((ev_id(&ev), ev[3]), (0x03, MEM + 128));
}

#[test]
fn invalid_cd_is_c_bad_cd_5_4() {
    let (rig, pt) = s1_rig();
    let at = rig.write_cd(0, 7, pt.root().raw());
    rig.poke(at, rig.peek(at) & !(1 << 31));
    rig.cfgi_ste(SID);
    assert!(matches!(
        rig.smmu.translate(SID, 0, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::BadCd),
            ..
        })
    ));
}

#[test]
fn epd0_disables_walks_through_ttb0_5_4() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x4000, DATA, 0x1000, Prot::RW);
    let at = rig.write_cd(0, 7, pt.root().raw());
    rig.poke(at, rig.peek(at) | (1 << 14));
    rig.cfgi_ste(SID);
    assert!(matches!(
        rig.smmu.translate(SID, 0x4000, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::Translation),
            ..
        })
    ));
}

#[test]
fn a_table_outside_memory_is_f_walk_eabt_7_3_11() {
    let rig = Rig::new();
    let root = DATA;
    rig.poke(root, (MEM + 0x1000) | 3); // level-0 entry naming a table past memory
    let cd = rig.write_cd(0, 7, root);
    rig.write_ste(SID, Rig::s1_ste(cd));
    assert!(matches!(
        rig.smmu.translate(SID, 0x42, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::WalkEabt),
            ..
        })
    ));
    let ev = rig.events()[0];
    assert_eq!(ev[3], MEM + 0x1000, "FetchAddr");
}

fn s2_ste(vmid: u16, root: u64) -> [u64; 4] {
    // 40-bit IPA with 4 KiB granule (S2TG 0): two concatenated level-1
    // tables, SL0 = 1; S2PS 2 (40 bits).
    let vtcr = 24 | (1 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (2 << 16);
    [
        1 | (0b110 << 1),
        0,
        u64::from(vmid) | (vtcr << 32) | (1 << 51) | (1 << 58),
        root,
    ]
}

fn s2_table(
    rig: &Rig,
) -> iommu_pgtable::IoPageTable<
    iommu_pgtable::lpae::Lpae,
    std::sync::Arc<iommu_pgtable::GuestTableMemory<Mem>>,
> {
    use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
    let fmt = Lpae::new(LpaeConfig {
        stage: Stage::S2,
        granule: Granule::G4K,
        ias: 40,
        oas: 40,
    })
    .unwrap();
    iommu_pgtable::IoPageTable::new(fmt, rig.tables.clone()).unwrap()
}

#[test]
fn stage2_translates_and_its_faults_carry_s2_and_the_ipa_3_4() {
    let rig = Rig::new();
    let pt = s2_table(&rig);
    map(&pt, 0x8000, DATA, 0x1000, Prot::READ);
    rig.write_ste(SID, s2_ste(3, pt.root().raw()));
    assert_eq!(
        rig.smmu.translate(SID, 0x8008, Access::Read).unwrap().pa,
        DATA + 8
    );
    assert!(matches!(
        rig.smmu.translate(SID, 0x8008, Access::Write),
        Err(DmaError::Terminated {
            event: Some(EventId::Permission),
            ..
        })
    ));
    let _ = rig.smmu.translate(SID, 0x9000, Access::Read);
    let evs = rig.events();
    assert_eq!(evs.len(), 2);
    assert_eq!((evs[1][1] >> 39) & 1, 1, "S2");
    assert_eq!(evs[1][3], 0x9000, "IPA");
    // TLBI_S2_IPA drops the stage-2 entry; S12_VMALL for another VMID does not.
    rig.cmd(0x28 | (4u64 << 32), 0);
    assert_eq!(rig.smmu.tlb_entries(), 1);
    rig.cmd(0x2a | (3u64 << 32), 0x8000);
    assert_eq!(rig.smmu.tlb_entries(), 0);
}

#[test]
fn s2sl0_may_choose_concatenation_where_the_output_size_allows_both_5_2() {
    use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};
    // A 40-bit IPA with a 48-bit output (S2PS 5): a two-entry level-0 root
    // (SL0 = 2) or two concatenated level-1 tables (SL0 = 1) are both valid.
    let cfg = LpaeConfig {
        stage: Stage::S2,
        granule: Granule::G4K,
        ias: 40,
        oas: 48,
    };
    for (start, sl0) in [(0u32, 2u64), (1, 1)] {
        let rig = Rig::new();
        let fmt = Lpae::with_start_level(cfg, start).unwrap();
        let pt = iommu_pgtable::IoPageTable::new(fmt, rig.tables.clone()).unwrap();
        map(&pt, 0xff_ffe0_0000, DATA, 0x1000, Prot::READ);
        let mut ste = s2_ste(3, pt.root().raw());
        ste[2] &= !((3u64 << 38) | (7u64 << 48));
        ste[2] |= (sl0 << 38) | (5u64 << 48);
        rig.write_ste(SID, ste);
        assert_eq!(
            rig.smmu
                .translate(SID, 0xff_ffe0_0010, Access::Read)
                .unwrap()
                .pa,
            DATA + 0x10,
            "start level {start}"
        );
    }
}

#[test]
fn s2sl0_that_disagrees_with_the_table_shape_is_c_bad_ste_5_2() {
    let rig = Rig::new();
    let pt = s2_table(&rig);
    let mut ste = s2_ste(3, pt.root().raw());
    ste[2] &= !(3u64 << 38);
    ste[2] |= 2u64 << 38; // SL0 = 2: start at level 0
    rig.write_ste(SID, ste);
    assert!(matches!(
        rig.smmu.translate(SID, 0, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::BadSte),
            ..
        })
    ));
}

#[test]
fn nested_translation_runs_stage1_tables_through_stage2_3_4() {
    let rig = Rig::new();
    // Stage 2 maps IPA 0..8 MiB one to one (tables, CDs and data live there).
    let s2 = s2_table(&rig);
    s2.map_pages(
        iommu_types::Iova::new(0),
        iommu_types::PhysAddr::new(0),
        0x20_0000,
        4,
        Prot::RW,
    )
    .unwrap();
    // And IPA 1 GiB to DATA.
    map(&s2, 0x4000_0000, DATA, 0x1000, Prot::RW);
    let s1 = rig.s1_table();
    map(&s1, 0x7000, 0x4000_0000, 0x1000, Prot::RW);
    let cd = rig.write_cd(0, 9, s1.root().raw());
    let mut ste = s2_ste(2, s2.root().raw());
    ste[0] = 1 | (0b111 << 1) | cd;
    rig.write_ste(SID, ste);
    assert_eq!(
        rig.smmu.translate(SID, 0x7010, Access::Write).unwrap().pa,
        DATA + 0x10
    );
    // A stage-1 output the stage-2 table does not map faults at stage 2.
    map(&s1, 0x8000, 0x5000_0000, 0x1000, Prot::RW);
    let _ = rig.smmu.translate(SID, 0x8000, Access::Read);
    let ev = rig.events()[0];
    assert_eq!(
        (ev_id(&ev), (ev[1] >> 39) & 1, ev[3]),
        (0x10, 1, 0x5000_0000)
    );
}

#[test]
fn registers_outside_the_window_or_misaligned_read_zero_and_ignore_writes() {
    let rig = Rig::new();
    assert_eq!(rig.smmu.read32(MMIO_SIZE), 0);
    assert_eq!(rig.smmu.read32(CR0 + 1), 0);
    rig.smmu.write32(CR0 + 2, 0);
    rig.smmu.write64(MMIO_SIZE + 8, !0);
    assert_eq!(
        rig.smmu.read32(CR0ACK),
        CR0_SMMUEN | CR0_CMDQEN | CR0_EVTQEN
    );
}

#[test]
fn paused_commands_wait_and_run_when_resumed() {
    let rig = Rig::new();
    rig.smmu.pause_commands(true);
    rig.cmd(0x46, 0);
    assert_ne!(rig.smmu.read32(CMDQ_CONS), rig.smmu.read32(CMDQ_PROD));
    rig.smmu.pause_commands(false);
    assert_eq!(rig.smmu.read32(CMDQ_CONS), rig.smmu.read32(CMDQ_PROD));
}

mod hostile {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any register writes, memory, commands and DMA: no panic, and a
        /// repeated translation gives the same answer.
        #[test]
        fn a_hostile_driver_cannot_break_the_smmu(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            iommu_smmuv3_emu::testing::run(&bytes);
        }
    }

    /// Seeds for the `smmuv3_emu` fuzz target: a driver that sets up a
    /// stream table and queues, then pokes STEs and commands.
    #[test]
    fn the_seed_programs_hold() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for n in 0..16 {
            let mut bytes = Vec::new();
            // STRTAB_BASE at 64 KiB, CMDQ at 128 KiB, EVTQ at 192 KiB, then enable.
            for (op, arg, tail) in [
                (1u8, 0u64, 0x1_0000u64.to_le_bytes().to_vec()),
                (1, 1, (0x2_0000u64 | 6).to_le_bytes().to_vec()),
                (1, 2, (0x3_0000u64 | 4).to_le_bytes().to_vec()),
                (0, 8, 8u32.to_le_bytes().to_vec()),
                (0, 0, 0xdu32.to_le_bytes().to_vec()),
            ] {
                bytes.push(op);
                bytes.extend(arg.to_le_bytes());
                bytes.extend(tail);
            }
            for _ in 0..(8 + n * 4) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.extend(state.to_le_bytes());
            }
            iommu_smmuv3_emu::testing::run(&bytes);
            if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
                let dir = std::path::Path::new(&dir).join("smmuv3_emu");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("prog{n:02}")), &bytes).unwrap();
            }
        }
    }
}

#[test]
fn a_leaf_without_the_access_flag_is_f_access_7_3_14() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x4000, DATA, 0x1000, Prot::RW);
    // Find the level-3 descriptor and clear AF (bit 10).
    let root = pt.root().raw();
    let mut table = root;
    for level in 0..3 {
        let idx = (0x4000u64 >> (39 - 9 * level)) & 0x1ff;
        table = rig.peek(table + 8 * idx) & 0x0000_ffff_ffff_f000;
    }
    let leaf_at = table + 8 * 4;
    rig.poke(leaf_at, rig.peek(leaf_at) & !(1 << 10));
    assert!(matches!(
        rig.smmu.translate(SID, 0x4000, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::Access),
            ..
        })
    ));
    assert_eq!(ev_id(&rig.events()[0]), 0x12);
}

#[test]
fn an_output_address_beyond_ips_is_f_addr_size_7_3_13() {
    let (rig, pt) = s1_rig();
    let at = rig.write_cd(0, 7, pt.root().raw());
    // IPS 0: 32-bit outputs; map above 4 GiB.
    rig.poke(at, rig.peek(at) & !(7 << 32));
    rig.cfgi_ste(SID);
    map(&pt, 0x4000, 0x1_0000_0000, 0x1000, Prot::RW);
    assert!(matches!(
        rig.smmu.translate(SID, 0x4000, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::AddrSize),
            ..
        })
    ));
}

#[test]
fn tlbi_nh_vaa_ignores_the_asid_and_nh_all_empties_stage_1_4_4_2() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x4000, DATA, 0x1000, Prot::RW);
    rig.smmu.translate(SID, 0x4000, Access::Read).unwrap();
    rig.cmd(0x13, 0x4000); // NH_VAA, any ASID
    assert_eq!(rig.smmu.tlb_entries(), 0);
    rig.smmu.translate(SID, 0x4000, Access::Read).unwrap();
    rig.cmd(0x10, 0); // NH_ALL for VMID 0
    assert_eq!(rig.smmu.tlb_entries(), 0);
}

#[test]
fn cfgi_cd_forgets_the_cached_context_descriptor_4_3_2() {
    let (rig, pt) = s1_rig();
    map(&pt, 0x4000, DATA, 0x1000, Prot::RW);
    rig.smmu.translate(SID, 0x4000, Access::Read).unwrap();
    // Invalidate the CD in memory; the cached one still serves the stream.
    rig.poke(CDS, rig.peek(CDS) & !(1 << 31));
    rig.cmd(0x30, 0); // TLB only
    assert!(rig.smmu.translate(SID, 0x4000, Access::Read).is_ok());
    rig.cmd(0x05 | (u64::from(SID) << 32), 0);
    assert!(matches!(
        rig.smmu.translate(SID, 0x4000, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::BadCd),
            ..
        })
    ));
}

#[test]
fn irq_ctrl_is_acknowledged_and_gates_the_interrupts_6_3_16() {
    let rig = Rig::new();
    assert_eq!(
        rig.smmu.read32(IRQ_CTRLACK),
        IRQ_CTRL_EVTQ_IRQEN | IRQ_CTRL_GERROR_IRQEN
    );
    let _ = rig.smmu.translate(1 << SID_BITS, 0, Access::Read);
    assert_eq!(rig.smmu.take_interrupts().evtq, 1);
    rig.smmu.write32(IRQ_CTRL, 0);
    assert_eq!(rig.smmu.read32(IRQ_CTRLACK), 0);
    let _ = rig.smmu.translate(1 << SID_BITS, 0, Access::Read);
    assert_eq!(rig.smmu.take_interrupts().evtq, 0, "recorded, no interrupt");
    assert_eq!(rig.events().len(), 2);
}

#[test]
fn a_gerror_stays_active_until_gerrorn_matches_it_7_5() {
    let rig = Rig::new();
    rig.smmu.raise_gerror(GERROR_SFM_ERR);
    assert_eq!(rig.smmu.read32(GERROR) & GERROR_SFM_ERR, GERROR_SFM_ERR);
    // Raised again while active: no second toggle.
    rig.smmu.raise_gerror(GERROR_SFM_ERR);
    assert_eq!(rig.smmu.read32(GERROR) & GERROR_SFM_ERR, GERROR_SFM_ERR);
    assert_eq!(rig.smmu.take_interrupts().gerror, 1);
    rig.smmu.write32(GERRORN, rig.smmu.read32(GERROR));
    rig.smmu.raise_gerror(GERROR_SFM_ERR);
    assert_eq!(
        rig.smmu.read32(GERROR) & GERROR_SFM_ERR,
        0,
        "toggled back: active again"
    );
    assert_ne!(
        (rig.smmu.read32(GERROR) ^ rig.smmu.read32(GERRORN)) & GERROR_SFM_ERR,
        0
    );
}

#[test]
fn a_stage2_fault_fetching_the_cd_is_reported_as_stage2_class_cd_7_3() {
    let rig = Rig::new();
    let s2 = s2_table(&rig);
    // Stage 2 maps nothing at the CD's IPA.
    let s1 = rig.s1_table();
    let cd = rig.write_cd(0, 9, s1.root().raw());
    let mut ste = s2_ste(2, s2.root().raw());
    ste[0] = 1 | (0b111 << 1) | cd;
    rig.write_ste(SID, ste);
    assert!(matches!(
        rig.smmu.translate(SID, 0x7000, Access::Read),
        Err(DmaError::Terminated {
            event: Some(EventId::Translation),
            ..
        })
    ));
    let ev = rig.events()[0];
    assert_eq!(ev_id(&ev), 0x10);
    assert_eq!((ev[1] >> 39) & 1, 1, "S2");
    assert_eq!((ev[1] >> 40) & 3, 0, "CLASS = CD");
    assert_eq!(ev[3], cd & !0xfff, "the IPA of the CD");
}
