//! The core's isolation and rollback oracle, and its fuzz harness (feature
//! `test-utils`).
//!
//! [`run`] replays one sequence of [`Op`]s on two platforms built from the
//! same device [`Spec`]s:
//! - one behind a [`SoftIommu`], where after every step each stream id's
//!   DMA through the emulated hardware must reach exactly what its group's
//!   current domain maps (so nothing a strict unmap removed still
//!   translates), and the stream table must hold exactly the grouped ids;
//! - one behind the failure-injecting `MockIommu`, where failures are armed
//!   at the driver's and the core's fallible steps, and a step that fails
//!   must leave everything ([`Snapshot`]) as it was.
//!
//! On both, after every step: a stream id belongs to at most one group, a
//! new group gets the lowest free id, and sysfs agrees with the groups.
//! Any disagreement panics. [`Input::decode`] turns any bytes into a run.
//!
//! The hardware can be wedged ([`Op::Wedge`]): its invalidations then fail.
//! The isolation check allows then exactly what the core owned up to: an
//! address whose unmap's invalidation failed, in a domain that still owes
//! one ([`Domain::invalidation_owed`]), may still translate to what it was
//! mapped to before; nothing else, and nothing once a flush-all of the
//! domain has completed. Hardware that caches its stream configuration
//! (an SMMU's STEs) cannot be told of a detach while wedged either: there,
//! a stream may also go on translating through any domain it was on since
//! the hardware wedged, until the hardware is back.
//!
//! [`run_hardware`] replays the same sequence on any other driver whose
//! hardware can be asked what a DMA reaches ([`Hardware`]), with the same
//! isolation check, so a real driver on emulated hardware answers to the
//! same oracle as the reference one.

use crate::{Access, SoftIommu};
use iommu_core::testing::{MockIommu, MockOp, Snapshot};
use iommu_core::{
    Bus, Device, DeviceBuilder, DmaOwner, Domain, DomainType, Errno, FailPoint, Group, Iommu,
    IommuOps, Iova, PhysAddr, Prot, ReservedRegion, ResvType,
};
use iommu_types::ByteReader;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

const PAGE: u64 = 0x1000;
const M2: u64 = 0x20_0000;
/// IOVAs fall in this window, so that maps and unmaps meet.
const WINDOW: u64 = 128 * M2;

/// Devices an input describes.
pub const DEVICES: usize = 6;
/// Unmanaged domains each platform keeps for attaching.
pub const DOMAINS: usize = 2;
/// Stream ids the devices take theirs from (0 to 5).
pub const STREAM_IDS: u32 = 6;

/// Which of `instances` IOMMU instances (1 to [`STREAM_IDS`]) stream id
/// `sid` sits behind, for hardware pairs that run the oracle on several:
/// the ids in runs, with two instances 0-2 on the first and 3-5 on the
/// second.
pub fn instance_of(sid: u32, instances: usize) -> usize {
    (sid as usize * instances / STREAM_IDS as usize).min(instances.saturating_sub(1))
}

/// One device: its stream ids (bits of a mask over ids 0..6; none means
/// "not behind the IOMMU") and whether firmware gives it a direct region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Stream-id mask.
    pub sids: u8,
    /// Has a direct (identity-mapped) region.
    pub direct: bool,
}

impl Spec {
    fn stream_ids(&self) -> Vec<u32> {
        (0..STREAM_IDS)
            .filter(|b| self.sids & (1 << b) != 0)
            .collect()
    }
}

/// One step. Device and domain numbers are taken modulo their counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The device is added to the bus (the IOMMU probes it).
    Add(u8),
    /// The device is removed from the bus.
    Remove(u8),
    /// A user claims the device's group (`group_claim_dma_owner`).
    Claim(u8),
    /// The user releases it.
    Release(u8),
    /// `attach_group` of an unmanaged domain.
    Attach(u8, u8),
    /// `detach_group`.
    Detach(u8, u8),
    /// A write to the group's sysfs `type` (`identity`, `DMA`, `DMA-FQ`, `auto`, junk).
    Type(u8, u8),
    /// A map in an unmanaged domain (`dom < DOMAINS`) or the device's
    /// default domain (otherwise).
    Map {
        /// Domain selector.
        dom: u8,
        /// Device, for the default domain.
        dev: u8,
        /// IOVA seed, in pages.
        page: u16,
        /// Pages.
        pages: u16,
        /// Output seed, in pages.
        pa: u16,
    },
    /// An unmap, chosen as for [`Op::Map`].
    Unmap {
        /// Domain selector.
        dom: u8,
        /// Device, for the default domain.
        dev: u8,
        /// IOVA seed, in pages.
        page: u16,
        /// Pages.
        pages: u16,
    },
    /// Arms a failure on the mock platform: a driver op or a core fail
    /// point (by `point`), after `skip` successful hits.
    Arm {
        /// Which step.
        point: u8,
        /// Successful hits before it fails.
        skip: u8,
    },
    /// Wedges the hardware (its invalidations fail) or brings it back,
    /// then, when back, flushes every domain as a recovering kernel would.
    Wedge(bool),
}

