//! Fuzz and test helpers (feature `test-utils`).

use crate::uapi::{Cmd, Ucmd, MAX_CMD_SIZE};
use crate::Errno;

/// Decodes any bytes as any command and checks the result against the
/// kernel's rules stated independently of [`Ucmd::decode`]: the first
/// two bytes of `data` pick the command (or an ioctl number that is
/// none), the rest is the caller's memory.
///
/// # Panics
/// When the decoder's answer differs from the rules, or it panics.
pub fn decode_any(data: &[u8]) {
    let (pick, arg) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => return,
    };
    // Mostly real commands; otherwise any number in the iommufd range or beyond.
    let ioctl = if pick & 0x8000 == 0 {
        Cmd::ALL[usize::from(pick) % Cmd::ALL.len()].ioctl()
    } else {
        u32::from(pick & 0x7fff) | (u32::from(pick & 0xff) << 16)
    };
    let got = Ucmd::decode(ioctl, arg);
    let nr = ioctl & 0xff;
    if !(0x80..=0xa0).contains(&nr) {
        assert_eq!(got.err(), Some(Errno::ENOTTY), "{ioctl:#x} is out of range");
        return;
    }
    let Some(head) = arg.get(..4) else {
        assert_eq!(got.err(), Some(Errno::EFAULT));
        return;
    };
    let Some(cmd) = Cmd::from_ioctl(ioctl) else {
        assert_eq!(got.err(), Some(Errno::ENOTTY), "{ioctl:#x} is no command");
        return;
    };
    let user_size = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]) as usize;
    // The bytes past the kernel's structure are checked a page at a time
    // (a fault in a page is EFAULT even after a non-zero byte in it), then
    // the structure itself is read.
    let tail = || -> Result<(), Errno> {
        let mut at = cmd.size();
        while at < user_size {
            let end = (at + 4096).min(user_size);
            let chunk = arg.get(at..end).ok_or(Errno::EFAULT)?;
            if chunk.iter().any(|&b| b != 0) {
                return Err(Errno::E2BIG);
            }
            at = end;
        }
        arg.get(..user_size.min(cmd.size())).ok_or(Errno::EFAULT)?;
        Ok(())
    };
    let want = if user_size < cmd.min_size() {
        Err(Errno::EINVAL)
    } else {
        tail()
    };
    match (got, want) {
        (Ok(u), Ok(())) => {
            let n = user_size.min(cmd.size());
            assert_eq!(u.cmd(), cmd);
            assert_eq!(u.bytes().len(), cmd.size());
            assert_eq!(&u.bytes()[..n], &arg[..n], "the caller's bytes, as given");
            assert!(u.bytes()[n..].iter().all(|&b| b == 0), "the rest zero");
            assert!(cmd.size() <= MAX_CMD_SIZE);
            // A reply goes back no longer than the caller's structure.
            let mut out = vec![0xa5u8; user_size + 8];
            u.respond(u.bytes(), &mut out).expect("room for the reply");
            assert!(
                out[n..].iter().all(|&b| b == 0xa5),
                "nothing past the caller's size"
            );
        }
        (got, want) => assert_eq!(got.map(|_| ()), want, "{} of {user_size} bytes", cmd.name()),
    }
}

/// Issues `cmd` with `s` written at `at` in `mem`, as a program passes
/// its structure; returns the result and the structure as the call left
/// it (replies included, also after an error that writes one back).
///
/// # Panics
/// When `at` cannot hold the structure.
pub fn ioctl_at<T>(
    ctx: &crate::ctx::Ictx,
    mem: &dyn crate::ctx::UserMemory,
    at: u64,
    cmd: crate::uapi::Cmd,
    s: &T,
) -> (Result<(), Errno>, T)
where
    T: zerocopy::IntoBytes + zerocopy::FromBytes + zerocopy::Immutable,
{
    mem.write(at, s.as_bytes()).expect("room for the structure");
    let r = ctx.ioctl(cmd.ioctl(), at, mem);
    let mut back = vec![0u8; core::mem::size_of::<T>()];
    mem.read(at, &mut back).expect("room for the structure");
    (r, T::read_from_bytes(&back).expect("its size"))
}

/// A process's memory for tests: one window of bytes at `base`.
pub struct Space {
    base: u64,
    bytes: std::sync::Mutex<Vec<u8>>,
}

impl Space {
    /// `len` zero bytes at `base`.
    pub fn new(base: u64, len: usize) -> Self {
        Space {
            base,
            bytes: std::sync::Mutex::new(vec![0; len]),
        }
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
        // Copying nothing touches no memory (as `copy_from_user` of 0 bytes).
        if len == 0 {
            return Ok(0..0);
        }
        let start = usize::try_from(addr.checked_sub(self.base).ok_or(Errno::EFAULT)?)
            .map_err(|_| Errno::EFAULT)?;
        let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
        if end > self.bytes.lock().unwrap_or_else(|e| e.into_inner()).len() {
            return Err(Errno::EFAULT);
        }
        Ok(start..end)
    }
}

