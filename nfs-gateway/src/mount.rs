//! MOUNT v3 (RFC 1813 appendix I) on the NFS port: MNT checks the client's address against the
//! export's rules (re-read from SQL, so changes apply to new mounts at once) and hands out the
//! root handle; EXPORT lists every export with its client matches.

use std::ffi::CString;
use std::net::IpAddr;

use crate::exports::Ident;
use crate::rpc::{self, Accept, CallHeader};
use crate::server::Shared;
use crate::sys;
use crate::xdr::{Decoder, Encoder};

const MNT3_OK: u32 = 0;
const MNT3ERR_NOENT: u32 = 2;
const MNT3ERR_ACCES: u32 = 13;
const MNT3ERR_NOTDIR: u32 = 20;
const MNT3ERR_INVAL: u32 = 22;
const MNT3ERR_NAMETOOLONG: u32 = 63;
const MNT3ERR_SERVERFAULT: u32 = 10006;
const MNTPATHLEN: usize = 1024;

pub fn call(shared: &Shared, call: &CallHeader, mut d: Decoder<'_>, peer: IpAddr) -> Encoder {
    match call.proc_ {
        // NULL, UMNT, UMNTALL: nothing is recorded per client, so nothing to undo.
        0 | 4 => rpc::accepted(call.xid, Accept::Success, 64),
        3 => match d.opaque(MNTPATHLEN) {
            Ok(_) => rpc::accepted(call.xid, Accept::Success, 64),
            Err(_) => rpc::accepted(call.xid, Accept::GarbageArgs, 64),
        },
        1 => {
            let Ok(path) = d.opaque(MNTPATHLEN) else {
                return rpc::accepted(call.xid, Accept::GarbageArgs, 64);
            };
            let mut e = rpc::accepted(call.xid, Accept::Success, 128);
            match mnt(shared, path, call, peer) {
                Ok(fh) => {
                    e.u32(MNT3_OK);
                    e.opaque(&fh);
                    e.u32(1);
                    e.u32(rpc::AUTH_SYS);
                }
                Err(stat) => e.u32(stat),
            }
            e
        }
        // DUMP: no per-client mount list is kept.
        2 => {
            let mut e = rpc::accepted(call.xid, Accept::Success, 64);
            e.bool(false);
            e
        }
        5 => {
            if let Err(err) = shared.rt.block_on(shared.reload()) {
                tracing::error!(error = %err, "cannot reload the nfs exports");
            }
            let t = shared.table();
            let mut names: Vec<_> = t.by_name.keys().cloned().collect();
            names.sort();
            let mut e = rpc::accepted(call.xid, Accept::Success, 1024);
            for n in names {
                let x = &t.by_name[&n];
                e.bool(true);
                e.opaque(format!("/{n}").as_bytes());
                for c in &x.spec.clients {
                    e.bool(true);
                    e.opaque(c.matches.as_bytes());
                }
                e.bool(false);
            }
            e.bool(false);
            e
        }
        _ => rpc::accepted(call.xid, Accept::ProcUnavail, 64),
    }
}

/// `/<export>[/<sub/dir>]` → the handle of that directory, when the client may mount it.
fn mnt(shared: &Shared, path: &[u8], call: &CallHeader, peer: IpAddr) -> Result<Vec<u8>, u32> {
    if let Err(e) = shared.rt.block_on(shared.reload()) {
        tracing::error!(error = %e, "cannot reload the nfs exports");
        return Err(MNT3ERR_SERVERFAULT);
    }
    let path = std::str::from_utf8(path).map_err(|_| MNT3ERR_INVAL)?;
    let rest = path.strip_prefix('/').ok_or(MNT3ERR_INVAL)?;
    let (name, sub) = match rest.split_once('/') {
        Some((n, s)) => (n, s.trim_matches('/')),
        None => (rest, ""),
    };
    let t = shared.table();
    let Some(x) = t.by_name.get(name) else {
        return Err(MNT3ERR_NOENT);
    };
    if x.policy.access(peer).is_none() {
        tracing::warn!(export = %name, client = %peer, "mount refused: client not allowed");
        return Err(MNT3ERR_ACCES);
    }
    let Some(root) = &x.root else {
        return Err(MNT3ERR_NOENT);
    };
    tracing::info!(export = %name, client = %peer, path, "mount");
    if sub.is_empty() {
        return Ok(root.fh.clone());
    }
    for comp in sub.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." || comp.len() > 255 {
            return Err(if comp.len() > 255 {
                MNT3ERR_NAMETOOLONG
            } else {
                MNT3ERR_INVAL
            });
        }
    }
    let c = CString::new(sub).map_err(|_| MNT3ERR_INVAL)?;
    let ident: Ident = x.policy.map(call.cred.as_ref());
    sys::become_ident(&ident).map_err(|_| MNT3ERR_SERVERFAULT)?;
    let fd = sys::openat2(
        &root.fd,
        &c,
        libc::O_PATH | libc::O_DIRECTORY,
        libc::RESOLVE_BENEATH
            | libc::RESOLVE_NO_SYMLINKS
            | libc::RESOLVE_NO_MAGICLINKS
            | libc::RESOLVE_NO_XDEV,
    )
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::EXDEV) => MNT3ERR_NOENT,
        Some(libc::ENOTDIR) => MNT3ERR_NOTDIR,
        Some(libc::EACCES) | Some(libc::EPERM) => MNT3ERR_ACCES,
        _ => MNT3ERR_SERVERFAULT,
    })?;
    let k = sys::name_to_handle(&fd, c"").map_err(|_| MNT3ERR_SERVERFAULT)?;
    Ok(shared.key.encode(x.id, root.id, &k))
}
