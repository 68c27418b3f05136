//! Containers: config, lifecycle verbs, and the kernel objects a container is
//! made of.
//!
//! Data flow of `cr run`: [`create`] validates and writes `config.toml`;
//! [`start`] spawns the [`supervisor`], which creates the [`cgroups`], forks
//! PID 1 into new [`namespaces`], wires the [`network`], and lets PID 1 build
//! its [`rootfs`], drop [`capabilities`] and exec the command.

pub mod capabilities;
pub mod cgroups;
pub mod config;
pub mod network;
pub mod rootfs;
pub mod state;
pub mod supervisor;
