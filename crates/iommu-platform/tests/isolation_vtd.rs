//! The core's isolation oracle on the VT-d driver and the emulated unit,
//! in legacy and in scalable mode: random operation sequences (add,
//! remove, claim, attach, detach, type changes, map, unmap, a wedged unit)
//! and after each, every requester id's DMA reaches exactly what its
//! group's current domain maps, through context entries, PASID entries,
//! page tables and caches that only the driver's invalidations empty.

use iommu_platform::testing::{run_vtd, VtdHardware};
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
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..24 {
        let len = 64 + n * 24;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        run_vtd(&bytes, false);
        run_vtd(&bytes, true);
        if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir).join("core_vtd");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seq{n:02}")), &bytes).unwrap();
        }
    }
}

/// The oracle is not vacuous: a device added, a page mapped in its
/// default domain and unmapped, and the unit walked tables and ran the
/// driver's invalidations while the oracle checked.
#[test]
fn the_oracle_translates_through_the_emulated_unit() {
    use iommu_soft::testing::{run_hardware, Input, Op, Spec};
    for scalable in [false, true] {
        let spec = Spec {
            sids: 0b1,
            direct: true,
        };
        let input = Input {
            specs: [spec; iommu_soft::testing::DEVICES],
            ops: vec![
                Op::Add(0),
                Op::Map {
                    dom: 9,
                    dev: 0,
                    page: 3,
                    pages: 2,
                    pa: 7,
                },
                Op::Unmap {
                    dom: 9,
                    dev: 0,
                    page: 3,
                    pages: 1,
                },
                Op::Type(0, 0),
            ],
        };
        let hw = VtdHardware::small(scalable);
        let emu = hw.0.hw.clone();
        run_hardware(&input, Box::new(hw));
        let stats = emu.stats();
        assert!(stats.walks > 0 && stats.iotlb_hits > 0, "{stats:?}");
        assert!(stats.descriptors > 4, "{stats:?}");
    }
}
