//! Which services a workload's sidecar is told about: Istio's `exportTo` on the `ServiceEntry`
//! (`*` or nothing: every namespace; `.`: its own; otherwise the listed namespaces). A host
//! declared in two namespaces is the first declaration's (the model warns about the other).

use crate::model::{MeshModel, Service, Workload};

pub fn visible_services<'m>(model: &'m MeshModel, workload: &Workload) -> Vec<&'m Service> {
    model
        .services
        .values()
        .filter(|s| model.hosts.get(&s.key.hostname) == Some(&s.key))
        .filter(|s| {
            s.export_to.is_empty()
                || s.export_to.iter().any(|to| {
                    to == "*"
                        || (to == "." && s.key.namespace == workload.namespace)
                        || *to == workload.namespace
                })
        })
        .collect()
}
