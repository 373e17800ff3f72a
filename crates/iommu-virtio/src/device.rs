//! The device: endpoints, domains and their mappings, the requests that
//! change them, and the translation they give.
//!
//! Every request is checked in full before anything changes, so a
//! refused request leaves the device exactly as it was.

use crate::config::{layout, offset, ConfigError, DeviceConfig};
use crate::page_index::PageIndex;
use crate::request::Request;
use crate::spec::{attach, fault, feature, map, probe, resv, size, Status};
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;

/// A reserved region of an endpoint's address space, as PROBE reports it
/// (a RESV_MEM property).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ResvMem {
    /// `resv::RESERVED` or `resv::MSI`.
    pub subtype: u8,
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
}

impl ResvMem {
    /// x86's interrupt address range, where every MSI is written (1 MiB
    /// at 0xfee00000).
    pub const X86_MSI: ResvMem = ResvMem {
        subtype: resv::MSI,
        start: 0xfee0_0000,
        end: 0xfeef_ffff,
    };
    /// The GICv3 ITS frame of QEMU's Arm `virt` machine (128 KiB at
    /// 0x08080000), whose GITS_TRANSLATER is the MSI doorbell.
    pub const ARM_VIRT_ITS: ResvMem = ResvMem {
        subtype: resv::MSI,
        start: 0x0808_0000,
        end: 0x0809_ffff,
    };
    /// The supervisor-level IMSIC interrupt files of QEMU's RISC-V `virt`
    /// machine (from 0x28000000, up to 64 MiB).
    pub const RISCV_VIRT_IMSIC: ResvMem = ResvMem {
        subtype: resv::MSI,
        start: 0x2800_0000,
        end: 0x2bff_ffff,
    };

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// One mapping of a domain: `[virt_start, virt_end]` to `phys_start`
/// onwards, made by one MAP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Mapping {
    /// First address.
    pub virt_start: u64,
    /// Last address (inclusive).
    pub virt_end: u64,
    /// Where `virt_start` translates to.
    pub phys_start: u64,
    /// `map::*` flags.
    pub flags: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) end: u64,
    pub(crate) phys: u64,
    pub(crate) flags: u32,
}

/// Pages to a word of [`Mappings::words`].
const WORD: u64 = 64;

/// A domain's mappings, which never overlap.
///
/// Those that are one aligned 4 KiB page (what a guest's DMA API maps
/// most) are kept by page number in a hash table, their physical page and
/// flags in one word (see [`packed`]), so that their MAP, UNMAP and
/// translation are one probe even among a million of them, and in
/// address order as a bitmap, 64 pages to a word, in a B-tree of words:
/// a MAP or UNMAP near other mappings only sets or clears a bit there,
/// where a B-tree of mappings would add or remove a node entry each time.
/// The others are kept by first address in a B-tree of their own. Range
/// lookups (a MAP's overlap check, an UNMAP of a range, the ordered walk)
/// take the nearer of the two.
#[derive(Clone, Debug, Default)]
pub(crate) struct Mappings {
    /// Mappings that are not one aligned page, by first address.
    spans: BTreeMap<u64, Entry>,
    /// One-page mappings by page number.
    pages: PageIndex,
    /// Bit `p % WORD` of word `p / WORD` is set when page `p` is in
    /// `pages`; no word is zero.
    words: BTreeMap<u64, u64>,
}

impl PartialEq for Mappings {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Mappings {}

const PAGE: u64 = 0x1000;

/// The page number of `[start, end]` when it is exactly one aligned 4 KiB
/// page.
fn one_page(start: u64, end: u64) -> Option<u64> {
    (start.is_multiple_of(PAGE) && end.checked_sub(start) == Some(PAGE - 1)).then_some(start / PAGE)
}

/// `e` as a [`PageIndex`] value, when its physical address is page-aligned
/// and its flags fit below it (MAP's flags always do; the address does
/// unless the granule is smaller than a page).
fn packed(e: &Entry) -> Option<u64> {
    (e.phys.is_multiple_of(PAGE) && u64::from(e.flags) < PAGE)
        .then_some(e.phys | u64::from(e.flags))
}

/// The mapping of `page` whose [`PageIndex`] value is `v`.
fn unpacked(page: u64, v: u64) -> (u64, Entry) {
    let start = page * PAGE;
    let e = Entry {
        end: start + (PAGE - 1),
        phys: v & !(PAGE - 1),
        flags: (v & (PAGE - 1)) as u32,
    };
    (start, e)
}

/// The set bits of `bits`, lowest first.
fn set_bits(mut bits: u64) -> impl Iterator<Item = u64> {
    core::iter::from_fn(move || {
        let b = bits.trailing_zeros();
        bits &= bits.wrapping_sub(1);
        (b < 64).then_some(u64::from(b))
    })
}

impl Mappings {
    /// Mappings held.
    pub(crate) fn len(&self) -> usize {
        self.spans.len() + self.pages.len()
    }

    /// Adds `[start, e.end]`, which must meet no mapping held (MAP and a
    /// restore check that first).
    pub(crate) fn insert(&mut self, start: u64, e: Entry) {
        debug_assert!(!self.meets(start, e.end), "{start:#x} overlaps");
        match one_page(start, e.end).zip(packed(&e)) {
            Some((page, v)) => {
                self.pages.insert(page, v);
                *self.words.entry(page / WORD).or_insert(0) |= 1 << (page % WORD);
            }
            None => {
                self.spans.insert(start, e);
            }
        }
    }

    /// Removes the mapping starting at `start`.
    pub(crate) fn remove(&mut self, start: u64) -> Option<Entry> {
        if start.is_multiple_of(PAGE) {
            if let Some(e) = self.take_page(start / PAGE) {
                return Some(e);
            }
        }
        self.spans.remove(&start)
    }