impl Op {
    /// Reads one op; `None` when the bytes run out.
    pub fn decode(r: &mut ByteReader<'_>) -> Option<Op> {
        Some(match r.u8()? % 11 {
            0 => Op::Add(r.u8()?),
            1 => Op::Remove(r.u8()?),
            2 => Op::Claim(r.u8()?),
            3 => Op::Release(r.u8()?),
            4 => Op::Attach(r.u8()?, r.u8()?),
            5 => Op::Detach(r.u8()?, r.u8()?),
            6 => Op::Type(r.u8()?, r.u8()?),
            7 => Op::Map {
                dom: r.u8()?,
                dev: r.u8()?,
                page: r.u16()?,
                pages: r.u16()?,
                pa: r.u16()?,
            },
            8 => Op::Unmap {
                dom: r.u8()?,
                dev: r.u8()?,
                page: r.u16()?,
                pages: r.u16()?,
            },
            9 => Op::Arm {
                point: r.u8()?,
                skip: r.u8()?,
            },
            _ => Op::Wedge(r.u8()? & 1 != 0),
        })
    }

    /// Writes the op so that [`decode`](Self::decode) reads it back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let le = |out: &mut Vec<u8>, v: u16| out.extend_from_slice(&v.to_le_bytes());
        match *self {
            Op::Add(d) => out.extend_from_slice(&[0, d]),
            Op::Remove(d) => out.extend_from_slice(&[1, d]),
            Op::Claim(d) => out.extend_from_slice(&[2, d]),
            Op::Release(d) => out.extend_from_slice(&[3, d]),
            Op::Attach(d, m) => out.extend_from_slice(&[4, d, m]),
            Op::Detach(d, m) => out.extend_from_slice(&[5, d, m]),
            Op::Type(d, t) => out.extend_from_slice(&[6, d, t]),
            Op::Map {
                dom,
                dev,
                page,
                pages,
                pa,
            } => {
                out.extend_from_slice(&[7, dom, dev]);
                le(out, page);
                le(out, pages);
                le(out, pa);
            }
            Op::Unmap {
                dom,
                dev,
                page,
                pages,
            } => {
                out.extend_from_slice(&[8, dom, dev]);
                le(out, page);
                le(out, pages);
            }
            Op::Arm { point, skip } => out.extend_from_slice(&[9, point, skip]),
            Op::Wedge(on) => out.extend_from_slice(&[10, u8::from(on)]),
        }
    }
}

/// A run: the devices and the steps (at most 256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The devices.
    pub specs: [Spec; DEVICES],
    /// The steps.
    pub ops: Vec<Op>,
}

impl Input {
    /// Decodes any bytes.
    pub fn decode(data: &[u8]) -> Input {
        let mut r = ByteReader::new(data);
        let mut specs = [Spec {
            sids: 1,
            direct: false,
        }; DEVICES];
        for s in &mut specs {
            let b = r.u8().unwrap_or(1);
            *s = Spec {
                sids: b & 0x3f,
                direct: b & 0x40 != 0,
            };
        }
        let ops = r.items(Op::decode).take(256).collect();
        Input { specs, ops }
    }

    /// The bytes [`decode`](Self::decode) reads back as this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self
            .specs
            .iter()
            .map(|s| (s.sids & 0x3f) | if s.direct { 0x40 } else { 0 })
            .collect();
        for op in &self.ops {
            op.encode(&mut out);
        }
        out
    }
}

impl Input {
    /// A short sequence on one device with a direct region that makes any
    /// hardware under the oracle walk tables and run invalidations: add,
    /// map two pages, unmap one, change the group's type. Tests of a
    /// hardware pair use it to show their oracle is not vacuous.
    pub fn smoke() -> Input {
        let spec = Spec {
            sids: 0b1,
            direct: true,
        };
        Input {
            specs: [spec; DEVICES],
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
        }
    }

