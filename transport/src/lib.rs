//! cr-transport: QUIC sessions between cr hosts (identity, trust, the
//! migration protocol's messages and streams). It knows nothing about
//! processes.
//!
//! This crate grows with `cr serve` and `cr migrate`; see
//! `docs/architecture.md`.