    fn take_page(&mut self, page: u64) -> Option<Entry> {
        let v = self.pages.remove(page)?;
        if let alloc::collections::btree_map::Entry::Occupied(mut w) = self.words.entry(page / WORD)
        {
            *w.get_mut() &= !(1 << (page % WORD));
            if *w.get() == 0 {
                w.remove();
            }
        }
        Some(unpacked(page, v).1)
    }

    /// Removes the mapping `[start, end]` if there is exactly that one,
    /// and says whether there was.
    pub(crate) fn remove_exact(&mut self, start: u64, end: u64) -> bool {
        if let Some(page) = one_page(start, end) {
            if self.take_page(page).is_some() {
                return true;
            }
        }
        match self.spans.entry(start) {
            alloc::collections::btree_map::Entry::Occupied(o) if o.get().end == end => {
                o.remove();
                true
            }
            _ => false,
        }
    }

    /// The mapping starting at `start` (for external mappers).
    #[cfg(any(feature = "vmm", test))]
    pub(crate) fn get(&self, start: u64) -> Option<Entry> {
        if start.is_multiple_of(PAGE) {
            if let Some((_, e)) = self.page_entry(start / PAGE) {
                return Some(e);
            }
        }
        self.spans.get(&start).copied()
    }

    /// The mapping that holds `addr`, if any.
    #[inline]
    fn holding(&self, addr: u64) -> Option<(u64, Entry)> {
        // A one-page mapping holds every address of its page.
        if let Some(hit) = self.page_entry(addr / PAGE) {
            return Some(hit);
        }
        if self.spans.is_empty() {
            return None;
        }
        self.spans
            .range(..=addr)
            .next_back()
            .filter(|(_, e)| e.end >= addr)
            .map(|(&s, &e)| (s, e))
    }

    /// Whether any mapping meets `[start, end]`.
    pub(crate) fn meets(&self, start: u64, end: u64) -> bool {
        // While every mapping is one page, one page meets only itself.
        if self.spans.is_empty() {
            if let Some(page) = one_page(start, end) {
                return self.pages.contains(page);
            }
        }
        // Mappings apart: only the last one starting by `end` can reach
        // back to `start`.
        self.last_at_or_before(end)
            .is_some_and(|(_, e)| e.end >= start)
    }

    /// The one-page mapping with the highest page number `<= page`.
    fn last_page_at_or_before(&self, page: u64) -> Option<u64> {
        let (w, b) = (page / WORD, page % WORD);
        let below = |w: u64, bits: u64| w * WORD + 63 - u64::from(bits.leading_zeros());
        if let Some(&bits) = self.words.get(&w) {
            let m = bits & (u64::MAX >> (63 - b));
            if m != 0 {
                return Some(below(w, m));
            }
        }
        let (&w, &bits) = self.words.range(..w).next_back()?;
        Some(below(w, bits))
    }

    /// The one-page mapping with the lowest page number `>= page`.
    fn first_page_at_or_after(&self, page: u64) -> Option<u64> {
        let (w, b) = (page / WORD, page % WORD);
        let above = |w: u64, bits: u64| w * WORD + u64::from(bits.trailing_zeros());
        if let Some(&bits) = self.words.get(&w) {
            let m = bits & (u64::MAX << b);
            if m != 0 {
                return Some(above(w, m));
            }
        }
        let (&w, &bits) = self.words.range(w + 1..).next()?;
        Some(above(w, bits))
    }

    /// The one-page mapping of `page`, with its start.
    #[inline]
    fn page_entry(&self, page: u64) -> Option<(u64, Entry)> {
        self.pages.get(page).map(|v| unpacked(page, v))
    }

    /// The mapping with the highest start `<= addr`.
    pub(crate) fn last_at_or_before(&self, addr: u64) -> Option<(u64, Entry)> {
        let span = self.spans.range(..=addr).next_back().map(|(&s, &e)| (s, e));
        let page = self
            .last_page_at_or_before(addr / PAGE)
            .and_then(|p| self.page_entry(p));
        // Mappings never share a start.
        span.into_iter().chain(page).max_by_key(|&(s, _)| s)
    }

    /// The mapping with the lowest start in `[start, end]`.
    pub(crate) fn first_in(&self, start: u64, end: u64) -> Option<(u64, Entry)> {
        let span = self.spans.range(start..=end).next().map(|(&s, &e)| (s, e));
        let page = self
            .first_page_at_or_after(start.div_ceil(PAGE))
            .filter(|&p| p * PAGE <= end)
            .and_then(|p| self.page_entry(p));
        span.into_iter().chain(page).min_by_key(|&(s, _)| s)
    }