impl crate::ctx::UserMemory for Space {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.bytes.lock().unwrap_or_else(|e| e.into_inner())[r]);
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let r = self.range(addr, data.len())?;
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())[r].copy_from_slice(data);
        Ok(())
    }

    fn pin(&self, addr: u64, len: u64, _write: bool) -> Result<(), Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::EFAULT)?;
        self.range(addr, len).map(|_| ())
    }
}

/// What the model keeps of an area: `(last, user address of the first
/// byte, writable, its pages writable)` by first IOVA. A copy's area
/// takes its own protection but keeps its source's pages.
type ModelAreas = std::collections::BTreeMap<u64, (u64, u64, bool, bool)>;

#[derive(Default, Clone)]
struct ModelIoas {
    areas: ModelAreas,
    reserved: Vec<(u64, u64)>,
    allowed: Vec<(u64, u64)>,
}

fn hits(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

impl ModelIoas {
    fn overlaps_area(&self, s: u64, l: u64) -> bool {
        self.areas
            .iter()
            .any(|(&i, &(al, ..))| hits((i, al), (s, l)))
    }
    fn overlaps_reserved(&self, s: u64, l: u64) -> bool {
        self.reserved.iter().any(|&r| hits(r, (s, l)))
    }
}

/// Replays `data` as IOAS commands through the ioctl entry (alloc,
/// destroy, fixed and automatic maps, unmaps, unmap-all, copies, allowed
/// and reserved ranges, range queries) and checks each answer and the
/// areas of every IOAS against a model of Linux's rules stated on its
/// own: lowest free ids, `EEXIST`/`EINVAL` for fixed IOVAs over areas and
/// reservations, automatic IOVAs inside the allowed ranges, clear of
/// everything, aligned as Linux aligns them, unmaps of whole areas only
/// (those before a cut one gone, `ENOENT`), copies sharing the source's
/// pages, `EPERM` for writable copies of read-only pages.
///
/// Returns how many commands of each kind succeeded (alloc, destroy,
/// fixed map, automatic map, unmap, unmap-all, copy, allow, reserve,
/// ranges), so tests can tell a run that did nothing from one that was
/// checked.
///
/// # Panics
/// At the first disagreement.
pub fn ioas_ops(data: &[u8]) -> [usize; 10] {
    use crate::ctx::{Ictx, UserMemory};
    use crate::iopt::PAGE_SIZE;
    use crate::uapi::*;
    use std::collections::BTreeMap;
    use zerocopy::{FromBytes, IntoBytes};

    const ARG: u64 = 0x1000;
    const RANGES: u64 = 0x1800;
    let ctx = Ictx::new();
    let mem = Space::new(0x1000, 0x2000);
    let mut model: BTreeMap<u32, ModelIoas> = BTreeMap::new();
    let call = |cmd: Cmd, bytes: &[u8]| -> (Result<(), Errno>, Vec<u8>) {
        // The structure as bytes of its own size, through `ioctl_at`.
        let mut buf = [0u8; MAX_CMD_SIZE];
        buf[..bytes.len()].copy_from_slice(bytes);
        let (r, back) = ioctl_at(&ctx, &mem, ARG, cmd, &buf);
        (r, back[..bytes.len()].to_vec())
    };
    let mut done = [0usize; 10];
    let mut steps = data.chunks(8).take(200);
    for step in steps.by_ref() {
        let b = |i: usize| u64::from(*step.get(i).unwrap_or(&0));
        let before: usize = model
            .values()
            .map(|m| m.areas.len() + m.reserved.len() + m.allowed.len())
            .sum::<usize>()
            + model.len();
        let pick_id = |k: u64| (k % 4) as u32;
        let page = |k: u64| PAGE_SIZE * (k % 48);
        let len = |k: u64| {
            if k & 0x80 != 0 {
                (k & 0x7f) + 1
            } else {
                PAGE_SIZE * ((k % 6) + 1)
            }
        };
        let va = |k: u64| 0x100_0000 + PAGE_SIZE * (k % 16) + if k & 0x40 != 0 { 0x10 } else { 0 };
        match b(0) % 10 {
            0 => {
                let (r, back) = call(
                    Cmd::IoasAlloc,
                    IoasAlloc {
                        size: 12,
                        ..Default::default()
                    }
                    .as_bytes(),
                );
                let got = IoasAlloc::read_from_bytes(&back).expect("size").out_ioas_id;
                let want = (1..).find(|i| !model.contains_key(i)).expect("an id");
                assert_eq!((r, got), (Ok(()), want), "IOAS_ALLOC");
                model.insert(want, ModelIoas::default());
            }
            1 => {
                let id = pick_id(b(1));
                let (r, _) = call(Cmd::Destroy, Destroy { size: 8, id }.as_bytes());
                let want = if model.remove(&id).is_some() {
                    Ok(())
                } else {
                    Err(Errno::ENOENT)
                };
                assert_eq!(r, want, "DESTROY {id}");
            }
            op @ (2 | 3) => {
                let id = pick_id(b(1));
                let fixed = op == 2;
                let (v, l) = (va(b(2)), len(b(3)));
                let write = b(4) & 1 == 0;
                let flags = ioas_map::READABLE
                    | if write { ioas_map::WRITEABLE } else { 0 }
                    | if fixed { ioas_map::FIXED_IOVA } else { 0 };
                let iova = page(b(5));
                let c = IoasMap {
                    size: 40,
                    flags,
                    ioas_id: id,
                    user_va: v,
                    length: l,
                    iova,
                    ..Default::default()
                };
                let (r, back) = call(Cmd::IoasMap, c.as_bytes());
                let got = IoasMap::read_from_bytes(&back).expect("size").iova;
                let Some(m) = model.get_mut(&id) else {
                    assert_eq!(r, Err(Errno::ENOENT), "MAP into no IOAS");
                    continue;
                };
                if fixed {
                    let last = iova + l - 1;
                    let want = if m.overlaps_reserved(iova, last) {
                        Err(Errno::EINVAL)
                    } else if m.overlaps_area(iova, last) {
                        Err(Errno::EEXIST)
                    } else {
                        Ok(())
                    };
                    assert_eq!(r, want, "MAP fixed {iova:#x}+{l:#x}");
                    if want.is_ok() {
                        m.areas.insert(iova, (last, v, write, write));
                    }
                } else {
                    match r {
                        Err(Errno::ENOSPC) => {}
                        Err(e) => panic!("MAP auto: {e:?}"),
                        Ok(()) => {
                            let last = got + l - 1;
                            assert!(got >= PAGE_SIZE && last <= u64::MAX - PAGE_SIZE, "{got:#x}");
                            assert!(!m.overlaps_area(got, last) && !m.overlaps_reserved(got, last));
                            if !m.allowed.is_empty() {
                                // Inside the union of the allowed ranges
                                // (adjacent ones make one span, as in Linux).
                                let mut at = got;
                                while at <= last {
                                    let Some(&(_, al)) =
                                        m.allowed.iter().find(|&&(s, al)| s <= at && at <= al)
                                    else {
                                        panic!("{got:#x}+{l:#x} leaves {:x?}", m.allowed);
                                    };
                                    match al.checked_add(1) {
                                        Some(n) => at = n,
                                        None => break,
                                    }
                                }
                            }
                            let off = v % PAGE_SIZE;
                            let align = l
                                .next_power_of_two()
                                .min(1 << v.trailing_zeros())
                                .min(2 << 20);
                            // Linux ORs the page offset into an IOVA aligned
                            // to `align`: exact when `align` is at least a
                            // page, only its bits set when it is less.
                            assert_eq!(got & off, off, "page offset bits");
                            assert_eq!((got & !off) % align, 0, "aligned to {align:#x}");
                            if align >= PAGE_SIZE {
                                assert_eq!(got % PAGE_SIZE, off, "page offset");
                            }
                            m.areas.insert(got, (last, v, write, write));
                        }
                    }
                }
            }
            4 => {
                let id = pick_id(b(1));
                // Half the time an existing area, whole or with its neighbours.
                let area = model.get(&id).and_then(|m| {
                    m.areas
                        .iter()
                        .nth(b(2) as usize % m.areas.len().max(1))
                        .map(|(&i, &(l, ..))| (i, l))
                });
                let (iova, l) = match (area, b(4) & 1) {
                    (Some((i, al)), 0) => (i, (al - i + 1) + PAGE_SIZE * (b(3) % 3)),
                    _ => (page(b(2)), len(b(3)) * (b(4) % 4 + 1)),
                };
                let (r, back) = call(
                    Cmd::IoasUnmap,
                    IoasUnmap {
                        size: 24,
                        ioas_id: id,
                        iova,
                        length: l,
                    }
                    .as_bytes(),
                );
                let got = IoasUnmap::read_from_bytes(&back).expect("size").length;
                let Some(m) = model.get_mut(&id) else {
                    assert_eq!(r, Err(Errno::ENOENT));
                    continue;
                };
                let last = iova + l - 1;
                let hit: Vec<(u64, u64)> = m
                    .areas
                    .iter()
                    .filter(|(&i, &(al, ..))| hits((i, al), (iova, last)))
                    .map(|(&i, &(al, ..))| (i, al))
                    .collect();
                let mut removed = 0;
                let mut want = Ok(());
                for (i, al) in hit {
                    if i < iova || al > last {
                        want = Err(Errno::ENOENT);
                        break;
                    }
                    m.areas.remove(&i);
                    removed += al - i + 1;
                }
                if want.is_ok() && removed == 0 {
                    want = Err(Errno::ENOENT);
                }
                assert_eq!(r, want, "UNMAP {iova:#x}+{l:#x}");
                if r.is_ok() {
                    assert_eq!(got, removed);
                }
            }
            5 => {
                let id = pick_id(b(1));
                let (r, back) = call(
                    Cmd::IoasUnmap,
                    IoasUnmap {
                        size: 24,
                        ioas_id: id,
                        iova: 0,
                        length: u64::MAX,
                    }
                    .as_bytes(),
                );
                match model.get_mut(&id) {
                    None => assert_eq!(r, Err(Errno::ENOENT)),
                    Some(m) => {
                        let all: u64 = m.areas.iter().map(|(&i, &(l, ..))| l - i + 1).sum();
                        m.areas.clear();
                        assert_eq!(r, Ok(()));
                        assert_eq!(IoasUnmap::read_from_bytes(&back).expect("size").length, all);
                    }
                }
            }
            6 => {
                let (src, dst) = (pick_id(b(1)), pick_id(b(1) >> 2));
                let area = model.get(&src).and_then(|m| {
                    m.areas
                        .iter()
                        .nth(b(2) as usize % m.areas.len().max(1))
                        .map(|(&i, &(l, ..))| (i, l))
                });
                let (siova, l) = match (area, b(6) & 1) {
                    (Some((i, al)), 0) => (i, al - i + 1),
                    _ => (page(b(2)), len(b(3))),
                };
                let diova = page(b(5)) + 0x100_0000 * (b(6) >> 7);
                let write = b(4) & 1 == 0;
                let flags = ioas_map::READABLE
                    | ioas_map::FIXED_IOVA
                    | if write { ioas_map::WRITEABLE } else { 0 };
                let c = IoasCopy {
                    size: 40,
                    flags,
                    dst_ioas_id: dst,
                    src_ioas_id: src,
                    length: l,
                    dst_iova: diova,
                    src_iova: siova,
                };
                let (r, _) = call(Cmd::IoasCopy, c.as_bytes());
                let (Some(sm), true) = (model.get(&src).cloned(), model.contains_key(&dst)) else {
                    assert_eq!(r, Err(Errno::ENOENT), "COPY between missing IOASes");
                    continue;
                };
                // The source: contiguous areas from `siova` on.
                let mut slices = Vec::new();
                let mut cur = siova;
                let last = siova + l - 1;
                let mut gap = false;
                loop {
                    let Some((&i, &(al, u, _, pw))) = sm
                        .areas
                        .range(..=cur)
                        .next_back()
                        .filter(|(_, &(al, ..))| al >= cur)
                    else {
                        gap = true;
                        break;
                    };
                    let end = last.min(al);
                    slices.push((end - cur + 1, u + (cur - i), pw));
                    if end == last {
                        break;
                    }
                    cur = end + 1;
                }
                let dm = model.get_mut(&dst).expect("checked");
                let dlast = diova + l - 1;
                let want = if gap {
                    Err(Errno::ENOENT)
                } else if dm.overlaps_reserved(diova, dlast) {
                    Err(Errno::EINVAL)
                } else if dm.overlaps_area(diova, dlast) {
                    Err(Errno::EEXIST)
                } else if write && slices.iter().any(|s| !s.2) {
                    Err(Errno::EPERM)
                } else {
                    Ok(())
                };
                assert_eq!(r, want, "COPY {src}:{siova:#x} -> {dst}:{diova:#x} +{l:#x}");
                if want.is_ok() {
                    let mut at = diova;
                    // The copy's protection, over the source's pages.
                    for (n, u, pw) in slices {
                        dm.areas.insert(at, (at + n - 1, u, write, pw));
                        at += n;
                    }
                }
            }
            7 => {
                let id = pick_id(b(1));
                let n = (b(2) % 3) as usize;
                let ranges: Vec<(u64, u64)> = (0..n)
                    .map(|k| {
                        let s = page(b(3 + 2 * k));
                        (s, s + len(b(4 + 2 * k)) * 4 - 1)
                    })
                    .collect();
                for (i, &(start, last)) in ranges.iter().enumerate() {
                    mem.write(RANGES + 16 * i as u64, IovaRange { start, last }.as_bytes())
                        .expect("fits");
                }
                let c = IoasAllowIovas {
                    size: 24,
                    ioas_id: id,
                    num_iovas: n as u32,
                    allowed_iovas: RANGES,
                    ..Default::default()
                };
                let (r, _) = call(Cmd::IoasAllowIovas, c.as_bytes());
                let Some(m) = model.get_mut(&id) else {
                    assert_eq!(r, Err(Errno::ENOENT));
                    continue;
                };
                let bad = ranges
                    .iter()
                    .enumerate()
                    .any(|(i, a)| a.0 >= a.1 || ranges[..i].iter().any(|b| hits(*a, *b)));
                let want = if bad {
                    Err(Errno::EINVAL)
                } else if ranges.iter().any(|&(s, l)| m.overlaps_reserved(s, l)) {
                    Err(Errno::EADDRINUSE)
                } else {
                    Ok(())
                };
                assert_eq!(r, want, "ALLOW_IOVAS {ranges:x?}");
                if want.is_ok() {
                    m.allowed = ranges;
                }
            }
            8 => {
                let id = pick_id(b(1));
                let (s, l) = (page(b(2)), len(b(3)));
                let (Ok(ioas), Some(m)) = (ctx.ioas(id), model.get_mut(&id)) else {
                    continue;
                };
                let r = ioas.lock().unwrap_or_else(|e| e.into_inner()).iopt.reserve(
                    s,
                    s + l - 1,
                    b(4) % 2,
                );
                let want = if m.overlaps_area(s, s + l - 1)
                    || m.allowed.iter().any(|&a| hits(a, (s, s + l - 1)))
                {
                    Err(Errno::EADDRINUSE)
                } else {
                    Ok(())
                };
                assert_eq!(r, want, "reserve {s:#x}+{l:#x}");
                if r.is_ok() {
                    m.reserved.push((s, s + l - 1));
                }
            }
            _ => {
                let id = pick_id(b(1));
                let c = IoasIovaRanges {
                    size: 32,
                    ioas_id: id,
                    num_iovas: 8,
                    allowed_iovas: RANGES,
                    ..Default::default()
                };
                let (r, back) = call(Cmd::IoasIovaRanges, c.as_bytes());
                let Some(m) = model.get(&id) else {
                    assert_eq!(r, Err(Errno::ENOENT));
                    continue;
                };
                let n = IoasIovaRanges::read_from_bytes(&back)
                    .expect("size")
                    .num_iovas as usize;
                // The holes between reservations, from 0 to the top.
                let mut used = m.reserved.clone();
                used.sort_unstable();
                let mut holes = Vec::new();
                let mut at = Some(0u64);
                for (s, l) in used {
                    if let Some(a) = at {
                        if s > a {
                            holes.push((a, s - 1));
                        }
                        if l.checked_add(1).is_none_or(|n| n > a) {
                            at = l.checked_add(1);
                        }
                    }
                }
                if let Some(a) = at {
                    holes.push((a, u64::MAX));
                }
                assert_eq!(n, holes.len(), "IOVA_RANGES count");
                assert_eq!(r, if n > 8 { Err(Errno::EMSGSIZE) } else { Ok(()) });
                for (i, h) in holes.iter().take(8).enumerate() {
                    let mut e = [0u8; 16];
                    mem.read(RANGES + 16 * i as u64, &mut e).expect("fits");
                    let got = IovaRange::read_from_bytes(&e).expect("size");
                    assert_eq!((got.start, got.last), *h, "range {i}");
                }
            }
        }
        let after: usize = model
            .values()
            .map(|m| m.areas.len() + m.reserved.len() + m.allowed.len())
            .sum::<usize>()
            + model.len();
        if before != after || b(0) % 10 == 9 {
            done[(b(0) % 10) as usize] += 1;
        }
        // Every IOAS holds exactly the model's areas.
        for (&id, m) in &model {
            let ioas = ctx.ioas(id).expect("the model's IOAS exists");
            let g = ioas.lock().unwrap_or_else(|e| e.into_inner());
            let got: ModelAreas = g
                .iopt
                .areas()
                .map(|a| {
                    (
                        a.iova,
                        (
                            a.last,
                            a.uaddr(a.iova),
                            a.prot.contains(iommu_types::Prot::WRITE),
                            a.pages.writable,
                        ),
                    )
                })
                .collect();
            assert_eq!(got, m.areas, "IOAS {id}'s areas");
        }
        assert_eq!(ctx.ids(), model.keys().copied().collect::<Vec<_>>());
    }
    done
}

/// A descriptor table for tests ([`crate::ctx::FileTable`]): descriptors
/// from 100 up; [`Files::close`] drops one.
#[derive(Default)]
pub struct Files {
    map: std::sync::Mutex<std::collections::BTreeMap<i32, std::sync::Arc<dyn crate::ctx::File>>>,
}

impl Files {
    /// Closes `fd`: its file is released with its last descriptor.
    ///
    /// # Errors
    /// `EBADFD` for a descriptor that is not open.
    pub fn close(&self, fd: i32) -> Result<(), Errno> {
        let f = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fd)
            .ok_or(Errno::EBADFD)?;
        drop(f);
        Ok(())
    }

    /// Descriptors open.
    pub fn open(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl crate::ctx::FileTable for Files {
    fn install(&self, file: std::sync::Arc<dyn crate::ctx::File>) -> Result<i32, Errno> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let fd = m.keys().next_back().map_or(100, |&k| k + 1);
        m.insert(fd, file);
        Ok(fd)
    }

    fn get(&self, fd: i32) -> Option<std::sync::Arc<dyn crate::ctx::File>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fd)
            .cloned()
    }
}

