//! The filesystem primitives the workspace shares, one copy each: paths opened beneath a
//! directory fd with `openat2` (and its EAGAIN retry), descriptors owned from the moment a
//! syscall returns them, full-length `pread`/`pwrite` loops, and atomic file replacement.
//!
//! A leaf crate: it depends on `libc` and `nix` only. Every `unsafe` block is in `fd.rs`, and in
//! `quota.rs` (the filesystem ioctls behind array volumes).

mod atomic;
mod beneath;
mod fd;
mod io;
mod netns;
pub mod quota;

pub use atomic::{write_atomic, write_replace};
pub use beneath::{identity, is_dir, open_beneath, open_or_create_dirs, proc_fd_path};
pub use fd::{dup, open, openat, pidfd_open, pty_peer, set_controlling_tty, set_window_size};
pub use io::{pread_append, pwrite_all};
pub use netns::{
    create_netns, create_netns_with, is_mount_point, is_netns, make_shared_dir, remove_netns,
};
/// The flag types of [`open_beneath`], for crates that do not use nix themselves.
pub use nix::fcntl::{OFlag, ResolveFlag};
