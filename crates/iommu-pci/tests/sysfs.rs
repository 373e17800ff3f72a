//! A sysfs tree is untrusted input: reading it is bounded in size and
//! time, and what is not a sysfs attribute is refused, naming its path.
#![cfg(unix)]

use iommu_pci::{read_sysfs, SysfsError};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iommu-pci-sysfs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bus/pci/devices")).unwrap();
    dir
}

/// A function's directory with a plain endpoint's 256-byte `config`.
fn function(root: &Path, name: &str) -> PathBuf {
    let d = root.join("bus/pci/devices").join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut cfg = vec![0u8; 256];
    cfg[..4].copy_from_slice(&[0x86, 0x80, 0x34, 0x12]);
    cfg[0x0b] = 0x02; // network controller
    std::fs::write(d.join("config"), &cfg).unwrap();
    d
}

/// `read_sysfs` on another thread, which must answer within seconds.
fn read_within(root: &Path) -> Result<usize, SysfsError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(read_sysfs(&root).map(|m| m.devices.len()));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("read_sysfs blocked")
}

#[test]
fn a_plain_tree_reads() {
    let root = scratch("plain");
    function(&root, "0000:00:01.0");
    assert_eq!(read_within(&root).unwrap(), 1);
}

#[test]
fn a_config_larger_than_configuration_space_is_refused_without_reading_it_whole() {
    let root = scratch("large");
    let d = function(&root, "0000:00:01.0");
    // 1 GiB, sparse: the old reader took all of it into memory.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("config"))
        .unwrap();
    f.set_len(1 << 30).unwrap();
    match read_within(&root) {
        Err(SysfsError::TooLarge { path, limit }) => {
            assert_eq!(path, d.join("config"));
            assert_eq!(limit, 4096);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_config_linked_to_dev_zero_is_refused_as_a_device() {
    let root = scratch("zero");
    let d = function(&root, "0000:00:01.0");
    std::fs::remove_file(d.join("config")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join("config")).unwrap();
    let e = read_within(&root).unwrap_err();
    assert!(
        matches!(
            &e,
            SysfsError::NotAFile {
                kind: "character device",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("0000:00:01.0/config"), "{e}");
}

#[test]
fn a_config_that_is_a_fifo_is_refused_without_blocking() {
    let root = scratch("fifo");
    let d = function(&root, "0000:00:01.0");
    std::fs::remove_file(d.join("config")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(d.join("config"))
        .status()
        .expect("mkfifo (coreutils)");
    assert!(made.success());
    let e = read_within(&root).unwrap_err();
    assert!(
        matches!(&e, SysfsError::NotAFile { kind: "FIFO", .. }),
        "{e:?}"
    );
}

#[test]
fn a_config_that_is_a_directory_is_refused() {
    let root = scratch("dir");
    let d = function(&root, "0000:00:01.0");
    std::fs::remove_file(d.join("config")).unwrap();
    std::fs::create_dir(d.join("config")).unwrap();
    let e = read_within(&root).unwrap_err();
    assert!(
        matches!(
            &e,
            SysfsError::NotAFile {
                kind: "directory",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_config_link_that_loops_is_an_error_naming_it() {
    let root = scratch("loop");
    let d = function(&root, "0000:00:01.0");
    std::fs::remove_file(d.join("config")).unwrap();
    std::os::unix::fs::symlink(d.join("config"), d.join("config")).unwrap();
    let e = read_within(&root).unwrap_err();
    assert!(
        matches!(&e, SysfsError::Io { path, .. } if path.ends_with("config")),
        "{e:?}"
    );
}

#[test]
fn a_devices_directory_with_more_entries_than_any_machine_is_refused() {
    let root = scratch("entries");
    function(&root, "0000:00:01.0");
    let devices = root.join("bus/pci/devices");
    for i in 0..(4 * iommu_pci::MAX_FUNCTIONS) {
        std::fs::File::create(devices.join(format!("x{i}"))).unwrap();
    }
    let e = read_within(&root).unwrap_err();
    assert!(
        matches!(&e, SysfsError::TooManyEntries { limit, .. } if *limit == 4 * iommu_pci::MAX_FUNCTIONS),
        "{e:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_config_read_without_root_is_said_to_be_so() {
    // The kernel gives a reader without root the 64-byte header only.
    let root = scratch("unprivileged");
    let d = function(&root, "0000:00:01.0");
    let cfg = std::fs::read(d.join("config")).unwrap();
    std::fs::write(d.join("config"), &cfg[..64]).unwrap();
    let e = read_within(&root).unwrap_err();
    assert!(
        matches!(&e, SysfsError::WithoutRoot(path) if path.ends_with("config")),
        "{e:?}"
    );
    assert!(e.to_string().contains("without root"), "{e}");
}