/// Object-lifetime sequences through the selftest platform, from any
/// bytes: IOASes, maps, unmaps and copies, mock devices attached,
/// replaced and destroyed, HWPTs (plain, dirty-tracking, nest parents),
/// access objects with pins and reads, dirty tracking and bitmaps,
/// reserved ranges, the huge-page option, dma-bufs mapped and revoked,
/// and the VFIO compat ioctls, in any order, with any ids. After every
/// step, for every paging HWPT, the domain maps exactly the areas of its
/// IOAS (each area's first and last byte where the area says, nothing
/// outside the areas): a device reaches only what its IOAS maps. At the
/// end everything is destroyed and closed: no pin, object or mock device
/// is left. Returns the commands that succeeded, by kind.
///
/// # Panics
/// When a property fails, or anything panics.
pub fn selftest_ops(data: &[u8]) -> [usize; 20] {
    use crate::ctx::{Ictx, UserMemory};
    use crate::iopt::PAGE_SIZE;
    use crate::selftest::{op, Selftest, TestCmd, MOCK_APERTURE_START};
    use crate::uapi::*;
    use std::sync::Arc;
    use zerocopy::IntoBytes;

    const ARG: u64 = 0x1000;
    const SCRATCH: u64 = 0x2000;
    const USER: u64 = 0x10_0000;
    const USER_PAGES: u64 = 64;
    let platform = Selftest::new().expect("a platform");
    let mem = Arc::new(Space::new(
        0x1000,
        (USER - 0x1000 + USER_PAGES * PAGE_SIZE) as usize,
    ));
    let files = Arc::new(Files::default());
    let ctx = Arc::new(Ictx::new());
    ctx.set_user_memory(mem.clone());
    ctx.set_files(files.clone());
    ctx.enable_selftest(&platform);
    let mut done = [0usize; 20];
    let mut fds: Vec<i32> = Vec::new();
    let test = |opn: u32, id: u32, args: &[(usize, u64)]| -> Result<i32, Errno> {
        let mut c = TestCmd {
            size: 72,
            op: opn,
            id,
            ..TestCmd::default()
        };
        for &(w, v) in args {
            c.args[w] = v;
        }
        mem.write(ARG, c.as_bytes()).expect("room");
        ctx.ioctl_value(Cmd::TestCmd.ioctl(), ARG, &*mem)
    };
    let reply_u32 = |word: usize, hi: bool| -> u32 {
        let mut b = [0u8; 72];
        mem.read(ARG, &mut b).expect("room");
        let at = 16 + word * 8 + if hi { 4 } else { 0 };
        u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    };
    for step in data.chunks(8).take(200) {
        let b = |i: usize| u64::from(*step.get(i).unwrap_or(&0));
        // Mostly an object of the kind the command takes; sometimes any
        // id, dead or of another kind.
        let ids = ctx.ids();
        let of_kind = |want: fn(&crate::ctx::Object) -> bool| -> Vec<u32> {
            ids.iter()
                .copied()
                .filter(|&i| ctx.object(i).is_some_and(|o| want(&o)))
                .collect()
        };
        let pick = |k: u64, want: fn(&crate::ctx::Object) -> bool| -> u32 {
            let v = of_kind(want);
            if b(7) & 0xc0 == 0 || v.is_empty() {
                (k % 12) as u32
            } else {
                v[k as usize % v.len()]
            }
        };
        let ioas_of = |o: &crate::ctx::Object| matches!(o, crate::ctx::Object::Ioas(_));
        let hwpt_of = |o: &crate::ctx::Object| matches!(o, crate::ctx::Object::HwptPaging(_));
        let dev_of = |o: &crate::ctx::Object| matches!(o, crate::ctx::Object::Device(_));
        let stdev_of = |o: &crate::ctx::Object| matches!(o, crate::ctx::Object::Selftest(_));
        let pt_of = |o: &crate::ctx::Object| {
            matches!(
                o,
                crate::ctx::Object::Ioas(_) | crate::ctx::Object::HwptPaging(_)
            )
        };
        let any = |_: &crate::ctx::Object| true;
        let id = |k: u64| pick(k, any);
        let ioas_id = |k: u64| pick(k, ioas_of);
        // IOVAs on 4-page boundaries and at most 4 pages long: an unmap
        // of such a block takes whole areas.
        let iova = |k: u64| MOCK_APERTURE_START + 4 * PAGE_SIZE * (k % 16);
        let len = |k: u64| PAGE_SIZE * ((k % 4) + 1);
        // The first IOVA of some area of some IOAS, else any.
        let area_iova = |k: u64| -> u64 {
            let starts: Vec<u64> = of_kind(ioas_of)
                .into_iter()
                .filter_map(|i| ctx.ioas(i).ok())
                .flat_map(|io| {
                    let g = io.lock().unwrap_or_else(|e| e.into_inner());
                    g.iopt.areas().map(|a| a.iova).collect::<Vec<_>>()
                })
                .collect();
            if starts.is_empty() {
                iova(k)
            } else {
                starts[k as usize % starts.len()]
            }
        };
        let va = |k: u64| USER + PAGE_SIZE * (k % (USER_PAGES - 4));
        let kind = (b(0) % 20) as usize;
        let ok = match kind {
            0 => ctx.ioas_alloc().is_ok(),
            1 => ctx.destroy(id(b(1))).is_ok(),
            2 => {
                let fixed = b(5) & 1 == 0;
                let c = IoasMap {
                    size: 40,
                    flags: ioas_map::READABLE
                        | if b(4) & 1 == 0 {
                            ioas_map::WRITEABLE
                        } else {
                            0
                        }
                        | if fixed { ioas_map::FIXED_IOVA } else { 0 },
                    ioas_id: ioas_id(b(1)),
                    user_va: va(b(2)),
                    length: len(b(3)),
                    iova: iova(b(6)),
                    ..Default::default()
                };
                ctx.ioas_map(&c).is_ok()
            }
            3 => {
                let (at, l) = if b(3) & 0x80 != 0 {
                    (0, u64::MAX)
                } else {
                    (iova(b(2)), 4 * PAGE_SIZE * (b(3) % 3 + 1))
                };
                ctx.ioas_unmap(ioas_id(b(1)), at, l).is_ok()
            }
            4 => {
                let c = IoasCopy {
                    size: 40,
                    flags: ioas_map::READABLE | ioas_map::FIXED_IOVA,
                    dst_ioas_id: ioas_id(b(1)),
                    src_ioas_id: ioas_id(b(2)),
                    length: PAGE_SIZE,
                    dst_iova: iova(b(4)),
                    src_iova: iova(b(5)),
                };
                ctx.ioas_copy(&c).is_ok()
            }
            5 => test(
                op::MOCK_DOMAIN_FLAGS,
                pick(b(1), pt_of),
                &[(1, (b(2) & 1) << 32)],
            )
            .is_ok(),
            6 => test(
                op::MOCK_DOMAIN_REPLACE,
                pick(b(1), stdev_of),
                &[(0, u64::from(pick(b(2), pt_of)))],
            )
            .is_ok(),
            7 => {
                let flags = match b(3) % 3 {
                    0 => PagingFlags::empty(),
                    1 => PagingFlags::DIRTY_TRACKING,
                    _ => PagingFlags::NEST_PARENT,
                };
                ctx.hwpt_alloc(pick(b(1), dev_of), ioas_id(b(2)), flags)
                    .is_ok()
            }
            8 => {
                let r = test(
                    op::CREATE_ACCESS,
                    ioas_id(b(1)),
                    &[(0, u64::from(b(2) & 3 != 0) << 32)],
                );
                if r.is_ok() {
                    fds.push(reply_u32(0, false) as i32);
                }
                r.is_ok()
            }
            9 => {
                let fd = fds
                    .get(b(1) as usize % fds.len().max(1))
                    .copied()
                    .unwrap_or(0);
                test(
                    op::ACCESS_PAGES,
                    fd as u32,
                    &[(0, b(4) & 1), (1, area_iova(b(2))), (2, PAGE_SIZE)],
                )
                .is_ok()
            }
            10 => {
                let fd = fds
                    .get(b(1) as usize % fds.len().max(1))
                    .copied()
                    .unwrap_or(0);
                test(op::DESTROY_ACCESS_PAGES, fd as u32, &[(0, b(2) % 3)]).is_ok()
            }
            11 => {
                if fds.is_empty() {
                    false
                } else {
                    let fd = fds.remove(b(1) as usize % fds.len());
                    files.close(fd).is_ok()
                }
            }
            12 => {
                let fd = fds
                    .get(b(1) as usize % fds.len().max(1))
                    .copied()
                    .unwrap_or(0);
                let flags = if b(4) & 1 == 0 {
                    selftest::ACCESS_RW_WRITE
                } else {
                    0
                };
                test(
                    op::ACCESS_RW,
                    fd as u32,
                    &[
                        (0, area_iova(b(2)) + b(5)),
                        (1, b(3) % 64 + 1),
                        (2, SCRATCH),
                        (3, u64::from(flags)),
                    ],
                )
                .is_ok()
            }
            13 => {
                let c = HwptSetDirtyTracking {
                    size: 16,
                    flags: (b(2) & 3 != 0) as u32,
                    hwpt_id: pick(b(1), hwpt_of),
                    reserved: 0,
                };
                ctx.set_dirty_tracking(&c).is_ok()
            }
            14 => {
                let c = HwptGetDirtyBitmap {
                    size: 48,
                    hwpt_id: pick(b(1), hwpt_of),
                    flags: (b(4) & 1) as u32,
                    iova: iova(b(2)),
                    length: len(b(3)),
                    page_size: 1 << (11 + b(5) % 3),
                    data: SCRATCH,
                    ..Default::default()
                };
                ctx.get_dirty_bitmap(&c, &*mem).is_ok()
            }
            15 => {
                mem.write(SCRATCH, &[b(4) as u8, b(5) as u8]).expect("room");
                test(
                    op::DIRTY,
                    pick(b(1), hwpt_of),
                    &[(1, iova(b(2))), (2, len(b(3))), (3, 2048), (4, SCRATCH)],
                )
                .is_ok()
            }
            16 => test(
                op::ADD_RESERVED,
                ioas_id(b(1)),
                &[(0, iova(b(2))), (1, len(b(3)))],
            )
            .is_ok(),
            17 => {
                let c = IommuOption {
                    size: 24,
                    option_id: option::HUGE_PAGES,
                    op: option::OP_SET,
                    object_id: ioas_id(b(1)),
                    val64: b(2) & 1,
                    ..Default::default()
                };
                ctx.option(&c).is_ok()
            }
            18 => match b(1) % 3 {
                0 => {
                    let r = test(op::DMABUF_GET, 0, &[(0, len(b(2)))]);
                    if let Ok(fd) = r {
                        fds.push(fd);
                    }
                    r.is_ok()
                }
                1 => {
                    let fd = fds
                        .get(b(2) as usize % fds.len().max(1))
                        .copied()
                        .unwrap_or(0);
                    test(
                        op::DMABUF_REVOKE,
                        0,
                        &[(0, fd as u32 as u64 | ((b(3) & 1) << 32))],
                    )
                    .is_ok()
                }
                _ => {
                    let fd = fds
                        .get(b(2) as usize % fds.len().max(1))
                        .copied()
                        .unwrap_or(0);
                    let c = IoasMapFile {
                        size: 40,
                        flags: ioas_map::READABLE | ioas_map::FIXED_IOVA,
                        ioas_id: ioas_id(b(3)),
                        fd,
                        start: 0,
                        length: PAGE_SIZE,
                        iova: iova(b(4)),
                    };
                    ctx.ioas_map_file(&c, &*mem).is_ok()
                }
            },
            _ => {
                // VFIO: choose the compat IOAS, map or unmap through it.
                match b(1) % 3 {
                    0 => {
                        let c = VfioIoas {
                            size: 12,
                            ioas_id: ioas_id(b(2)),
                            op: crate::vfio::vfio_ioas::SET,
                            reserved: 0,
                        };
                        ioctl_at(&ctx, &*mem, ARG, Cmd::VfioIoas, &c).0.is_ok()
                    }
                    1 => {
                        let mut m = [0u8; 32];
                        m[0..4].copy_from_slice(&32u32.to_ne_bytes());
                        m[4..8].copy_from_slice(&3u32.to_ne_bytes());
                        m[8..16].copy_from_slice(&va(b(2)).to_ne_bytes());
                        m[16..24].copy_from_slice(&iova(b(3)).to_ne_bytes());
                        m[24..32].copy_from_slice(&len(b(4)).to_ne_bytes());
                        mem.write(SCRATCH, &m).expect("room");
                        ctx.vfio_ioctl(crate::vfio::IOMMU_MAP_DMA, SCRATCH, &*mem)
                            .is_ok()
                    }
                    _ => {
                        let mut u = [0u8; 24];
                        u[0..4].copy_from_slice(&24u32.to_ne_bytes());
                        u[8..16].copy_from_slice(&iova(b(3)).to_ne_bytes());
                        u[16..24].copy_from_slice(&len(b(4)).to_ne_bytes());
                        mem.write(SCRATCH, &u).expect("room");
                        ctx.vfio_ioctl(crate::vfio::IOMMU_UNMAP_DMA, SCRATCH, &*mem)
                            .is_ok()
                    }
                }
            }
        };
        if ok {
            done[kind] += 1;
        }
        check_domains_match_areas(&ctx);
    }
    // Tear down as a closing program does: accesses' and dma-bufs'
    // descriptors, then the context.
    for fd in fds {
        files.close(fd).expect("open");
    }
    drop(ctx);
    assert_eq!(files.open(), 0, "every file closed");
    for p in 0..USER_PAGES {
        assert_eq!(
            platform.page_refs(USER + p * PAGE_SIZE, &*mem),
            0,
            "no pin left"
        );
    }
    done
}

