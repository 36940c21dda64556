//! Image archives (OCI layout or docker archive, as a tar stream): the bounded tar reader, the
//! index/manifest/config JSON, digest and size checks, decompression and the confined unpack.
//! Whatever the bytes, the import ends in `Ok` or an error, and leaves nothing in the store's
//! staging area (`tmp/`).
#![no_main]

use std::sync::OnceLock;

use inarray_images::{ImageStore, Limits};
use libfuzzer_sys::fuzz_target;

fn store() -> &'static (tempfile::TempDir, ImageStore) {
    static STORE: OnceLock<(tempfile::TempDir, ImageStore)> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        // Small, so a crafted archive cannot make one run slow.
        let limits = Limits {
            max_blob_bytes: 4 << 20,
            max_unpacked_layer_bytes: 16 << 20,
            ..Limits::default()
        };
        let store = ImageStore::open(&dir.path().join("images"), limits).expect("store");
        (dir, store)
    })
}

fuzz_target!(|data: &[u8]| {
    let (_, s) = store();
    let _ = s.import_archive(data, None);
    let tmp = s.root().join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging left behind: {left:?}");
});