    /// Device 0 with stream id 0 and device 1 with stream id 3 (on two
    /// instances when [`instance_of`] splits the ids in two), no other
    /// device, and `ops`: for a domain offered to groups behind two
    /// instances.
    pub fn two_devices(ops: Vec<Op>) -> Input {
        let spec = |sids| Spec {
            sids,
            direct: false,
        };
        let mut specs = [spec(0); DEVICES];
        specs[0] = spec(0b1);
        specs[1] = spec(0b1000);
        Input { specs, ops }
    }
}

impl Op {
    /// A map of `pages` pages at page `page` of unmanaged domain `dom`
    /// to page `pa`.
    pub fn map_unmanaged(dom: u8, page: u16, pages: u16, pa: u16) -> Op {
        Op::Map {
            dom,
            dev: 0,
            page,
            pages,
            pa,
        }
    }

    /// An unmap of `pages` pages at page `page` of unmanaged domain `dom`.
    pub fn unmap_unmanaged(dom: u8, page: u16, pages: u16) -> Op {
        Op::Unmap {
            dom,
            dev: 0,
            page,
            pages,
        }
    }
}

/// `n` pseudo-random inputs (xorshift from `state`), 64 bytes and 24 more
/// each time: seed sequences for the oracle on a hardware pair.
pub fn seed_bytes(mut state: u64, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|k| {
            (0..64 + k * 24)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect()
        })
        .collect()
}

/// Writes `bytes` as seed `name` of fuzz target `target`'s corpus, when
/// `IOMMU_FUZZ_SEEDS` names the corpus directory (`.ci/run` sets it).
pub fn save_seed(target: &str, name: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("IOMMU_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).expect("the seed directory");
        std::fs::write(dir.join(name), bytes).expect("a seed file");
    }
}

/// Replays `input` on both platforms, panicking at the first broken rule.
pub fn run(input: &Input) {
    let mut soft = Platform::new(input, Driver::Soft(SoftIommu::default()));
    let mut mock = Platform::new(input, Driver::Mock(Arc::new(MockIommu::new())));
    for op in &input.ops {
        soft.apply(op);
        soft.check_isolation();
        mock.apply(op);
        mock.check_mock_hardware();
    }
}

/// A driver and its hardware, as the isolation oracle needs them.
pub trait Hardware {
    /// The driver, to set on the bus.
    fn ops(&self) -> Arc<dyn IommuOps>;
    /// Where a read by a device with stream id `sid` at `iova` lands, if
    /// the hardware lets it through.
    fn translate(&self, sid: u32, iova: Iova) -> Option<PhysAddr>;
    /// Stops (or resumes) the hardware's completing of invalidations;
    /// hardware that cannot be wedged ignores it.
    fn set_wedged(&self, wedged: bool) {
        let _ = wedged;
    }
}

/// Replays `input` on `hw`'s driver: after every step each stream id's DMA
/// through `hw` must reach exactly what its group's current domain maps.
pub fn run_hardware(input: &Input, hw: Box<dyn Hardware>) {
    let mut p = Platform::new(input, Driver::Hw(hw));
    for op in &input.ops {
        p.apply(op);
        p.check_isolation();
    }
}

enum Driver {
    Soft(SoftIommu),
    Mock(Arc<MockIommu>),
    Hw(Box<dyn Hardware>),
}

/// Addresses near recent maps and unmaps that stay probed (bounded, to
/// keep a step cheap); the direct regions are always probed.
const RECENT_PROBES: usize = 64;

/// One platform of a run.
struct Platform {
    iommu: Iommu,
    bus: Bus,
    driver: Driver,
    specs: [Spec; DEVICES],
    devs: Vec<Option<Arc<Device>>>,
    doms: Vec<Domain>,
    owner: DmaOwner,
    /// IOVAs worth translating: everything a map or unmap touched.
    probes: BTreeSet<u64>,
    recent: VecDeque<u64>,
    /// `(domain id, probed IOVA) -> what it translated to` before an
    /// unmap whose invalidation failed: what the hardware may still serve
    /// while the domain owes an invalidation.
    stale: HashMap<(u64, u64), PhysAddr>,
    /// Wedged hardware ([`Hardware`] only): the domains each stream was
    /// on since it wedged, whose translations its cached configuration
    /// may still reach.
    wedged_on: Option<HashMap<u32, Vec<Domain>>>,
}

