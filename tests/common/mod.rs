//! Shared support for the end-to-end tests: a real daemon in a temporary directory, and test
//! images built from Debian's busybox-static.
#![allow(dead_code)]

pub mod browser;
pub mod certs;
pub mod daemon;
pub mod docker;
pub mod image_builder;
pub mod loopfs;
pub mod registry;
pub mod tmux;