use crate::selftest;
use iommu_core::PagingFlags;

/// Every paging HWPT's domain maps exactly its IOAS's areas.
fn check_domains_match_areas(ctx: &crate::ctx::Ictx) {
    use crate::ctx::Object;
    use iommu_core::Iova;
    for id in ctx.ids() {
        let Some(Object::HwptPaging(h)) = ctx.object(id) else {
            continue;
        };
        let g = h.ioas.lock().unwrap_or_else(|e| e.into_inner());
        let d = &h.domain;
        for a in g.iopt.areas() {
            let want = |at: u64| (!a.pages.detached()).then(|| a.uaddr(at));
            for at in [a.iova, a.last] {
                assert_eq!(
                    d.iova_to_phys(Iova::new(at)).map(|p| p.raw()),
                    want(at),
                    "HWPT {id}: IOVA {at:#x} of area {:#x}..={:#x}",
                    a.iova,
                    a.last
                );
            }
        }
        // Nothing outside the areas.
        let mut from = 0u64;
        while let Some((at, size)) = d.first_mapping(Iova::new(from), Iova::new(u64::MAX)) {
            let (s, e) = (at.raw(), at.raw() + (size - 1));
            let inside = g
                .iopt
                .area_at(s)
                .is_some_and(|a| a.last >= e && !a.pages.detached());
            assert!(inside, "HWPT {id} maps {s:#x}..={e:#x} outside every area");
            match e.checked_add(1) {
                Some(n) => from = n,
                None => break,
            }
        }
    }
}
