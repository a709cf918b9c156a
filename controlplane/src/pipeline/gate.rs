//! Who may receive which proxy's configuration: on the mTLS port, a stream's verified SPIFFE
//! ID must be the identity of the workload its node id names, since that configuration holds
//! the workload's private key. The plaintext port (an explicit opt-in, loopback only) trusts
//! the node id.

use std::sync::Arc;

use tokio::sync::watch;

use crate::model::{MeshModel, ProxyNode};
use crate::xds::generate::workload_of;
use crate::xds::server::{Caller, NodeGate, NodeInfo};

#[derive(Debug)]
pub struct WorkloadGate {
    pub model: watch::Receiver<Arc<MeshModel>>,
}

impl NodeGate for WorkloadGate {
    fn admit(&self, node: &NodeInfo, caller: &Caller) -> Result<(), String> {
        let proxy = ProxyNode::from_metadata(&node.id, &node.metadata).map_err(|e| e.reason)?;
        let peer = match caller {
            Caller::Verified(peer) => peer,
            Caller::LoopbackPlaintext => return Ok(()),
        };
        let model = self.model.borrow().clone();
        let workload = workload_of(&model, &proxy).map_err(|e| e.to_string())?;
        if &workload.identity != peer {
            return Err(format!(
                "the client certificate is {peer}, but workload {}/{} runs as {}",
                workload.namespace, workload.name, workload.identity
            ));
        }
        Ok(())
    }
}
