//! The isolation property: random devices with overlapping stream ids
//! (aliases) come and go, groups are claimed, attached, detached and
//! switched, domains map and unmap; after every step, every stream id's DMA
//! through the emulated hardware reaches exactly what its group's current
//! domain maps, and nothing an unmap removed (strict: the unmap returned)
//! still translates.

use iommu_core::{
    Bus, Device, DeviceBuilder, DmaOwner, Domain, DomainType, Iommu, Iova, PhysAddr, Prot,
    ReservedRegion, ResvType,
};
use iommu_soft::{Access, SoftIommu};
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

const PAGE: u64 = 0x1000;
const M2: u64 = 0x20_0000;

#[derive(Clone, Debug)]
struct Spec {
    sids: Vec<u32>,
    direct: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Add(usize),
    Remove(usize),
    Claim(usize),
    Release(usize),
    Attach(usize, usize),
    Detach(usize, usize),
    Type(usize, u8),
    /// Map in an unmanaged domain (`Some`) or the device's default domain.
    Map {
        dom: Option<usize>,
        dev: usize,
        page: u64,
        pages: u64,
        pa_page: u64,
    },
    Unmap {
        dom: Option<usize>,
        dev: usize,
        page: u64,
        pages: u64,
    },
}

const DEVICES: usize = 6;
const DOMAINS: usize = 2;

