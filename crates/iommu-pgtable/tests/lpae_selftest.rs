//! Linux's io-pgtable-arm self-test scenario, for every stage, granule and IAS.

mod common;

use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, Stage};

#[test]
fn linux_selftest_scenario_holds_for_every_stage_granule_and_ias() {
    let mut ran = 0;
    for stage in [Stage::S1, Stage::S2] {
        for granule in [Granule::G4K, Granule::G16K, Granule::G64K] {
            let max = if granule == Granule::G64K { 52 } else { 48 };
            for ias in (32..=48).chain((max == 52).then_some(52)) {
                // Under Miri, the sizes where some granule's table shape
                // changes (levels, or stage-2 concatenation), and the ends.
                if cfg!(miri) && ![32, 36, 39, 40, 42, 43, 47, 48, 52].contains(&ias) {
                    continue;
                }
                common::selftest(
                    Lpae::new(LpaeConfig {
                        stage,
                        granule,
                        ias,
                        oas: 48,
                    })
                    .unwrap(),
                );
                ran += 1;
            }
        }
    }
    assert_eq!(
        ran,
        if cfg!(miri) {
            2 * (8 + 8 + 9)
        } else {
            2 * (17 + 17 + 18)
        }
    );
    // And the 52-bit output encoding with its 4 TiB blocks.
    common::selftest(
        Lpae::new(LpaeConfig {
            stage: Stage::S1,
            granule: Granule::G64K,
            ias: 52,
            oas: 52,
        })
        .unwrap(),
    );
}
