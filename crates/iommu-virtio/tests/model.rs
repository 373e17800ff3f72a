//! Model-based test: random request sequences run on the device and on a
//! plain reference of the specification's semantics
//! (`iommu_virtio::testing::Model`); every status and every translation
//! must agree, and a refused request must leave the device as it was. The
//! fuzz targets replay the same oracles; this writes their seed corpora.

use iommu_virtio::spec::{attach, map};
use iommu_virtio::testing::{decode_ops, run_ops, run_request, write_seeds, Op};
use iommu_virtio::Request;
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let dom = 0u32..4;
    let ep = 0u32..4;
    let addr = 0u64..64;
    prop_oneof![
        (
            dom.clone(),
            ep.clone(),
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.05)
        )
            .prop_map(|(domain, endpoint, b, r)| Op::Req(Request::Attach {
                domain,
                endpoint,
                flags: if b { attach::BYPASS } else { 0 },
                reserved: u32::from(r),
            })),
        (dom.clone(), ep.clone())
            .prop_map(|(domain, endpoint)| Op::Req(Request::Detach { domain, endpoint })),
        (dom.clone(), addr.clone(), 0u64..12, 0u64..1000, 0u32..8).prop_map(
            |(domain, s, len, p, flags)| Op::Req(Request::Map {
                domain,
                virt_start: s,
                virt_end: s + len,
                phys_start: p,
                flags,
            })
        ),
        (dom, addr.clone(), 0u64..24, prop::bool::weighted(0.05)).prop_map(
            |(domain, s, len, r)| Op::Req(Request::Unmap {
                domain,
                virt_start: s,
                virt_end: s + len,
                reserved: u32::from(r),
            })
        ),
        (ep, addr, any::<bool>()).prop_map(|(e, a, w)| Op::Translate(e, a, w)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_sequences_agree_with_the_reference(ops in prop::collection::vec(op(), 1..80)) {
        run_ops(&ops);
    }

    #[test]
    fn decoded_byte_sequences_agree_with_the_reference(data in prop::collection::vec(any::<u8>(), 0..640)) {
        run_ops(&decode_ops(&data));
    }

    #[test]
    fn any_bytes_are_handled_or_left_unwritten(data in prop::collection::vec(any::<u8>(), 0..120)) {
        run_request(&data);
    }
}

#[test]
fn the_request_seeds_hold() {
    let requests = [
        Request::Attach {
            domain: 1,
            endpoint: 0,
            flags: attach::BYPASS,
            reserved: 0,
        },
        Request::Detach {
            domain: 1,
            endpoint: 1,
        },
        Request::Map {
            domain: 1,
            virt_start: 0,
            virt_end: 63,
            phys_start: 0x1000,
            flags: map::READ | map::WRITE,
        },
        Request::Unmap {
            domain: 1,
            virt_start: 0,
            virt_end: 63,
            reserved: 0,
        },
        Request::Probe { endpoint: 0 },
    ];
    let mut seeds = Vec::new();
    for r in requests {
        for w in [4u8, 68, 30] {
            let mut s = vec![w];
            s.extend_from_slice(&r.encode());
            run_request(&s);
            seeds.push(s);
        }
    }
    write_seeds("virtio_request", &seeds);
}

#[test]
fn the_sequence_seeds_hold() {
    // attach 1 <- 0, map 1 [3, 13], translate, unmap, detach; then a bypass
    // domain, a split unmap and a map over the reserved region.
    let seeds: Vec<Vec<u8>> = vec![
        vec![
            0, 1, 0, 0, 0, 0, 1, 0, //
            2, 1, 0, 3, 10, 7, 3, 0, //
            4, 0, 0, 5, 0, 0, 1, 0, //
            3, 1, 0, 3, 10, 0, 0, 0, //
            1, 1, 0, 0, 0, 0, 0, 0,
        ],
        vec![
            0, 2, 1, 0, 0, 0, 5, 0, //
            2, 2, 1, 0, 4, 0, 1, 0, //
            0, 3, 2, 0, 0, 0, 1, 0, //
            2, 3, 2, 10, 10, 1, 3, 0, //
            3, 3, 2, 12, 2, 0, 0, 0, //
            0, 3, 0, 0, 0, 0, 1, 0, //
            2, 3, 0, 38, 5, 0, 3, 0,
        ],
    ];
    for s in &seeds {
        run_ops(&decode_ops(s));
    }
    write_seeds("virtio_ops", &seeds);
}