fn spec() -> impl Strategy<Value = Spec> {
    (prop::collection::btree_set(0..6u32, 1..3), any::<bool>()).prop_map(|(s, direct)| Spec {
        sids: s.into_iter().collect(),
        direct,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let dev = 0..DEVICES;
    prop_oneof![
        3 => dev.clone().prop_map(Op::Add),
        1 => dev.clone().prop_map(Op::Remove),
        1 => dev.clone().prop_map(Op::Claim),
        1 => dev.clone().prop_map(Op::Release),
        1 => (dev.clone(), 0..DOMAINS).prop_map(|(d, m)| Op::Attach(d, m)),
        1 => (dev.clone(), 0..DOMAINS).prop_map(|(d, m)| Op::Detach(d, m)),
        1 => (dev.clone(), 0..4u8).prop_map(|(d, t)| Op::Type(d, t)),
        4 => (prop::option::of(0..DOMAINS), dev.clone(), 0..1024u64, 1..600u64, 0..1024u64)
            .prop_map(|(dom, dev, page, pages, pa_page)| Op::Map { dom, dev, page, pages, pa_page }),
        3 => (prop::option::of(0..DOMAINS), dev, 0..1024u64, 1..600u64)
            .prop_map(|(dom, dev, page, pages)| Op::Unmap { dom, dev, page, pages }),
    ]
}

struct World {
    iommu: Iommu,
    bus: Bus,
    soft: SoftIommu,
    specs: Vec<Spec>,
    devs: Vec<Option<Arc<Device>>>,
    doms: Vec<Domain>,
    owner: DmaOwner,
    /// IOVAs worth translating: everything any map or unmap touched.
    probes: BTreeSet<u64>,
}

impl World {
    fn new(specs: Vec<Spec>) -> World {
        let iommu = Iommu::default();
        let bus = Bus::new(&iommu, "pci").unwrap();
        let soft = SoftIommu::default();
        iommu.bus_set_iommu(&bus, Arc::new(soft.clone())).unwrap();
        let doms = (0..DOMAINS)
            .map(|_| iommu.domain_alloc(&bus, DomainType::Unmanaged).unwrap())
            .collect();
        World {
            iommu,
            bus,
            soft,
            specs,
            devs: vec![None; DEVICES],
            doms,
            owner: DmaOwner::new(),
            probes: BTreeSet::new(),
        }
    }

    fn group(&self, i: usize) -> Option<iommu_core::Group> {
        self.devs[i].as_ref()?.iommu_group()
    }

    fn domain(&self, dom: Option<usize>, dev: usize) -> Option<Domain> {
        match dom {
            Some(d) => Some(self.doms[d].clone()),
            None => self.group(dev)?.default_domain(),
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let before = self.iommu.group_ids();
        let lowest_free = (0..).find(|id| !before.contains(id)).unwrap();
        self.step(op);
        // A group made by this step got the lowest free id.
        for id in self.iommu.group_ids() {
            if !before.contains(&id) {
                prop_assert_eq!(id, lowest_free, "new group id");
            }
        }
        Ok(())
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Add(i) => {
                if self.devs[i].is_none() {
                    let mut b = DeviceBuilder::new(format!("0000:00:{i:02x}.0"))
                        .stream_ids(self.specs[i].sids.iter().copied())
                        .pci(true);
                    if self.specs[i].direct {
                        b = b.resv_region(ReservedRegion::new(
                            0x7000_0000 + i as u64 * 0x4000,
                            0x3000,
                            Prot::RW,
                            ResvType::Direct,
                        ));
                        for k in 0..4 {
                            self.probes
                                .insert(0x7000_0000 + i as u64 * 0x4000 + k * PAGE);
                        }
                    }
                    self.devs[i] = Some(self.bus.add_device(b).unwrap());
                }
            }
            Op::Remove(i) => {
                if let Some(d) = self.devs[i].take() {
                    self.bus.remove_device(&d).unwrap();
                }
            }
            Op::Claim(i) => {
                if let Some(g) = self.group(i) {
                    let _ = self.iommu.group_claim_dma_owner(&g, self.owner);
                }
            }
            Op::Release(i) => {
                if let Some(g) = self.group(i) {
                    if g.dma_owner().is_some() {
                        self.iommu.group_release_dma_owner(&g);
                    }
                }
            }
            Op::Attach(i, d) => {
                if let Some(g) = self.group(i) {
                    let _ = self.iommu.attach_group(&self.doms[d], &g);
                }
            }
            Op::Detach(i, d) => {
                if let Some(g) = self.group(i) {
                    self.iommu.detach_group(&self.doms[d], &g);
                }
            }
            Op::Type(i, t) => {
                if let Some(g) = self.group(i) {
                    let word = ["identity", "DMA", "DMA-FQ", "auto"][t as usize];
                    let _ = self
                        .iommu
                        .sysfs()
                        .write(&format!("{}/type", g.sysfs_dir()), word);
                }
            }
            Op::Map {
                dom,
                dev,
                page,
                pages,
                pa_page,
            } => {
                if let Some(d) = self.domain(dom, dev) {
                    let iova = page * PAGE * 8 % (2 * M2 * 64);
                    let _ = d.map(
                        Iova::new(iova),
                        PhysAddr::new(0x1_0000_0000 + pa_page * PAGE),
                        pages * PAGE,
                        Prot::RW,
                    );
                    self.probe_range(iova, pages * PAGE);
                }
            }
            Op::Unmap {
                dom,
                dev,
                page,
                pages,
            } => {
                if let Some(d) = self.domain(dom, dev) {
                    let iova = page * PAGE * 8 % (2 * M2 * 64);
                    d.unmap(Iova::new(iova), pages * PAGE);
                    self.probe_range(iova, pages * PAGE);
                }
            }
        }
    }

    fn probe_range(&mut self, iova: u64, len: u64) {
        // Both ends, a page either side, and the 2 MiB boundaries inside.
        for at in [
            iova.saturating_sub(PAGE),
            iova,
            iova + len - PAGE,
            iova + len,
        ] {
            self.probes.insert(at);
        }
        let mut b = (iova / M2 + 1) * M2;
        while b < iova + len {
            self.probes.insert(b - PAGE);
            self.probes.insert(b);
            b += M2;
        }
    }

    /// The invariants, checked through the emulated hardware.
    fn check(&self) -> Result<(), TestCaseError> {
        // Which group owns each stream id, from the grouped devices.
        let mut owner: HashMap<u32, iommu_core::Group> = HashMap::new();
        for d in self.devs.iter().flatten() {
            let Some(g) = d.iommu_group() else { continue };
            for &sid in d.stream_ids() {
                if let Some(prev) = owner.insert(sid, g.clone()) {
                    prop_assert_eq!(&prev, &g, "stream id {} in two groups", sid);
                }
            }
        }
        // The hardware's stream table is exactly the owners' current domains.
        let mut expected: Vec<u32> = owner
            .iter()
            .filter(|(_, g)| g.domain().is_some())
            .map(|(&s, _)| s)
            .collect();
        expected.sort_unstable();
        prop_assert_eq!(self.soft.stream_ids(), expected, "stream-table entries");
        for (&sid, g) in &owner {
            prop_assert_eq!(self.soft.stream_domain(sid), g.domain(), "stream {}", sid);
        }
        // DMA of every stream id reaches exactly what its domain maps.
        for d in self.devs.iter().flatten() {
            for &sid in d.stream_ids() {
                let domain = owner.get(&sid).and_then(|g| g.domain());
                for &iova in &self.probes {
                    let want = domain
                        .as_ref()
                        .and_then(|dom| dom.iova_to_phys(Iova::new(iova)));
                    let got = self
                        .soft
                        .translate_stream(d, sid, Iova::new(iova), Access::Read)
                        .ok();
                    prop_assert_eq!(got, want, "{} stream {} at {:#x}", d.name(), sid, iova);
                }
            }
        }
        // sysfs agrees with the groups, and ids are the lowest free.
        let ids = self.iommu.group_ids();
        let mut listed: Vec<u32> = self
            .iommu
            .sysfs()
            .list("kernel/iommu_groups")
            .unwrap()
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        listed.sort_unstable();
        prop_assert_eq!(&listed, &ids);
        for d in self.devs.iter().flatten() {
            let link = format!("{}/iommu_group", d.sysfs_dir());
            let resolved = self.iommu.sysfs().resolve(&link).ok();
            prop_assert_eq!(
                resolved,
                d.iommu_group().map(|g| g.sysfs_dir()),
                "{}",
                d.name()
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 2 } else { 256 }))]

    #[test]
    fn every_device_reaches_exactly_what_its_groups_current_domain_maps(
        specs in prop::collection::vec(spec(), DEVICES),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut w = World::new(specs);
        for op in &ops {
            w.apply(op)?;
            w.check().map_err(|e| TestCaseError::fail(format!("after {op:?}: {e}")))?;
        }
    }
}
