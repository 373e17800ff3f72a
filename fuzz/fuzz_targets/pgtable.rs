//! Every page-table format against the table-shape model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iommu_pgtable::testing::run(&iommu_pgtable::testing::Input::decode(data));
});
