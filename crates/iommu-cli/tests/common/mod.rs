//! What every test of the binary uses: running it, and scratch directories.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// Runs `iommu` with `args`: `(exit status, stdout, stderr)`.
pub fn iommu(args: &[&str]) -> (i32, String, String) {
    iommu_in(args, None)
}

/// [`iommu`] with `stdin` fed to it.
pub fn iommu_in(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_iommu"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run iommu");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().expect("wait for iommu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

/// A fresh directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iommu-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A machine of the test corpus (`iommu-pci/tests/data/machines`).
pub fn machine(name: &str) -> String {
    format!(
        "{}/../iommu-pci/tests/data/machines/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}
