//! The x86-64 format against Linux 7.3's own: the calls of
//! `data/linux-7.3-x86-64/spec.txt` replayed on the crate's table, every
//! result and every leaf (with the table entries above it) printed as the
//! recording made from Linux's code prints them, and compared line by
//! line with what Linux answered (`linux.dump`).
//!
//! Calls go through `map_pages`/`unmap_pages` the way the core drives them
//! (repeated until the whole range is done; a failed map undoes what it
//! mapped, as `iommu_map` does).

use iommu_pgtable::x86::X86_64;
use iommu_pgtable::{Format, HeapMemory, IoPageTable, Pte};
use iommu_types::{IotlbGather, Iova, PhysAddr, Prot};

const SPEC: &str = include_str!("data/linux-7.3-x86-64/spec.txt");
const LINUX: &str = include_str!("data/linux-7.3-x86-64/linux.dump");

/// The address field of a table entry, masked out of what is compared.
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// C's `%#llx`: no prefix for zero.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

fn num(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("a hex number")
}

type Table = IoPageTable<X86_64, HeapMemory>;

/// Every present leaf under `table` (at `level`), depth first.
fn dump(pt: &Table, level: usize, table: PhysAddr, path: &str, above: &str, out: &mut Vec<String>) {
    for i in 0..512 {
        let Some(e) = pt.read_descriptor(level, table, i) else {
            continue;
        };
        if e & 1 == 0 {
            continue;
        }
        let p = if path.is_empty() {
            i.to_string()
        } else {
            format!("{path}.{i}")
        };
        match pt.format().decode(e, level) {
            Pte::Leaf { .. } => out.push(format!("leaf {p} {above} pte={e:#x}")),
            Pte::Table(next) => {
                let flags = hex(e & !ADDRESS);
                let a = if above.is_empty() {
                    format!("t={flags}")
                } else {
                    format!("{above}/{flags}")
                };
                dump(pt, level + 1, next, &p, &a, out);
            }
            Pte::Invalid => out.push(format!("invalid {p} {e:#x}")),
        }
    }
}

fn run(pt: &Table, line: &str, out: &mut Vec<String>) {
    let w: Vec<&str> = line.split_whitespace().collect();
    match w[0] {
        "map" => {
            let (iova, pa, pgsize, count) = (num(w[1]), num(w[2]), num(w[3]), num(w[4]));
            let prot = Prot::from_bits_truncate(num(w[5]) as u32);
            let total = pgsize * count;
            let mut done = 0;
            let mut ok = true;
            while done < total {
                let left = ((total - done) / pgsize) as usize;
                match pt.map_pages(
                    Iova::new(iova + done),
                    PhysAddr::new(pa + done),
                    pgsize,
                    left,
                    prot,
                ) {
                    Ok(n) => done += n,
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            if !ok && done > 0 {
                let mut g = IotlbGather::new();
                pt.unmap_pages(Iova::new(iova), pgsize, (done / pgsize) as usize, &mut g);
            }
            out.push(format!("map {}", if ok { "ok" } else { "err" }));
        }
        "unmap" => {
            let (iova, pgsize, count) = (num(w[1]), num(w[2]), num(w[3]));
            let mut g = IotlbGather::new();
            let mut done = 0;
            while done < pgsize * count {
                let left = ((pgsize * count - done) / pgsize) as usize;
                let n = pt.unmap_pages(Iova::new(iova + done), pgsize, left, &mut g);
                if n == 0 {
                    break;
                }
                done += n;
            }
            out.push(format!("unmap {}", hex(done)));
        }
        "phys" => {
            let pa = pt.iova_to_phys(Iova::new(num(w[1])));
            out.push(format!("phys {}", hex(pa.map_or(0, |p| p.raw()))));
        }
        "dump" => dump(pt, 0, pt.root(), "", "", out),
        other => panic!("unknown call {other}"),
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "walks 512 entries a table; the same codec runs under Miri in formats.rs"
)]
fn every_call_and_every_leaf_match_linux_7_3() {
    let pt = IoPageTable::new(X86_64::new(4, 52).unwrap(), HeapMemory::new()).unwrap();
    let mut ours = Vec::new();
    for line in SPEC
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        ours.push(format!("> {line}"));
        run(&pt, line, &mut ours);
    }
    let linux: Vec<&str> = LINUX.lines().filter(|l| !l.starts_with('#')).collect();
    let leaves = linux.iter().filter(|l| l.starts_with("leaf ")).count();
    assert!(leaves > 500, "the recording has its leaves ({leaves})");
    for (i, (a, b)) in ours.iter().zip(&linux).enumerate() {
        assert_eq!(a, b, "line {i} differs from Linux 7.3");
    }
    assert_eq!(ours.len(), linux.len());
}
