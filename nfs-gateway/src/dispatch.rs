//! From one received record to one reply: the RPC header, credentials, program and version
//! checks, then the MOUNT or NFS procedure. Runs on a worker thread.

use std::net::IpAddr;

use crate::rpc::{self, Accept, AuthStat, BadCall, Reply};
use crate::server::Shared;
use crate::xdr::Decoder;
use crate::{mount, nfs3};

pub const NFS_PROGRAM: u32 = 100_003;
pub const MOUNT_PROGRAM: u32 = 100_005;

/// The reply to a record (with its record mark), or None when the record is not a call.
pub fn handle(shared: &Shared, record: &[u8], peer: IpAddr) -> Option<Reply> {
    let mut d = Decoder::new(record);
    let call = match rpc::parse_call(&mut d) {
        Ok(c) => c,
        Err(BadCall::Unreadable) => return None,
        Err(BadCall::Mismatch { xid }) => return Some(rpc::finish(rpc::rpc_mismatch(xid), 0)),
        Err(BadCall::BadCred { xid }) => {
            return Some(rpc::finish(rpc::auth_error(xid, AuthStat::BadCred), 0))
        }
    };
    if call.flavor != rpc::AUTH_NONE && call.flavor != rpc::AUTH_SYS {
        return Some(rpc::finish(rpc::auth_error(call.xid, AuthStat::TooWeak), 0));
    }
    let (reply, spliced) = match call.prog {
        NFS_PROGRAM if call.vers != 3 => (rpc::prog_mismatch(call.xid, 3, 3), 0),
        NFS_PROGRAM => nfs3::call(shared, &call, d, peer),
        MOUNT_PROGRAM if call.vers != 3 => (rpc::prog_mismatch(call.xid, 3, 3), 0),
        MOUNT_PROGRAM => (mount::call(shared, &call, d, peer), 0),
        _ => (rpc::accepted(call.xid, Accept::ProgUnavail, 64), 0),
    };
    Some(rpc::finish(reply, spliced))
}
