//! Random map/unmap/translate sequences against a plain interval map, for
//! every LPAE stage and granule.

mod common;

use common::lpae;
use iommu_pgtable::lpae::{Granule, Stage};
use proptest::prelude::*;

macro_rules! model_test {
    ($name:ident, $stage:expr, $granule:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 32 }))]
            #[test]
            fn $name(ops in proptest::collection::vec(common::op(common::window(&lpae($stage, $granule))), 1..if cfg!(miri) { 30 } else { 100 })) {
                common::model_check(lpae($stage, $granule), &ops)?;
            }
        }
    };
}

model_test!(
    lpae_s1_4k_agrees_with_an_interval_map,
    Stage::S1,
    Granule::G4K
);
model_test!(
    lpae_s1_16k_agrees_with_an_interval_map,
    Stage::S1,
    Granule::G16K
);
model_test!(
    lpae_s1_64k_agrees_with_an_interval_map,
    Stage::S1,
    Granule::G64K
);
model_test!(
    lpae_s2_4k_agrees_with_an_interval_map,
    Stage::S2,
    Granule::G4K
);
model_test!(
    lpae_s2_16k_agrees_with_an_interval_map,
    Stage::S2,
    Granule::G16K
);
model_test!(
    lpae_s2_64k_agrees_with_an_interval_map,
    Stage::S2,
    Granule::G64K
);
