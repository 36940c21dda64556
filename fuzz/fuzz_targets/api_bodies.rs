//! The JSON bodies the API takes — containers, jobs (with their cron schedule and time zone),
//! NFS exports, engines and resource patches — through the same deserialization and validation
//! the handlers use. Bad input must be refused with an error, never a panic. The first byte picks
//! the body type.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            if let Ok(c) = serde_json::from_slice::<inarray_runtime::ContainerConfig>(body) {
                let _ = c.validate();
            }
        }
        1 => {
            if let Ok(j) = serde_json::from_slice::<inarray_jobs::JobSpec>(body) {
                let _ = j.validate();
            }
        }
        2 => {
            if let Ok(e) = serde_json::from_slice::<inarray_nfs::ExportSpec>(body) {
                let _ = e.validate();
            }
        }
        3 => {
            if let Ok(e) = serde_json::from_slice::<inarray_runtime::engines::EngineDef>(body) {
                let _ = inarray_runtime::engines::validate_name(&e.name);
                let _ = e.resources.validate("resources");
            }
        }
        _ => {
            if let Ok(r) = serde_json::from_slice::<inarray_runtime::resources::Resources>(body) {
                if r.validate("resources").is_ok() {
                    // A valid limit set translates to OCI resources on both hierarchies.
                    let _ = r.to_oci(Some((8, 0)), false);
                    let _ = r.to_oci(Some((8, 0)), true);
                }
            }
        }
    }
});
