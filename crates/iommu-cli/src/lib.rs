//! The crate of the `iommu` tool. Its library target holds nothing but the
//! project's README, so that every Rust example in it is compiled and run
//! as a doc test (`cargo test --doc`).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
// The README is written for GitHub: its brackets (`PA[51:48]`) are text,
// not links to items.
#![allow(rustdoc::broken_intra_doc_links)]
#![doc = include_str!("../README.md")]