    /// Every mapping, by first address.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        let mut spans = self.spans.iter().map(|(&s, &e)| (s, e)).peekable();
        let mut pages = self
            .words
            .iter()
            .flat_map(|(&w, &bits)| set_bits(bits).map(move |b| w * WORD + b))
            .filter_map(|p| self.page_entry(p))
            .peekable();
        core::iter::from_fn(move || match (spans.peek(), pages.peek()) {
            (Some(s), Some(p)) if s.0 < p.0 => spans.next(),
            (Some(_), None) => spans.next(),
            _ => pages.next(),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Domain {
    pub(crate) bypass: bool,
    pub(crate) endpoints: BTreeSet<u32>,
    /// Mappings by first address; they never overlap.
    pub(crate) mappings: Mappings,
}

impl Domain {
    /// The mapping that holds `addr`, if any.
    fn holding(&self, addr: u64) -> Option<(u64, Entry)> {
        self.mappings.holding(addr)
    }

    /// Whether any mapping meets `[start, end]`.
    pub(crate) fn meets(&self, start: u64, end: u64) -> bool {
        self.mappings.meets(start, end)
    }
}

/// Reserved regions one endpoint may have, whatever the features: a real
/// endpoint has one or two (its MSI doorbell, a firmware window); the
/// bound keeps a hostile saved state from costing more than that.
pub const MAX_RESV_REGIONS: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) domain: Option<u32>,
    pub(crate) resv: Regions,
}

/// An endpoint's reserved regions, checked: in the order the VMM gave them
/// (PROBE reports them so), and indexed by address for the lookups every
/// MAP and every write make.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Regions {
    list: Vec<ResvMem>,
    /// `(start, end)` sorted by start, disjoint.
    sorted: Vec<(u64, u64)>,
    /// The MSI region (at most one).
    msi: Option<ResvMem>,
}

impl Regions {
    /// Checks `resv`: every region a region of a known subtype, at most
    /// [`MAX_RESV_REGIONS`], none overlapping another (in O(n log n)), at
    /// most one MSI region.
    fn new(resv: &[ResvMem]) -> Result<Regions, EndpointError> {
        if resv.len() > MAX_RESV_REGIONS {
            return Err(EndpointError::TooManyRegions {
                count: resv.len(),
                limit: MAX_RESV_REGIONS,
            });
        }
        for r in resv {
            if r.start > r.end || r.subtype > resv::MSI {
                return Err(EndpointError::BadRegion {
                    subtype: r.subtype,
                    start: r.start,
                    end: r.end,
                });
            }
        }
        let mut sorted: Vec<(u64, u64)> = resv.iter().map(|r| (r.start, r.end)).collect();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[1].0 <= w[0].1) {
            return Err(EndpointError::Overlap(w[0].0, w[1].0));
        }
        let mut msis = resv.iter().filter(|r| r.subtype == resv::MSI);
        let msi = msis.next().copied();
        if msis.next().is_some() {
            return Err(EndpointError::TwoMsi);
        }
        Ok(Regions {
            list: resv.to_vec(),
            sorted,
            msi,
        })
    }

    /// The regions, as the VMM gave them.
    pub(crate) fn as_slice(&self) -> &[ResvMem] {
        &self.list
    }

    /// Whether any region meets `[start, end]` (one binary search).
    pub(crate) fn overlaps(&self, start: u64, end: u64) -> bool {
        let at = self.sorted.partition_point(|&(s, _)| s <= end);
        at > 0 && self.sorted[at - 1].1 >= start
    }

    /// The MSI region holding `addr`, if any.
    fn msi_at(&self, addr: u64) -> Option<&ResvMem> {
        self.msi.as_ref().filter(|m| m.overlaps(addr, addr))
    }
}

/// Why the VMM cannot add an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The id is taken.
    #[error("endpoint {0} exists")]
    Exists(u32),
    /// No endpoint has the id.
    #[error("no endpoint {0}")]
    NoEndpoint(u32),
    /// A region whose start is past its end, or an unknown subtype.
    #[error("reserved region {start:#x}-{end:#x} of subtype {subtype} is not a region")]
    BadRegion {
        /// Its subtype.
        subtype: u8,
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
    },
    /// Two regions that overlap (the specification asks the device not to
    /// present them).
    #[error("reserved regions {0:#x} and {1:#x} overlap")]
    Overlap(u64, u64),
    /// More than one MSI region.
    #[error("more than one MSI region")]
    TwoMsi,
    /// More regions than an endpoint may have.
    #[error("{count} reserved regions, more than the {limit} an endpoint may have")]
    TooManyRegions {
        /// Regions given.
        count: usize,
        /// The bound ([`MAX_RESV_REGIONS`]).
        limit: usize,
    },
    /// More properties than `probe_size` holds.
    #[error("{needed} bytes of properties do not fit in probe_size {probe_size}")]
    ProbeSize {
        /// Bytes the properties take.
        needed: usize,
        /// The configured size.
        probe_size: u32,
    },
}

/// Why the driver's features are not accepted (FEATURES_OK fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// Bits the device did not offer.
    #[error("features {0:#x} were not offered")]
    NotOffered(u64),
    /// The driver did not accept VERSION_1.
    #[error("the driver does not accept VERSION_1")]
    NoVersion1,
}

/// A DMA access's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// The endpoint reads memory.
    Read,
    /// The endpoint writes memory.
    Write,
}

/// Where an access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The guest-physical address.
    pub phys: u64,
    /// Bytes from the address to the end of what translates contiguously
    /// with it (at least 1; saturated at `u64::MAX`).
    pub len: u64,
    /// Whether the endpoint is in bypass mode (identity).
    pub bypass: bool,
}

/// What serves one access (see `Device::resolve`).
enum Resolved {
    /// The endpoint's MSI doorbell region (a write).
    Msi(ResvMem),
    /// Identity: the endpoint is in bypass mode.
    Bypass,
    /// The mapping that starts at this address.
    Mapped(u64, Entry),
}

/// What translates like an address: the whole mapping that holds it, the
/// MSI doorbell region, or (bypass) the whole space, with the accesses it
/// allows. What an IOTLB caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
    /// Where `start` translates to.
    pub phys: u64,
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
}

/// A translation fault, as the event queue reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Fault {
    /// `fault::R_*`.
    pub reason: u8,
    /// `fault::F_*`.
    pub flags: u32,
    /// The endpoint that faulted.
    pub endpoint: u32,
    /// The address (with `fault::F_ADDRESS`).
    pub address: u64,
}

