//! What an NFS client sends: ONC RPC record marking (fragments, lengths up to 2 GiB claimed)
//! and call headers with AUTH_SYS credentials, decoded as the gateway's connections do. Any
//! bytes end in records refused or calls parsed, never a panic or unbounded memory (the record
//! limit is small here so that a claimed length cannot make the fuzzer allocate much).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let calls = inarray_nfs::fuzzing::records_and_calls(data, 64 << 10);
    // A call header is at least 40 bytes plus a 4-byte record mark.
    assert!(calls <= data.len() / 44);
});
