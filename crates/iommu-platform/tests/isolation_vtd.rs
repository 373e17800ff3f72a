//! The core's isolation oracle on the VT-d driver and the emulated unit,
//! in legacy and in scalable mode: random operation sequences (add,
//! remove, claim, attach, detach, type changes, map, unmap, a wedged unit)
//! and after each, every requester id's DMA reaches exactly what its
//! group's current domain maps, through context entries, PASID entries,
//! page tables and caches that only the driver's invalidations empty.

use iommu_platform::testing::{run_vtd, VtdHardware};
use iommu_soft::testing::{run_hardware, save_seed, seed_bytes, Input};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn dma_reaches_exactly_what_the_current_domain_maps(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        scalable in any::<bool>(),
    ) {
        run_vtd(&bytes, scalable);
    }
}

/// Deterministic sequences, also the seed corpus of the `core_vtd` fuzz
/// target (written when `IOMMU_FUZZ_SEEDS` names a directory).
#[test]
fn the_seed_sequences_hold_on_the_vtd_in_both_modes() {
    for (n, bytes) in seed_bytes(0x9e37_79b9_7f4a_7c15, 24).iter().enumerate() {
        run_vtd(bytes, false);
        run_vtd(bytes, true);
        save_seed("core_vtd", &format!("seq{n:02}"), bytes);
    }
}

/// The oracle is not vacuous: a device added, a page mapped in its
/// default domain and unmapped, and the unit walked tables and ran the
/// driver's invalidations while the oracle checked.
#[test]
fn the_oracle_translates_through_the_emulated_unit() {
    for scalable in [false, true] {
        let input = Input::smoke();
        let hw = VtdHardware::small(scalable);
        let emu = hw.0.hw.clone();
        run_hardware(&input, Box::new(hw));
        let stats = emu.stats();
        assert!(stats.walks > 0 && stats.iotlb_hits > 0, "{stats:?}");
        assert!(stats.descriptors > 4, "{stats:?}");
    }
}