fn dev_name(i: usize) -> String {
    format!("0000:00:{i:02x}.0")
}

fn direct_region(i: usize) -> ReservedRegion {
    ReservedRegion::new(
        0x7000_0000 + i as u64 * 0x4000,
        0x3000,
        Prot::RW,
        ResvType::Direct,
    )
}

impl Platform {
    fn new(input: &Input, driver: Driver) -> Platform {
        let iommu = Iommu::default();
        let bus = Bus::new(&iommu, "pci").expect("a fresh subsystem");
        let ops: Arc<dyn IommuOps> = match &driver {
            Driver::Soft(s) => Arc::new(s.clone()),
            Driver::Mock(m) => m.clone(),
            Driver::Hw(h) => h.ops(),
        };
        iommu.bus_set_iommu(&bus, ops).expect("an empty bus");
        let doms = (0..DOMAINS)
            .map(|_| {
                iommu
                    .domain_alloc(&bus, DomainType::Unmanaged)
                    .expect("unmanaged domains")
            })
            .collect();
        let mut probes = BTreeSet::new();
        for i in 0..DEVICES {
            for k in 0..4 {
                probes.insert(direct_region(i).start.raw() + k * PAGE);
            }
        }
        Platform {
            iommu,
            bus,
            driver,
            specs: input.specs,
            devs: vec![None; DEVICES],
            doms,
            owner: DmaOwner::new(),
            probes,
            recent: VecDeque::new(),
            stale: HashMap::new(),
            wedged_on: None,
        }
    }

    /// Notes each stream's current domain as one it may reach while the
    /// hardware is wedged.
    fn note_wedged_domains(&mut self) {
        let Some(mut on) = self.wedged_on.take() else {
            return;
        };
        for (sid, g) in self.owners() {
            if let Some(d) = g.domain() {
                let doms = on.entry(sid).or_default();
                if !doms.contains(&d) {
                    doms.push(d);
                }
            }
        }
        self.wedged_on = Some(on);
    }

    /// Every domain a device can be on: the unmanaged ones, each group's
    /// default and current domain, and while wedged those a stream's
    /// cached configuration may still lead to.
    fn live_domains(&self) -> Vec<Domain> {
        let mut doms = self.doms.clone();
        let groups = self.iommu.groups();
        let wedged = self
            .wedged_on
            .iter()
            .flat_map(|on| on.values().flatten().cloned());
        let current = groups
            .iter()
            .flat_map(|g| [g.default_domain(), g.domain()])
            .flatten();
        for d in current.chain(wedged) {
            if !doms.contains(&d) {
                doms.push(d);
            }
        }
        doms
    }

    /// What every probed address of every live domain translates to.
    fn translations(&self) -> HashMap<(u64, u64), PhysAddr> {
        let mut t = HashMap::new();
        for d in self.live_domains() {
            for &iova in &self.probes {
                if let Some(pa) = d.iova_to_phys(Iova::new(iova)) {
                    t.insert((d.id(), iova), pa);
                }
            }
        }
        t
    }

    /// After a step: a translation that went away in a domain that now owes
    /// an invalidation may still be served; a domain that owes none may
    /// serve nothing stale.
    fn note_stale(&mut self, before: HashMap<(u64, u64), PhysAddr>) {
        let doms = self.live_domains();
        for d in &doms {
            if !d.invalidation_owed() {
                self.stale.retain(|&(id, _), _| id != d.id());
                continue;
            }
            for (&(id, iova), &pa) in &before {
                if id == d.id() && d.iova_to_phys(Iova::new(iova)) != Some(pa) {
                    self.stale.entry((id, iova)).or_insert(pa);
                }
            }
        }
        // Entries of domains that are gone go with them.
        self.stale
            .retain(|&(id, _), _| doms.iter().any(|d| d.id() == id));
    }

    fn group(&self, i: u8) -> Option<Group> {
        self.devs[usize::from(i) % DEVICES].as_ref()?.iommu_group()
    }