impl Fault {
    /// The fault report's bytes (`struct virtio_iommu_fault`).
    pub fn encode(&self) -> [u8; size::FAULT] {
        let mut b = [0u8; size::FAULT];
        b[0] = self.reason;
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.endpoint.to_le_bytes());
        b[16..24].copy_from_slice(&self.address.to_le_bytes());
        b
    }

    /// The fault report `b` holds, as [`encode`](Self::encode) writes it
    /// (what a driver reads from an event buffer).
    pub fn decode(b: &[u8; size::FAULT]) -> Fault {
        Fault {
            reason: b[0],
            flags: crate::request::u32_at(b, 4),
            endpoint: crate::request::u32_at(b, 8),
            address: crate::request::u64_at(b, 16),
        }
    }
}

/// Where an endpoint was before an ATTACH, to take the ATTACH back.
#[cfg(feature = "vmm")]
#[derive(Debug)]
pub(crate) struct AttachUndo {
    pub(crate) endpoint: u32,
    old: Option<u32>,
    freed: Option<Domain>,
}

/// The virtio-iommu device's state and logic, without a transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    config: DeviceConfig,
    negotiated: u64,
    pub(crate) bypass: bool,
    pub(crate) endpoints: BTreeMap<u32, Endpoint>,
    pub(crate) domains: BTreeMap<u32, Domain>,
    pub(crate) mappings: usize,
    pub(crate) events: VecDeque<Fault>,
    pub(crate) events_dropped: u64,
}

/// Faults kept for the event queue while the driver has posted no buffer;
/// past this, new ones are counted and dropped.
pub const EVENT_BACKLOG: usize = 256;

impl Device {
    /// A device with `config`, no endpoints and no domains.
    ///
    /// # Errors
    /// The [`ConfigError`] of a configuration the device cannot present.
    pub fn new(mut config: DeviceConfig) -> Result<Device, ConfigError> {
        config.features |= feature::VERSION_1;
        config.validate()?;
        Ok(Device {
            bypass: config.bypass,
            config,
            negotiated: 0,
            endpoints: BTreeMap::new(),
            domains: BTreeMap::new(),
            mappings: 0,
            events: VecDeque::new(),
            events_dropped: 0,
        })
    }

    /// The configuration the device was made with.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// The features the device offers.
    pub fn offered(&self) -> u64 {
        self.config.features
    }

    /// The features negotiated (0 before [`negotiate`](Self::negotiate)).
    pub fn negotiated(&self) -> u64 {
        self.negotiated
    }

    fn offers(&self, f: u64) -> bool {
        self.config.features & f != 0
    }

    fn has(&self, f: u64) -> bool {
        self.negotiated & f != 0
    }

    /// Takes the features the driver accepts (FEATURES_OK).
    ///
    /// # Errors
    /// A [`FeatureError`] when the driver accepts what was not offered or
    /// does not accept VERSION_1; nothing changes then.
    pub fn negotiate(&mut self, driver: u64) -> Result<u64, FeatureError> {
        let extra = driver & !self.config.features;
        if extra != 0 {
            return Err(FeatureError::NotOffered(extra));
        }
        if driver & feature::VERSION_1 == 0 {
            return Err(FeatureError::NoVersion1);
        }
        self.negotiated = driver;
        Ok(driver)
    }

    /// Reads configuration space at `at` into `buf`; bytes past the
    /// structure read as zero.
    pub fn read_config(&self, at: usize, buf: &mut [u8]) {
        let bytes = layout(&self.config, self.bypass);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = at
                .checked_add(i)
                .and_then(|o| bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes configuration space: only `bypass`, only once BYPASS_CONFIG
    /// is negotiated, and only 0 or 1; any other write changes nothing.
    pub fn write_config(&mut self, at: usize, data: &[u8]) {
        if at == offset::BYPASS
            && data.len() == 1
            && self.has(feature::BYPASS_CONFIG)
            && data[0] <= 1
        {
            self.bypass = data[0] == 1;
        }
    }

    /// The `bypass` field as it stands.
    pub fn bypass_field(&self) -> bool {
        self.bypass
    }

    /// Device reset: every endpoint detached, every domain gone, features
    /// to negotiate again, pending faults dropped. `bypass` stays, as the
    /// specification asks.
    pub fn reset(&mut self) {
        for ep in self.endpoints.values_mut() {
            ep.domain = None;
        }
        self.domains.clear();
        self.mappings = 0;
        self.negotiated = 0;
        self.events.clear();
    }

    /// System reset: [`reset`](Self::reset), and `bypass` back to its
    /// initial value.
    pub fn system_reset(&mut self) {
        self.reset();
        self.bypass = self.config.bypass;
    }

    /// Adds an endpoint (a device the VMM puts behind this IOMMU) with its
    /// reserved regions.
    ///
    /// # Errors
    /// An [`EndpointError`]: a taken id, a region that is not one, two
    /// regions that overlap, two MSI regions, more than
    /// [`MAX_RESV_REGIONS`], or more than `probe_size` holds.
    pub fn add_endpoint(&mut self, id: u32, resv: &[ResvMem]) -> Result<(), EndpointError> {
        if self.endpoints.contains_key(&id) {
            return Err(EndpointError::Exists(id));
        }
        let regions = Regions::new(resv)?;
        let needed = resv.len() * size::RESV_MEM;
        if self.offers(feature::PROBE) && needed > self.config.probe_size as usize {
            return Err(EndpointError::ProbeSize {
                needed,
                probe_size: self.config.probe_size,
            });
        }
        self.endpoints.insert(
            id,
            Endpoint {
                domain: None,
                resv: regions,
            },
        );
        Ok(())
    }

    /// Removes an endpoint (hot unplug): it is detached first, so its
    /// translations stop at once; a domain it leaves empty is gone.
    ///
    /// # Errors
    /// [`EndpointError::NoEndpoint`] when there is none.
    pub fn remove_endpoint(&mut self, id: u32) -> Result<(), EndpointError> {
        if !self.endpoints.contains_key(&id) {
            return Err(EndpointError::NoEndpoint(id));
        }
        self.detach_endpoint(id);
        self.endpoints.remove(&id);
        Ok(())
    }

    /// The endpoints, by id.
    pub fn endpoints(&self) -> impl Iterator<Item = u32> + '_ {
        self.endpoints.keys().copied()
    }

    /// The domain `endpoint` is attached to.
    pub fn domain_of(&self, endpoint: u32) -> Option<u32> {
        self.endpoints.get(&endpoint).and_then(|e| e.domain)
    }

    /// The domains that exist, by id.
    pub fn domains(&self) -> impl Iterator<Item = u32> + '_ {
        self.domains.keys().copied()
    }

