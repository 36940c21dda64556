//! NFS file handles: an export id and the file's kernel handle, authenticated with an HMAC.
//!
//! ```text
//! 0      1          5            9     10        10+n       26+n
//! | ver  | export id | kernel type | n   | kernel handle | MAC (16) |
//! ```
//! The MAC (HMAC-SHA256, truncated to 128 bits) covers every byte before it and the identity
//! (device, inode) of the export's root directory, under a key kept in the state database. So a
//! forged or altered handle fails verification (→ NFS3ERR_BADHANDLE) and can never name another
//! file; a handle stays valid across restarts (same key, same kernel handle); and handles of an
//! export whose path is changed to another directory, or that is deleted, no longer verify or
//! resolve (→ NFS3ERR_STALE).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::sys::{KernelHandle, MAX_KERNEL_HANDLE};

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const HEADER: usize = 10;
/// NFSv3 handles are at most 64 bytes.
pub const MAX_HANDLE: usize = 64;
const _: () = assert!(HEADER + MAX_KERNEL_HANDLE + MAC_LEN <= MAX_HANDLE);

/// A verified handle's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub export_id: u32,
    pub kernel: KernelHandle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleError {
    /// Not a handle of ours, or altered (→ NFS3ERR_BADHANDLE).
    Bad,
}

/// Makes and checks handles under one key.
#[derive(Clone)]
pub struct HandleKey {
    mac: Hmac<Sha256>,
}

impl HandleKey {
    pub fn new(key: &[u8]) -> Self {
        Self {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length"),
        }
    }

    fn tag(&self, body: &[u8], root: (u64, u64)) -> [u8; MAC_LEN] {
        let mut m = self.mac.clone();
        m.update(body);
        m.update(&root.0.to_be_bytes());
        m.update(&root.1.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// The handle of a file of export `export_id` whose root has identity `root`.
    pub fn encode(&self, export_id: u32, root: (u64, u64), k: &KernelHandle) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER + k.bytes.len() + MAC_LEN);
        h.push(VERSION);
        h.extend_from_slice(&export_id.to_be_bytes());
        h.extend_from_slice(&k.kind.to_be_bytes());
        h.push(k.bytes.len() as u8);
        h.extend_from_slice(&k.bytes);
        let tag = self.tag(&h, root);
        h.extend_from_slice(&tag);
        h
    }

    /// The export id a handle claims, before verification (to find the export's root).
    pub fn export_id(h: &[u8]) -> Result<u32, HandleError> {
        if h.len() < HEADER + MAC_LEN || h[0] != VERSION {
            return Err(HandleError::Bad);
        }
        Ok(u32::from_be_bytes([h[1], h[2], h[3], h[4]]))
    }

    /// Verifies a handle against the root identity of the export it claims.
    pub fn decode(&self, h: &[u8], root: (u64, u64)) -> Result<Decoded, HandleError> {
        let export_id = Self::export_id(h)?;
        let n = usize::from(h[9]);
        if n == 0 || n > MAX_KERNEL_HANDLE || h.len() != HEADER + n + MAC_LEN {
            return Err(HandleError::Bad);
        }
        let (body, tag) = h.split_at(HEADER + n);
        let mut m = self.mac.clone();
        m.update(body);
        m.update(&root.0.to_be_bytes());
        m.update(&root.1.to_be_bytes());
        m.verify_truncated_left(tag).map_err(|_| HandleError::Bad)?;
        Ok(Decoded {
            export_id,
            kernel: KernelHandle {
                kind: i32::from_be_bytes([h[5], h[6], h[7], h[8]]),
                bytes: body[HEADER..].to_vec(),
            },
        })
    }
}

/// 32 random bytes for a new key.
pub fn fresh_key() -> std::io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    let mut got = 0;
    while got < key.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `key`.
        let n = unsafe { libc::getrandom(key[got..].as_mut_ptr().cast(), key.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_verify_and_tampering_fails() {
        let key = HandleKey::new(&[7; 32]);
        let k = KernelHandle {
            kind: 1,
            bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
        };
        let root = (2049, 2);
        let h = key.encode(9, root, &k);
        assert!(h.len() <= MAX_HANDLE);
        assert_eq!(
            key.decode(&h, root).unwrap(),
            Decoded {
                export_id: 9,
                kernel: k.clone()
            }
        );
        // Every single-bit change is refused.
        for i in 0..h.len() {
            for bit in 0..8 {
                let mut bad = h.clone();
                bad[i] ^= 1 << bit;
                assert!(key.decode(&bad, root).is_err(), "byte {i} bit {bit}");
            }
        }
        // Another key, another export root, truncation, extension: refused.
        assert!(HandleKey::new(&[8; 32]).decode(&h, root).is_err());
        assert!(key.decode(&h, (2049, 3)).is_err());
        assert!(key.decode(&h[..h.len() - 1], root).is_err());
        let mut longer = h.clone();
        longer.push(0);
        assert!(key.decode(&longer, root).is_err());
        assert!(key.decode(&[], root).is_err());
        assert_ne!(fresh_key().unwrap(), fresh_key().unwrap());
    }
}
