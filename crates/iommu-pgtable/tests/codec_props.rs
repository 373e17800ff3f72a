//! The walker's shortcuts must agree with the full codec, for every format:
//! `kind` with `decode` on any 64-bit value, `table_bits` with `kind` and
//! `encode_table`, `leaf_bits` with `kind` and `encode_leaf`, and
//! `leaf_step` with encoding each leaf of a run.

use iommu_pgtable::amd::{AmdV1, AmdV1Selftest};
use iommu_pgtable::lpae::{Granule, Lpae, LpaeConfig, LpaeQuirks, Stage};
use iommu_pgtable::riscv::{Riscv, RiscvStage};
use iommu_pgtable::vtd::{VtdFormat, VtdSl};
use iommu_pgtable::x86::X86_64;
use iommu_pgtable::{Format, Pte, PteKind};
use iommu_types::{PhysAddr, Prot};
use proptest::prelude::*;

fn formats() -> Vec<Box<dyn Format>> {
    let mut v: Vec<Box<dyn Format>> = Vec::new();
    for stage in [Stage::S1, Stage::S2] {
        for granule in [Granule::G4K, Granule::G16K, Granule::G64K] {
            v.push(Box::new(
                Lpae::new(LpaeConfig {
                    stage,
                    granule,
                    ias: 48,
                    oas: 48,
                })
                .unwrap(),
            ));
        }
    }
    v.push(Box::new(
        Lpae::new(LpaeConfig {
            stage: Stage::S1,
            granule: Granule::G64K,
            ias: 52,
            oas: 52,
        })
        .unwrap(),
    ));
    v.push(Box::new(
        Lpae::stage1_4k(48, 48)
            .unwrap()
            .with_quirks(LpaeQuirks { non_secure: true }),
    ));
    for l in 3..=5 {
        v.push(Box::new(VtdSl::new(l, 52).unwrap()));
        v.push(Box::new(Riscv::new(l, RiscvStage::First).unwrap()));
        v.push(Box::new(Riscv::new(l, RiscvStage::Second).unwrap()));
    }
    for m in 1..=6 {
        v.push(Box::new(AmdV1::new(m).unwrap()));
        if m <= 5 {
            v.push(Box::new(AmdV1Selftest::new(m).unwrap()));
        }
    }
    for l in 4..=5 {
        v.push(Box::new(X86_64::new(l, 52).unwrap()));
    }
    v.push(Box::new(X86_64::new(4, 39).unwrap()));
    v.push(Box::new(VtdFormat::FirstStage(X86_64::new(4, 48).unwrap())));
    v.push(Box::new(VtdFormat::SecondStage(VtdSl::new(4, 48).unwrap())));
    v
}

fn kind_of(p: Pte) -> PteKind {
    match p {
        Pte::Invalid => PteKind::Invalid,
        Pte::Table(_) => PteKind::Table,
        Pte::Leaf { .. } => PteKind::Leaf,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 16 } else { 3000 }))]
    #[test]
    fn kind_agrees_with_decode(pte in any::<u64>(), low in 0u64..16, pick in any::<prop::sample::Index>()) {
        // Mix fully random values with ones whose low (type) bits vary over all small patterns.
        let fmts = formats();
        let f = &fmts[pick.index(fmts.len())];
        for pte in [pte, (pte & !0xff) | low, pte & !0xfff | low] {
            for level in 0..f.geometry().levels {
                prop_assert_eq!(f.kind(pte, level), kind_of(f.decode(pte, level)), "{} level {} pte {:#x}", f.name(), level, pte);
            }
        }
    }

    #[test]
    fn leaf_step_matches_encoding_each_leaf(page in 0u64..(1 << 20), count in 1usize..600, bits in 0u32..64, pick in any::<prop::sample::Index>()) {
        let fmts = formats();
        let f = &fmts[pick.index(fmts.len())];
        let geo = *f.geometry();
        let level = geo.levels - 1;
        let size = geo.entry_size(level);
        let prot = Prot::from_bits_truncate(bits) | Prot::READ;
        let pa = PhysAddr::new(page * size % (1u64 << geo.oas.min(52)));
        // The walker asks only about runs inside the output space.
        prop_assume!(geo.output_fits(pa.raw(), size * count as u64));
        if let Some(step) = f.leaf_step(pa, size, count) {
            let first = f.encode_leaf(pa, level, prot);
            for k in [1u64, count as u64 / 2, count as u64 - 1] {
                let direct = f.encode_leaf(pa.wrapping_add(k * size), level, prot);
                prop_assert_eq!(first.wrapping_add(k * step), direct, "{} k {}", f.name(), k);
            }
        }
    }

    #[test]
    fn leaf_bits_match_only_leaves_and_every_readable_leaf(pte in any::<u64>(), low in 0u64..0x1000, page in 0u64..(1 << 20), bits in 0u32..64, pick in any::<prop::sample::Index>()) {
        let fmts = formats();
        let f = &fmts[pick.index(fmts.len())];
        let geo = *f.geometry();
        for level in 0..geo.levels {
            let Some(lb) = f.leaf_bits(level) else { continue };
            prop_assert!(geo.is_leaf_level(level), "{} level {} holds no leaves", f.name(), level);
            for pte in [pte, (pte & !0xfff) | low, pte | lb.type_bits] {
                if pte & lb.type_mask == lb.type_bits {
                    prop_assert_eq!(f.kind(pte, level), PteKind::Leaf, "{} level {} pte {:#x}", f.name(), level, pte);
                }
            }
            // What the walker writes for a readable mapping takes the fast path.
            let size = geo.entry_size(level);
            let pa = PhysAddr::new(page.wrapping_mul(size) % (1u64 << geo.oas.min(52)));
            let leaf = f.encode_leaf(pa, level, Prot::from_bits_truncate(bits) | Prot::READ);
            prop_assert_eq!(leaf & lb.type_mask, lb.type_bits, "{} level {} leaf {:#x}", f.name(), level, leaf);
        }
    }

    #[test]
    fn table_bits_agree_with_kind_and_encode_table(pte in any::<u64>(), low in 0u64..0x1000, frame in any::<u64>(), pick in any::<prop::sample::Index>()) {
        let fmts = formats();
        let f = &fmts[pick.index(fmts.len())];
        let geo = *f.geometry();
        for level in 0..geo.levels - 1 {
            let Some(bits) = f.table_bits(level) else { continue };
            for pte in [pte, (pte & !0xfff) | low] {
                let is_table = pte & bits.type_mask == bits.type_bits;
                prop_assert_eq!(is_table, f.kind(pte, level) == PteKind::Table, "{} level {} pte {:#x}", f.name(), level, pte);
            }
            // Any table address the format can hold: aligned to a granule, inside the output space.
            let t = PhysAddr::new((frame << geo.granule_shift) % (1u64 << geo.oas.min(63)));
            let desc = f.encode_table(t, level);
            prop_assert_eq!(desc, t.raw().wrapping_add(bits.tag), "{} level {}", f.name(), level);
            prop_assert_eq!(f.decode(desc, level), Pte::Table(t));
        }
    }
}