    /// Whether `domain` is a bypass domain (`None` when it does not exist).
    pub fn is_bypass_domain(&self, domain: u32) -> Option<bool> {
        self.domains.get(&domain).map(|d| d.bypass)
    }

    /// The mappings of `domain`, by address.
    pub fn mappings(&self, domain: u32) -> impl Iterator<Item = Mapping> + '_ {
        self.domains
            .get(&domain)
            .into_iter()
            .flat_map(|d| d.mappings.iter())
            .map(|(s, e)| Mapping {
                virt_start: s,
                virt_end: e.end,
                phys_start: e.phys,
                flags: e.flags,
            })
    }

    /// Mappings in every domain together.
    pub fn mapping_count(&self) -> usize {
        self.mappings
    }

    /// Whether `endpoint` is in bypass mode: its accesses translate by
    /// the identity.
    pub fn in_bypass(&self, endpoint: u32) -> bool {
        self.endpoints
            .get(&endpoint)
            .is_some_and(|e| self.endpoint_bypass(e))
    }

    fn endpoint_bypass(&self, e: &Endpoint) -> bool {
        match e.domain {
            Some(d) => self.domains.get(&d).is_some_and(|d| d.bypass),
            None => {
                (self.offers(feature::BYPASS_CONFIG) && self.bypass) || self.has(feature::BYPASS)
            }
        }
    }

    /// Handles one request without a transport: `readable` is the
    /// device-readable part of the descriptor chain, `writable` its
    /// device-writable part. Returns the used length: 0 when the request
    /// cannot be parsed (or is a PROBE the device does not offer), and the
    /// buffer is then left unwritten.
    pub fn handle(&mut self, readable: &[u8], writable: &mut [u8]) -> usize {
        match Request::parse(readable) {
            Ok(request) => self.handle_request(request, writable),
            Err(_) => 0,
        }
    }

    /// [`handle`](Self::handle) of a request already parsed.
    pub(crate) fn handle_request(&mut self, request: Request, writable: &mut [u8]) -> usize {
        if writable.len() < size::TAIL {
            return 0;
        }
        if let Request::Probe { endpoint } = request {
            if !self.offers(feature::PROBE) {
                return 0;
            }
            let ps = self.config.probe_size as usize;
            if writable.len() < ps + size::TAIL {
                // Too small for probe_size: no property, INVAL in the tail.
                let n = writable.len();
                write_tail(&mut writable[n - size::TAIL..], Status::Inval);
                return n;
            }
            let (props, rest) = writable.split_at_mut(ps);
            let status = self.probe(endpoint, props);
            write_tail(&mut rest[..size::TAIL], status);
            return ps + size::TAIL;
        }
        let status = self.execute(&request);
        write_tail(&mut writable[..size::TAIL], status);
        size::TAIL
    }

    /// Executes a request other than PROBE and returns its status (a PROBE
    /// gets INVAL here: it needs [`probe`](Self::probe)'s buffer).
    pub fn execute(&mut self, request: &Request) -> Status {
        match *request {
            Request::Attach {
                domain,
                endpoint,
                flags,
                reserved,
            } => self.attach(domain, endpoint, flags, reserved),
            Request::Detach { domain, endpoint } => self.detach(domain, endpoint),
            Request::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => self.map(domain, virt_start, virt_end, phys_start, flags),
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
                reserved,
            } => self.unmap(domain, virt_start, virt_end, reserved),
            Request::Probe { .. } => Status::Inval,
        }
    }

    fn domain_in_range(&self, domain: u32) -> bool {
        !self.offers(feature::DOMAIN_RANGE)
            || (self.config.domain_range.0..=self.config.domain_range.1).contains(&domain)
    }

    fn input_in_range(&self, start: u64, end: u64) -> bool {
        !self.offers(feature::INPUT_RANGE)
            || (start >= self.config.input_range.0 && end <= self.config.input_range.1)
    }

    fn attach(&mut self, domain: u32, endpoint: u32, flags: u32, reserved: u32) -> Status {
        if reserved != 0 {
            return Status::Inval;
        }
        let known = if self.has(feature::BYPASS_CONFIG) {
            attach::BYPASS
        } else {
            0
        };
        if flags & !known != 0 {
            return Status::Inval;
        }
        if !self.domain_in_range(domain) {
            return Status::Range;
        }
        let Some(ep) = self.endpoints.get(&endpoint) else {
            return Status::NoEnt;
        };
        let bypass = flags & attach::BYPASS != 0;
        match self.domains.get(&domain) {
            Some(d) if d.bypass != bypass => return Status::Inval,
            Some(_) if ep.domain == Some(domain) => return Status::Ok,
            // The domain maps what this endpoint reserves (a MAP made
            // while only other endpoints were attached): the device cannot
            // attach it there without breaking the MAP rule.
            Some(d) if ep.resv.as_slice().iter().any(|r| d.meets(r.start, r.end)) => {
                return Status::Unsupp;
            }
            Some(_) => {}
            None => {
                // Moving out of a domain it alone holds frees that slot.
                let frees = ep
                    .domain
                    .and_then(|old| self.domains.get(&old))
                    .is_some_and(|d| d.endpoints.len() == 1);
                if self.domains.len() - usize::from(frees) >= self.config.limits.domains {
                    return Status::NoMem;
                }
            }
        }
        self.detach_endpoint(endpoint);
        let d = self.domains.entry(domain).or_insert_with(|| Domain {
            bypass,
            ..Domain::default()
        });
        d.endpoints.insert(endpoint);
        if let Some(ep) = self.endpoints.get_mut(&endpoint) {
            ep.domain = Some(domain);
        }
        Status::Ok
    }

    /// Detaches `endpoint` from its domain, if any; a domain left without
    /// endpoints is gone with its mappings.
    fn detach_endpoint(&mut self, endpoint: u32) {
        let Some(old) = self
            .endpoints
            .get_mut(&endpoint)
            .and_then(|e| e.domain.take())
        else {
            return;
        };
        let empty = self.domains.get_mut(&old).is_some_and(|d| {
            d.endpoints.remove(&endpoint);
            d.endpoints.is_empty()
        });
        if empty {
            if let Some(d) = self.domains.remove(&old) {
                self.mappings -= d.mappings.len();
            }
        }
    }

    /// What [`undo_attach`](Self::undo_attach) needs to put `endpoint`
    /// back where it is now: its domain, and that domain whole when the
    /// endpoint alone holds it (an ATTACH elsewhere frees it).
    #[cfg(feature = "vmm")]
    pub(crate) fn attach_undo(&self, endpoint: u32) -> AttachUndo {
        let old = self.domain_of(endpoint);
        let freed = old
            .and_then(|o| self.domains.get(&o))
            .filter(|d| d.endpoints.len() == 1)
            .cloned();
        AttachUndo {
            endpoint,
            old,
            freed,
        }
    }

    /// Takes an ATTACH back: the endpoint leaves the domain it joined
    /// (gone again if the ATTACH made it) and returns to its old one.
    #[cfg(feature = "vmm")]
    pub(crate) fn undo_attach(&mut self, undo: AttachUndo) {
        let AttachUndo {
            endpoint,
            old,
            freed,
        } = undo;
        self.detach_endpoint(endpoint);
        let Some(old) = old else {
            return;
        };
        match freed {
            Some(d) => {
                self.mappings += d.mappings.len();
                self.domains.insert(old, d);
            }
            None => {
                if let Some(d) = self.domains.get_mut(&old) {
                    d.endpoints.insert(endpoint);
                }
            }
        }
        if let Some(ep) = self.endpoints.get_mut(&endpoint) {
            ep.domain = Some(old);
        }
    }

    fn detach(&mut self, domain: u32, endpoint: u32) -> Status {
        let Some(ep) = self.endpoints.get(&endpoint) else {
            return Status::NoEnt;
        };
        if ep.domain != Some(domain) {
            return Status::Inval;
        }
        self.detach_endpoint(endpoint);
        Status::Ok
    }

    fn map(&mut self, domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Status {
        if !self.has(feature::MAP_UNMAP) {
            return Status::Unsupp;
        }
        let known = map::READ
            | map::WRITE
            | if self.has(feature::MMIO) {
                map::MMIO
            } else {
                0
            };
        if flags & !known != 0 {
            return Status::Inval;
        }
        if !self.domain_in_range(domain) {
            return Status::Range;
        }
        let input_ok = self.input_in_range(start, end);
        // One lookup of the domain; the fields are borrowed apart so the
        // endpoints' reserved regions can be read while it is held.
        let Device {
            config,
            domains,
            endpoints,
            mappings,
            ..
        } = self;
        let Some(d) = domains.get_mut(&domain) else {
            return Status::NoEnt;
        };
        if d.bypass || end <= start {
            return Status::Inval;
        }
        let g = config.granule();
        if !start.is_multiple_of(g)
            || !phys.is_multiple_of(g)
            || !end.wrapping_add(1).is_multiple_of(g)
            || !input_ok
        {
            return Status::Range;
        }
        let in_phys = phys
            .checked_add(end - start)
            .is_some_and(|phys_end| phys >= config.phys_range.0 && phys_end <= config.phys_range.1);
        if !in_phys {
            return Status::Range;
        }
        if d.meets(start, end) {
            return Status::Inval;
        }
        let reserved = d.endpoints.iter().any(|e| {
            endpoints
                .get(e)
                .is_some_and(|e| e.resv.overlaps(start, end))
        });
        if reserved {
            return Status::Inval;
        }
        let limits = config.limits;
        if d.mappings.len() >= limits.mappings_per_domain || *mappings >= limits.mappings {
            return Status::NoMem;
        }
        d.mappings.insert(start, Entry { end, phys, flags });
        *mappings += 1;
        Status::Ok
    }

    fn unmap(&mut self, domain: u32, start: u64, end: u64, reserved: u32) -> Status {
        if !self.has(feature::MAP_UNMAP) {
            return Status::Unsupp;
        }
        if reserved != 0 {
            return Status::Inval;
        }
        if !self.domain_in_range(domain) {
            return Status::Range;
        }
        let input_ok = self.input_in_range(start, end);
        let Some(d) = self.domains.get_mut(&domain) else {
            return Status::NoEnt;
        };
        if d.bypass || end < start {
            return Status::Inval;
        }
        if !input_ok {
            return Status::Range;
        }
        // The common UNMAP takes back exactly one MAP.
        if d.mappings.remove_exact(start, end) {
            self.mappings -= 1;
            return Status::Ok;
        }
        // Only the mappings holding `start` or `end` can be split. The last
        // mapping that starts at or before `end` settles the `end` side;
        // when it also starts at `start` (one whole mapping, the common
        // case), nothing else can hold `start`.
        let last = d.mappings.last_at_or_before(end);
        if last.is_some_and(|(_, e)| e.end > end) {
            return Status::Range;
        }
        let only = last.is_some_and(|(s, _)| s == start);
        if !only && d.holding(start).is_some_and(|(s, _)| s < start) {
            return Status::Range;
        }
        if only {
            d.mappings.remove(start);
            self.mappings -= 1;
        } else {
            // Every mapping starting in [start, end] ends in it too.
            while let Some((s, _)) = d.mappings.first_in(start, end) {
                d.mappings.remove(s);
                self.mappings -= 1;
            }
        }
        Status::Ok
    }

    /// Fills `props` with the RESV_MEM properties of `endpoint`, zeroes
    /// after them, and returns the status (NOENT, with `props` zeroed, for
    /// an unknown endpoint; INVAL, with `props` untouched, when `props` is
    /// shorter than `probe_size`).
    pub fn probe(&self, endpoint: u32, props: &mut [u8]) -> Status {
        if props.len() < self.config.probe_size as usize {
            return Status::Inval;
        }
        props.fill(0);
        let Some(ep) = self.endpoints.get(&endpoint) else {
            return Status::NoEnt;
        };
        for (r, chunk) in ep
            .resv
            .as_slice()
            .iter()
            .zip(props.chunks_exact_mut(size::RESV_MEM))
        {
            chunk[0..2].copy_from_slice(&probe::RESV_MEM.to_le_bytes());
            let len = (size::RESV_MEM - size::PROPERTY_HEAD) as u16;
            chunk[2..4].copy_from_slice(&len.to_le_bytes());
            chunk[4] = r.subtype;
            chunk[8..16].copy_from_slice(&r.start.to_le_bytes());
            chunk[16..24].copy_from_slice(&r.end.to_le_bytes());
        }
        Status::Ok
    }

    /// Translates an access of `endpoint` to `addr`: through its domain's
    /// mappings with their permissions, by the identity in bypass mode or
    /// in its MSI doorbell region (writes), or a [`Fault`] saying why not.
    ///
    /// # Errors
    /// The [`Fault`]: an unknown endpoint (`R_UNKNOWN`), no domain and no
    /// bypass (`R_DOMAIN`), no mapping or not with this permission
    /// (`R_MAPPING`).
    pub fn translate(
        &self,
        endpoint: u32,
        addr: u64,
        access: Access,
    ) -> Result<Translation, Fault> {
        let to_end = |end: u64| (end - addr).saturating_add(1);
        Ok(match self.resolve(endpoint, addr, access)? {
            Resolved::Msi(msi) => Translation {
                phys: addr,
                len: to_end(msi.end),
                bypass: false,
            },
            Resolved::Bypass => Translation {
                phys: addr,
                len: to_end(u64::MAX),
                bypass: true,
            },
            Resolved::Mapped(start, e) => Translation {
                phys: e.phys + (addr - start),
                len: to_end(e.end),
                bypass: false,
            },
        })
    }

    /// What serves an access of `endpoint` to `addr`, found once for
    /// [`translate`](Self::translate) and [`lookup`](Self::lookup).
    fn resolve(&self, endpoint: u32, addr: u64, access: Access) -> Result<Resolved, Fault> {
        let dir = match access {
            Access::Read => fault::F_READ,
            Access::Write => fault::F_WRITE,
        };
        let fault = |reason| Fault {
            reason,
            flags: dir | fault::F_ADDRESS,
            endpoint,
            address: addr,
        };
        let Some(ep) = self.endpoints.get(&endpoint) else {
            return Err(fault(fault::R_UNKNOWN));
        };
        if access == Access::Write {
            if let Some(msi) = ep.resv.msi_at(addr) {
                return Ok(Resolved::Msi(*msi));
            }
        }
        if self.endpoint_bypass(ep) {
            return Ok(Resolved::Bypass);
        }
        let Some(d) = ep.domain.and_then(|d| self.domains.get(&d)) else {
            return Err(fault(fault::R_DOMAIN));
        };
        let Some((start, e)) = d.holding(addr) else {
            return Err(fault(fault::R_MAPPING));
        };
        let allowed = match access {
            Access::Read => e.flags & map::READ != 0,
            Access::Write => e.flags & map::WRITE != 0,
        };
        if !allowed {
            return Err(fault(fault::R_MAPPING));
        }
        Ok(Resolved::Mapped(start, e))
    }

    /// The [`Segment`] that holds `addr` for `endpoint` and allows
    /// `access`: what an IOTLB may cache for it.
    ///
    /// # Errors
    /// The [`Fault`] [`translate`](Self::translate) gives.
    pub fn lookup(&self, endpoint: u32, addr: u64, access: Access) -> Result<Segment, Fault> {
        Ok(match self.resolve(endpoint, addr, access)? {
            Resolved::Msi(msi) => Segment {
                start: msi.start,
                end: msi.end,
                phys: msi.start,
                read: false,
                write: true,
            },
            Resolved::Bypass => Segment {
                start: 0,
                end: u64::MAX,
                phys: 0,
                read: true,
                write: true,
            },
            Resolved::Mapped(start, e) => Segment {
                start,
                end: e.end,
                phys: e.phys,
                read: e.flags & map::READ != 0,
                write: e.flags & map::WRITE != 0,
            },
        })
    }

    /// The endpoints attached to `domain`, in order.
    pub fn endpoints_of(&self, domain: u32) -> impl Iterator<Item = u32> + '_ {
        self.domains
            .get(&domain)
            .into_iter()
            .flat_map(|d| d.endpoints.iter().copied())
    }

    /// Queues a fault for the event queue; past [`EVENT_BACKLOG`] pending
    /// ones it is counted and dropped.
    pub fn report(&mut self, f: Fault) {
        if self.events.len() >= EVENT_BACKLOG {
            self.events_dropped += 1;
        } else {
            self.events.push_back(f);
        }
    }

    /// The oldest pending fault, for a buffer the driver posted.
    pub fn next_event(&mut self) -> Option<Fault> {
        self.events.pop_front()
    }

    /// Faults waiting in the backlog for event-queue buffers.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Faults dropped because the backlog was full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }
}

