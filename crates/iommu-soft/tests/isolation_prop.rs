//! The isolation property: random devices with overlapping stream ids
//! (aliases) come and go, groups are claimed, attached, detached and
//! switched, domains map and unmap, failures are injected; after every
//! step, every stream id's DMA through the emulated hardware reaches
//! exactly what its group's current domain maps (nothing an unmap removed
//! still translates), and a failed step changed nothing. The oracle is
//! `iommu_soft::testing`, which the `core` fuzz target runs too.

use iommu_soft::testing::{run, Input, Op, Spec, DEVICES};
use proptest::prelude::*;

fn spec() -> impl Strategy<Value = Spec> {
    (1u8..64, any::<bool>()).prop_map(|(sids, direct)| Spec { sids, direct })
}

fn op() -> impl Strategy<Value = Op> {
    let dev = any::<u8>();
    prop_oneof![
        3 => dev.prop_map(Op::Add),
        1 => dev.prop_map(Op::Remove),
        1 => dev.prop_map(Op::Claim),
        1 => dev.prop_map(Op::Release),
        1 => (dev, any::<u8>()).prop_map(|(d, m)| Op::Attach(d, m)),
        1 => (dev, any::<u8>()).prop_map(|(d, m)| Op::Detach(d, m)),
        1 => (dev, any::<u8>()).prop_map(|(d, t)| Op::Type(d, t)),
        4 => (0u8..4, dev, 0..1024u16, any::<u16>(), 0..1024u16)
            .prop_map(|(dom, dev, page, pages, pa)| Op::Map { dom, dev, page, pages, pa }),
        3 => (0u8..4, dev, 0..1024u16, any::<u16>())
            .prop_map(|(dom, dev, page, pages)| Op::Unmap { dom, dev, page, pages }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(point, skip)| Op::Arm { point, skip }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 256 }))]

    #[test]
    fn every_device_reaches_exactly_what_its_groups_current_domain_maps(
        specs in prop::array::uniform6(spec()),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(&Input { specs, ops });
    }

    #[test]
    fn random_inputs_keep_isolation_and_roll_back(bytes in prop::collection::vec(any::<u8>(), 0..500)) {
        run(&Input::decode(&bytes));
    }
}

/// The seed corpus of the `core` fuzz target (written when
/// `IOMMU_FUZZ_SEEDS` names a directory).
#[test]
fn the_seed_sequences_hold() {
    let gpu_and_audio = [
        Spec {
            sids: 0b11,
            direct: false,
        },
        Spec {
            sids: 0b10,
            direct: false,
        },
        Spec {
            sids: 0b100,
            direct: true,
        },
        Spec {
            sids: 0b1100,
            direct: false,
        }, // spans the two groups above
        Spec {
            sids: 0b10000,
            direct: true,
        },
        Spec {
            sids: 0,
            direct: false,
        },
    ];
    assert_eq!(gpu_and_audio.len(), DEVICES);
    let map = |dom, dev, page, pages| Op::Map {
        dom,
        dev,
        page,
        pages,
        pa: page,
    };
    let unmap = |dom, dev, page, pages| Op::Unmap {
        dom,
        dev,
        page,
        pages,
    };
    let seeds: Vec<(&str, Vec<Op>)> = vec![
        (
            "groups-and-dma",
            vec![
                Op::Add(0),
                Op::Add(1),
                Op::Add(2),
                Op::Add(3),
                Op::Add(4),
                Op::Add(5),
                map(9, 0, 0, 300),
                map(9, 2, 64, 8),
                unmap(9, 0, 0, 20),
                Op::Remove(1),
                map(9, 0, 4, 1),
                Op::Remove(0),
            ],
        ),
        (
            "vfio",
            vec![
                Op::Add(4),
                Op::Claim(4),
                Op::Attach(4, 0),
                map(0, 4, 512, 600),
                Op::Attach(4, 1),
                Op::Detach(4, 1),
                unmap(0, 4, 512, 600),
                Op::Release(4),
                Op::Type(4, 0),
                Op::Type(4, 1),
                Op::Type(4, 2),
                Op::Type(4, 4),
            ],
        ),
        (
            "failures",
            vec![
                Op::Arm { point: 8, skip: 0 },
                Op::Add(2),
                Op::Arm { point: 2, skip: 1 },
                Op::Add(0),
                Op::Add(1),
                Op::Arm { point: 3, skip: 0 },
                map(9, 1, 1, 513),
                Op::Arm { point: 7, skip: 0 },
                Op::Add(4),
                Op::Arm { point: 1, skip: 0 },
                Op::Claim(2),
                Op::Type(2, 0),
                Op::Arm { point: 4, skip: 0 },
                map(0, 0, 3, 3),
            ],
        ),
    ];
    for (name, ops) in seeds {
        let input = Input {
            specs: gpu_and_audio,
            ops,
        };
        let bytes = input.encode();
        assert_eq!(Input::decode(&bytes), input);
        run(&input);
        iommu_soft::testing::save_seed("core", name, &bytes);
    }
}
