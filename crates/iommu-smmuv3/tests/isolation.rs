//! The core's isolation oracle on this driver and the emulated SMMUv3:
//! random operation sequences (add, remove, claim, attach, detach, type
//! changes, map, unmap) and after each, every stream's DMA reaches exactly
//! what its group's current domain maps, through STEs, CDs, page tables
//! and a TLB that only the driver's commands invalidate; on one SMMU and
//! on several (stream ids then differ from the devices' ids).

use iommu_soft::testing::{run_hardware, save_seed, seed_bytes, Input};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn dma_reaches_exactly_what_the_current_domain_maps(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        smmus in 1usize..=3,
    ) {
        iommu_smmuv3::testing::run_with_smmus(&bytes, smmus);
    }
}

/// Deterministic sequences, also the seed corpus of the `core_smmuv3`
/// fuzz target (written when `IOMMU_FUZZ_SEEDS` names a directory).
#[test]
fn the_seed_sequences_hold_on_the_smmuv3() {
    for (n, bytes) in seed_bytes(0x2545_f491_4f6c_dd1d, 24).iter().enumerate() {
        iommu_smmuv3::testing::run(bytes);
        iommu_smmuv3::testing::run_with_smmus(bytes, 2);
        save_seed("core_smmuv3", &format!("seq{n:02}"), bytes);
    }
}

/// The oracle is not vacuous: a device added, a page mapped in its
/// default domain and unmapped, and the emulator walked tables and ran
/// the driver's invalidations while the oracle checked.
#[test]
fn the_oracle_translates_through_the_emulator() {
    use iommu_smmuv3::testing::EmuHardware;
    let input = Input::smoke();
    let hw = EmuHardware::small();
    let emu = hw.0.hw.clone();
    run_hardware(&input, Box::new(hw));
    let stats = emu.stats();
    assert!(stats.walks > 0 && stats.tlb_hits > 0, "{stats:?}");
    assert!(stats.commands > 10, "{stats:?}");
}

/// Two SMMUs: one unmanaged domain offered to a group behind each. It
/// binds to the first; the second attach is refused and that group stays
/// blocked, while the oracle checks every step (a domain taken by both
/// SMMUs would leave the second one's TLB stale after the unmap).
#[test]
fn a_domain_offered_to_two_smmus_serves_the_first_only() {
    use iommu_soft::testing::Op;
    let map = |page, pa| Op::map_unmanaged(0, page, 4, pa);
    let unmap = |page| Op::unmap_unmanaged(0, page, 2);
    let input = Input::two_devices(vec![
        Op::Add(0),
        Op::Add(1),
        Op::Claim(0),
        Op::Claim(1),
        Op::Attach(0, 0),
        Op::Attach(1, 0),
        map(16, 40),
        unmap(16),
        map(16, 80),
        Op::Detach(0, 0),
        unmap(18),
        Op::Attach(1, 0),
        Op::Release(0),
        Op::Release(1),
    ]);
    let hw = iommu_smmuv3::testing::EmuHardware::with_smmus(2);
    let smmus = hw.0.smmus.clone();
    run_hardware(&input, Box::new(hw));
    let walks: Vec<u64> = smmus.iter().map(|s| s.stats().walks).collect();
    assert!(walks.iter().all(|&w| w > 0), "walks per SMMU {walks:?}");
}