fn write_tail(tail: &mut [u8], status: Status) {
    tail[0] = status as u8;
    tail[1..size::TAIL].fill(0);
}

#[cfg(test)]
mod mappings_index {
    use super::{Entry, Mappings, PAGE};
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;

    /// The mappings in one B-tree by first address: what `Mappings` must
    /// answer.
    type Model = BTreeMap<u64, Entry>;

    fn model_holding(m: &Model, addr: u64) -> Option<(u64, Entry)> {
        m.range(..=addr)
            .next_back()
            .filter(|(_, e)| e.end >= addr)
            .map(|(&s, &e)| (s, e))
    }

    fn model_meets(m: &Model, start: u64, end: u64) -> bool {
        m.range(..=end)
            .next_back()
            .is_some_and(|(_, e)| e.end >= start)
    }

    /// Every answer `Mappings` gives about the addresses around `a`.
    fn agree(
        m: &Mappings,
        model: &Model,
        a: u64,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        proptest::prop_assert_eq!(m.holding(a), model_holding(model, a), "holding {:#x}", a);
        let last = model.range(..=a).next_back().map(|(&s, &e)| (s, e));
        proptest::prop_assert_eq!(m.last_at_or_before(a), last, "last by {:#x}", a);
        proptest::prop_assert_eq!(m.get(a), model.get(&a).copied(), "get {:#x}", a);
        // Whole pages (what a guest maps most), short spans, long ones.
        let page = a & !(PAGE - 1);
        let spans = [
            (page, page + (PAGE - 1)),
            (a, a.saturating_add(0x1ff)),
            (a, a.saturating_add(40 * PAGE)),
            (a.saturating_sub(200 * PAGE), a),
        ];
        for (s, e) in spans {
            proptest::prop_assert_eq!(
                m.meets(s, e),
                model_meets(model, s, e),
                "meets [{:#x}, {:#x}]",
                s,
                e
            );
            let first = model.range(s..=e).next().map(|(&s, &e)| (s, e));
            proptest::prop_assert_eq!(m.first_in(s, e), first, "first in [{:#x}, {:#x}]", s, e);
        }
        Ok(())
    }

