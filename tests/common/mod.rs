//! Shared support for the end-to-end tests: a real daemon in a temporary directory, and test
//! images built from Debian's busybox-static.
#![allow(dead_code)]

pub mod browser;
pub mod daemon;
pub mod image_builder;
pub mod registry;
pub mod tmux;
