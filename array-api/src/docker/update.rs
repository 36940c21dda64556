//! `POST /containers/{id}/update` (`docker update`): a body of HostConfig's resource fields and
//! `RestartPolicy` → a native [`ContainerUpdate`]. As in Docker a zero (or empty) field means
//! "unchanged"; -1 (`PidsLimit`, `CpuQuota`) removes that limit. Any other field must be absent
//! or zero: a field asked for that inarray cannot change is a 400 naming it, not a silent no-op.

use inarray_runtime::resources::ResourcesUpdate;
use inarray_runtime::ContainerUpdate;
use serde_json::Value;

use super::errors::{DockerError, Result};
use super::fields::neutral;
use super::types::HostConfig;

/// The fields an update may set.
const FIELDS: [&str; 10] = [
    "BlkioWeight",
    "CpuShares",
    "CpuPeriod",
    "CpuQuota",
    "CpusetCpus",
    "Memory",
    "MemoryReservation",
    "NanoCpus",
    "PidsLimit",
    "RestartPolicy",
];

/// A value to set, or (none) unchanged.
fn some<T>(v: Option<T>) -> Option<Option<T>> {
    v.map(Some)
}

pub fn update_from(body: &Value) -> Result<ContainerUpdate> {
    let obj = match body {
        Value::Object(o) => o,
        Value::Null => {
            return Err(DockerError::bad_request(
                "the request body is empty: give the fields to update",
            ))
        }
        _ => {
            return Err(DockerError::bad_request(
                "the request body is not an object",
            ))
        }
    };
    for (k, v) in obj {
        if !FIELDS.contains(&k.as_str()) && !neutral(v) {
            return Err(DockerError::bad_request(format!(
                "{k}: cannot be updated on inarray (the fields it changes: {})",
                FIELDS.join(", ")
            )));
        }
    }
    let h: HostConfig = super::typed(body.clone())?;
    let set = super::create::resources(&h)?;
    let r = ResourcesUpdate {
        memory: some(set.memory),
        memory_reservation: some(set.memory_reservation),
        cpus: if h.cpu_quota == -1 {
            Some(None)
        } else {
            some(set.cpus)
        },
        cpu_weight: some(set.cpu_weight),
        cpuset: some(set.cpuset),
        io_weight: some(set.io_weight),
        pids: match h.pids_limit {
            Some(0 | -1) => Some(None),
            _ => some(set.pids),
        },
        ..ResourcesUpdate::default()
    };
    let restart = if h.restart_policy.name.is_empty() {
        None
    } else {
        Some(super::create::restart_policy(&h)?)
    };
    let changes = r != ResourcesUpdate::default();
    if !changes && restart.is_none() {
        return Err(DockerError::bad_request(
            "nothing to update: give a resource field or RestartPolicy",
        ));
    }
    Ok(ContainerUpdate {
        resources: changes.then_some(r),
        restart,
        name: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use inarray_runtime::resources::Bytes;
    use inarray_runtime::RestartPolicy;
    use serde_json::json;

    /// What the docker CLI sends for `docker update --memory 64m` (every field, zero but one).
    fn cli_body(over: Value) -> Value {
        let mut b = json!({
            "BlkioWeight": 0, "CpuShares": 0, "CpuPeriod": 0, "CpuQuota": 0,
            "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "",
            "Devices": null, "DeviceCgroupRules": null, "DeviceRequests": null, "KernelMemory": 0,
            "Memory": 0, "MemoryReservation": 0, "MemorySwap": 0, "NanoCpus": 0,
            "OomKillDisable": null, "PidsLimit": null, "Ulimits": null,
            "RestartPolicy": {"Name": "", "MaximumRetryCount": 0}
        });
        for (k, v) in over.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    }

    #[test]
    fn zero_is_unchanged_and_a_value_is_set() {
        let u = update_from(&cli_body(json!({"Memory": 67108864}))).unwrap();
        let r = u.resources.unwrap();
        assert_eq!(r.memory, Some(Some(Bytes(64 << 20))));
        assert_eq!(r.cpus, None);
        assert_eq!(r.pids, None);
        assert!(u.restart.is_none());
    }

    #[test]
    fn minus_one_clears_and_a_policy_is_replaced() {
        let u = update_from(&cli_body(json!({
            "PidsLimit": -1, "CpuQuota": -1,
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}
        })))
        .unwrap();
        let r = u.resources.unwrap();
        assert_eq!(r.pids, Some(None));
        assert_eq!(r.cpus, Some(None));
        assert_eq!(u.restart, Some(RestartPolicy::OnFailure { max: Some(3) }));
        let cpus = update_from(&cli_body(json!({"NanoCpus": 1_500_000_000}))).unwrap();
        assert_eq!(cpus.resources.unwrap().cpus, Some(Some(1.5)));
    }

    #[test]
    fn what_cannot_change_is_named() {
        let e = update_from(&cli_body(json!({"KernelMemory": 1024}))).unwrap_err();
        assert!(
            e.message.starts_with("KernelMemory: cannot be updated"),
            "{}",
            e.message
        );
        let e = update_from(&cli_body(json!({}))).unwrap_err();
        assert!(e.message.starts_with("nothing to update"), "{}", e.message);
        let e = update_from(&cli_body(json!({"Memory": -5}))).unwrap_err();
        assert!(e.message.contains("Memory"), "{}", e.message);
        assert!(update_from(&Value::Null).is_err());
        assert!(update_from(&json!([1])).is_err());
    }
}