    proptest::proptest! {
        /// Mappings of one page, of several, unaligned and at the top of
        /// the space, put in and taken out in any order (by start, by
        /// exact range, by a range a page short): every lookup answers as
        /// the one B-tree would, and the walk is in address order.
        #[test]
        fn the_mappings_answer_as_one_btree(
            ops in proptest::collection::vec((0u64..96, 0u8..7, proptest::bool::ANY), 1..200),
            probes in proptest::collection::vec(0u64..(1600 * PAGE), 1..24),
        ) {
            let mut m = Mappings::default();
            let mut model = Model::new();
            for (slot, shape, add) in ops {
                // Slots 64 KiB apart (16 pages, 4 to a word of the
                // bitmap), so mappings never overlap.
                let base = slot * 16 * PAGE;
                let (start, end) = match shape {
                    0 | 5 | 6 => (base + (slot % 3) * PAGE, base + (slot % 3 + 1) * PAGE - 1),
                    1 => (base, base + 3 * PAGE - 1),
                    2 => (base + 0x200, base + 0x11ff),
                    3 => (base, base + 0x7ff),
                    _ => (u64::MAX - PAGE + 1, u64::MAX),
                };
                // Shape 6: one page, at an address only a smaller granule
                // allows, so not in the page index.
                let phys = if shape == 6 { start ^ 0xabc200 } else { start ^ 0xabc000 };
                let e = Entry { end, phys, flags: 3 };
                let taken = if shape == 4 {
                    model.contains_key(&start)
                } else {
                    model.range(base..base + 16 * PAGE).next().is_some()
                };
                if add && !taken {
                    m.insert(start, e);
                    model.insert(start, e);
                } else if let Some((&s, &e)) = model.range(base..base + 16 * PAGE).next().or(
                    model.range(start..=end).next()
                ) {
                    match shape % 3 {
                        0 => {
                            proptest::prop_assert!(m.remove_exact(s, e.end));
                            model.remove(&s);
                        }
                        1 => {
                            let short = e.end.wrapping_sub(PAGE);
                            proptest::prop_assert!(!m.remove_exact(s, short));
                        }
                        _ => {
                            proptest::prop_assert_eq!(m.remove(s), Some(e));
                            model.remove(&s);
                        }
                    }
                } else {
                    // Nothing there to take.
                    proptest::prop_assert!(!m.remove_exact(start, end));
                    proptest::prop_assert_eq!(m.remove(start), None);
                }
                for &a in probes.iter().chain([0, u64::MAX, u64::MAX - 5].iter()) {
                    agree(&m, &model, a)?;
                }
            }
            proptest::prop_assert_eq!(m.len(), model.len());
            let walked: Vec<_> = m.iter().collect();
            let want: Vec<_> = model.iter().map(|(&s, &e)| (s, e)).collect();
            proptest::prop_assert_eq!(walked, want);
            // The bitmap holds exactly the one-page mappings, no word zero.
            let bits: u32 = m.words.values().map(|w| w.count_ones()).sum();
            proptest::prop_assert_eq!(bits as usize, m.pages.len());
            proptest::prop_assert!(m.words.values().all(|&w| w != 0));
            let spans = model
                .iter()
                .filter(|(&s, e)| super::one_page(s, e.end).zip(super::packed(e)).is_none())
                .count();
            proptest::prop_assert_eq!(m.spans.len(), spans);
        }
    }
}