    fn domain(&self, dom: u8, dev: u8) -> Option<Domain> {
        match self.doms.get(usize::from(dom)) {
            Some(d) => Some(d.clone()),
            None => self.group(dev)?.default_domain(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot::take(&self.iommu, &self.bus, &self.doms)
    }

    /// Runs one step; on the mock platform a step that fails must change
    /// nothing, and a new group must get the lowest free id.
    fn apply(&mut self, op: &Op) {
        let ids_before = self.iommu.group_ids();
        let lowest_free = (0..).find(|id| !ids_before.contains(id)).expect("an id");
        let before = matches!(self.driver, Driver::Mock(_)).then(|| self.snapshot());
        let translations = self.translations();
        let failed = self.step(op);
        self.note_stale(translations);
        self.note_wedged_domains();
        if let (Some(before), Some(e)) = (before, failed) {
            assert_eq!(
                self.snapshot(),
                before,
                "{op:?} failed ({e}) and changed state"
            );
        }
        for id in self.iommu.group_ids() {
            if !ids_before.contains(&id) {
                assert_eq!(id, lowest_free, "{op:?}: a new group's id");
            }
        }
    }

    /// The step; returns the error of a step that failed (which then must
    /// have changed nothing).
    fn step(&mut self, op: &Op) -> Option<Errno> {
        match *op {
            Op::Add(i) => {
                let i = usize::from(i) % DEVICES;
                if self.devs[i].is_some() {
                    return None;
                }
                let spec = self.specs[i];
                let mut b = DeviceBuilder::new(dev_name(i))
                    .stream_ids(spec.stream_ids())
                    .pci(true);
                if spec.direct {
                    b = b.resv_region(direct_region(i));
                }
                let before = matches!(self.driver, Driver::Mock(_)).then(|| self.snapshot());
                let dev = self.bus.add_device(b).expect("a valid device");
                self.devs[i] = Some(dev.clone());
                // A probe that failed leaves the IOMMU's state as it was (the
                // bus still has the device, which it records in sysfs).
                if let (Some(before), true) = (before, dev.iommu_group().is_none()) {
                    let after = self.snapshot();
                    assert_eq!(after.ids, before.ids, "failed probe of {}", dev.name());
                    assert_eq!(after.domains, before.domains);
                    assert_eq!(after.mappings, before.mappings);
                    assert_eq!(after.refcounts, before.refcounts);
                }
                None
            }
            Op::Remove(i) => {
                let i = usize::from(i) % DEVICES;
                if let Some(d) = self.devs[i].take() {
                    self.bus.remove_device(&d).expect("on the bus");
                }
                None
            }
            Op::Claim(i) => {
                let g = self.group(i)?;
                self.iommu.group_claim_dma_owner(&g, self.owner).err()
            }
            Op::Release(i) => {
                let g = self.group(i)?;
                if g.dma_owner().is_some() {
                    self.iommu.group_release_dma_owner(&g);
                }
                None
            }
            Op::Attach(i, d) => {
                let g = self.group(i)?;
                let d = &self.doms[usize::from(d) % DOMAINS];
                self.iommu.attach_group(d, &g).err()
            }
            Op::Detach(i, d) => {
                let g = self.group(i)?;
                let d = &self.doms[usize::from(d) % DOMAINS];
                self.iommu.detach_group(d, &g);
                None
            }
            Op::Type(i, t) => {
                let g = self.group(i)?;
                let word = ["identity\n", "DMA", "DMA-FQ\n", "auto", "bogus"][usize::from(t) % 5];
                self.iommu
                    .sysfs()
                    .write(&format!("{}/type", g.sysfs_dir()), word)
                    .err()
            }
            Op::Map {
                dom,
                dev,
                page,
                pages,
                pa,
            } => {
                let d = self.domain(dom, dev)?;
                let (iova, len) = self.place(page, pages);
                d.map(
                    Iova::new(iova),
                    PhysAddr::new(0x1_0000_0000 + u64::from(pa) * PAGE),
                    len,
                    Prot::RW,
                )
                .err()
            }
            Op::Unmap {
                dom,
                dev,
                page,
                pages,
            } => {
                let d = self.domain(dom, dev)?;
                let (iova, len) = self.place(page, pages);
                // An invalidation that failed is no failed step: the range
                // is out of the tables, and the domain owes the flush.
                if let Err(e) = d.unmap(Iova::new(iova), len) {
                    assert!(d.invalidation_owed(), "{e}, but nothing is owed");
                }
                None
            }
            Op::Arm { point, skip } => {
                let skip = u32::from(skip % 8);
                match &self.driver {
                    Driver::Mock(m) => match point % 11 {
                        0 => m.fail_after(MockOp::AddDevice, skip),
                        1 => m.fail_after(MockOp::DomainAlloc, skip),
                        2 => m.fail_after(MockOp::Attach, skip),
                        3 => m.fail_after(MockOp::Map, skip),
                        4 => m.fail_after(MockOp::SyncMap, skip),
                        5 => self.iommu.fail_points().arm(FailPoint::GroupAlloc, skip),
                        6 => self.iommu.fail_points().arm(FailPoint::SysfsCreate, skip),
                        7 => self.iommu.fail_points().arm(FailPoint::SysfsLink, skip),
                        8 => m.fail_after(MockOp::IotlbSync, skip),
                        9 => m.fail_after(MockOp::FlushAll, skip),
                        _ => self.iommu.fail_points().arm(FailPoint::DomainAlloc, skip),
                    },
                    Driver::Soft(_) | Driver::Hw(_) => {}
                }
                None
            }
            Op::Wedge(on) => {
                match &self.driver {
                    Driver::Soft(s) => s.set_wedged(on),
                    Driver::Mock(m) => m.set_wedged(on),
                    Driver::Hw(h) => {
                        h.set_wedged(on);
                        if on && self.wedged_on.is_none() {
                            self.wedged_on = Some(HashMap::new());
                            self.note_wedged_domains();
                        }
                    }
                }
                if !on {
                    self.wedged_on = None;
                    for d in self.live_domains() {
                        let owed = d.invalidation_owed();
                        let flushed = d.flush_iotlb_all();
                        // One-shot failures armed on the mock may still fire.
                        if flushed.is_ok() {
                            assert!(
                                !d.invalidation_owed(),
                                "a completed flush leaves nothing owed"
                            );
                        } else if matches!(self.driver, Driver::Soft(_)) {
                            panic!(
                                "flush of domain {} failed after unwedging (owed: {owed})",
                                d.id()
                            );
                        }
                    }
                }
                None
            }
        }
    }

    /// The range a map or unmap seed names (in the window, 1 to 600
    /// pages), which is probed from now on.
    fn place(&mut self, page: u16, pages: u16) -> (u64, u64) {
        let iova = u64::from(page) * PAGE * 8 % WINDOW;
        let len = u64::from(pages % 600 + 1) * PAGE;
        self.probe_range(iova, len);
        (iova, len)
    }

    fn probe_range(&mut self, iova: u64, len: u64) {
        let mut at = vec![
            iova.saturating_sub(PAGE),
            iova,
            iova + len - PAGE,
            iova + len,
        ];
        let mut b = (iova / M2 + 1) * M2;
        while b < iova + len {
            at.extend([b - PAGE, b]);
            b += M2;
        }
        for a in at {
            if self.probes.insert(a) {
                self.recent.push_back(a);
            }
        }
        while self.recent.len() > RECENT_PROBES {
            if let Some(old) = self.recent.pop_front() {
                self.probes.remove(&old);
            }
        }
    }

    /// Which group owns each stream id, from the grouped devices; a stream
    /// id in two groups panics.
    fn owners(&self) -> HashMap<u32, Group> {
        let mut owner: HashMap<u32, Group> = HashMap::new();
        for d in self.devs.iter().flatten() {
            let Some(g) = d.iommu_group() else { continue };
            for &sid in d.stream_ids() {
                if let Some(prev) = owner.insert(sid, g.clone()) {
                    assert_eq!(prev, g, "stream id {sid} in two groups");
                }
            }
        }
        owner
    }

    /// A default domain identity-maps exactly the direct regions of the
    /// devices in its group: none is missing, none outlives its device.
    fn check_direct_maps(&self) {
        for g in self.iommu.groups() {
            let Some(dd) = g.default_domain().filter(|d| d.ty().is_dma_api()) else {
                continue;
            };
            let members = g.devices();
            for i in 0..DEVICES {
                let member = members.iter().any(|d| d.name() == dev_name(i));
                let want = member && self.specs[i].direct;
                let r = direct_region(i);
                for k in 0..r.length / PAGE {
                    let at = r.start.raw() + k * PAGE;
                    let got = dd.iova_to_phys(Iova::new(at));
                    assert_eq!(
                        got,
                        want.then_some(PhysAddr::new(at)),
                        "group {}: direct region of {} at {at:#x}",
                        g.id(),
                        dev_name(i)
                    );
                }
            }
        }
    }

    fn check_sysfs(&self) {
        let ids = self.iommu.group_ids();
        let mut listed: Vec<u32> = self
            .iommu
            .sysfs()
            .list("kernel/iommu_groups")
            .expect("the groups directory")
            .iter()
            .map(|s| s.parse().expect("a group id"))
            .collect();
        listed.sort_unstable();
        assert_eq!(listed, ids, "sysfs lists the live groups");
        for d in self.devs.iter().flatten() {
            let link = format!("{}/iommu_group", d.sysfs_dir());
            let resolved = self.iommu.sysfs().resolve(&link).ok();
            assert_eq!(
                resolved,
                d.iommu_group().map(|g| g.sysfs_dir()),
                "{}",
                d.name()
            );
        }
    }

    /// The soft platform: the hardware translates exactly what the groups'
    /// current domains map.
    fn check_isolation(&self) {
        let owner = self.owners();
        let soft = match &self.driver {
            Driver::Soft(soft) => soft,
            Driver::Hw(hw) => {
                self.check_translations(&owner, |_, sid, iova| hw.translate(sid, iova));
                self.check_direct_maps();
                self.check_sysfs();
                return;
            }
            Driver::Mock(_) => return,
        };
        let mut expected: Vec<u32> = owner
            .iter()
            .filter(|(_, g)| g.domain().is_some())
            .map(|(&s, _)| s)
            .collect();
        expected.sort_unstable();
        assert_eq!(soft.stream_ids(), expected, "stream-table entries");
        for (&sid, g) in &owner {
            assert_eq!(soft.stream_domain(sid), g.domain(), "stream {sid}");
        }
        self.check_translations(&owner, |d, sid, iova| {
            soft.translate_stream(d, sid, iova, Access::Read).ok()
        });
        self.check_direct_maps();
        self.check_sysfs();
    }

    /// Every probed address of every stream translates to what the
    /// stream's group's current domain maps there, and nothing else.
    fn check_translations(
        &self,
        owner: &HashMap<u32, Group>,
        translate: impl Fn(&Device, u32, Iova) -> Option<PhysAddr>,
    ) {
        // A stream translates the same whichever of its devices issues the
        // DMA, so each stream id is checked once.
        let mut seen = BTreeSet::new();
        for d in self.devs.iter().flatten() {
            for &sid in d.stream_ids() {
                if !seen.insert(sid) {
                    continue;
                }
                let domain = owner.get(&sid).and_then(|g| g.domain());
                for &iova in &self.probes {
                    let want = domain
                        .as_ref()
                        .and_then(|dom| dom.iova_to_phys(Iova::new(iova)));
                    let got = translate(d, sid, Iova::new(iova));
                    if got == want {
                        continue;
                    }
                    // What the core said may still translate, as it was.
                    let stale = domain
                        .as_ref()
                        .and_then(|dom| self.stale.get(&(dom.id(), iova)));
                    if got.is_some() && got.as_ref() == stale {
                        continue;
                    }
                    // Through a domain the stream was on since the
                    // hardware wedged, as it maps now or did.
                    let cached = self.wedged_on.as_ref().and_then(|on| on.get(&sid));
                    let through_old = cached.is_some_and(|doms| {
                        doms.iter().any(|dom| {
                            let now = dom.iova_to_phys(Iova::new(iova));
                            got.is_some()
                                && (got == now || got.as_ref() == self.stale.get(&(dom.id(), iova)))
                        })
                    });
                    assert!(
                        through_old,
                        "{} stream {sid} at {iova:#x}: {got:?}, want {want:?} (or stale {stale:?})",
                        d.name()
                    );
                }
            }
        }
    }

    /// The mock platform: its "hardware" has each grouped device on the
    /// group's current domain and ungrouped ones on nothing.
    fn check_mock_hardware(&self) {
        let Driver::Mock(mock) = &self.driver else {
            return;
        };
        self.owners();
        for (i, d) in self.devs.iter().enumerate() {
            let want = d
                .as_ref()
                .and_then(|d| d.iommu_group())
                .and_then(|g| g.domain())
                .map(|dom| dom.id());
            assert_eq!(mock.attached_domain(&dev_name(i)), want, "{}", dev_name(i));
        }
        self.check_direct_maps();
        self.check_sysfs();
    }
}
