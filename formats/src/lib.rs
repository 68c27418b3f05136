//! cr-formats: everything cr keeps as bytes at rest or sends on the wire, and
//! nothing that makes a system call. Every decoder here must survive
//! arbitrary bytes.
//!
//! This crate grows with the checkpoint image format and the ploop-like disk
//! format; see `docs/architecture.md`.
