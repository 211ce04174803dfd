//! [`ClusterRoutes`]: the system's own table first, then the rest of a cluster.
//!
//! A cluster node keeps its local routes exactly as a single system does; a pid that
//! the table does not know is handed to the *remote* destination (the NATS transport
//! of `crate::cluster`), which resolves it through the cluster's registry and carries
//! it to the node that owns it. The router layer knows nothing of NATS: the transport
//! is one more [`Destination`].
//!
//! A destination that [`claims`](Destination::claims) a message (a durable node, for
//! its own agents) takes it first; the local table then gets it from the transport.
//!
//! | the local push answered | outcome |
//! |---|---|
//! | anything but `NotFound` and `Forward` | that answer (local pids never leave the process) |
//! | `Forward(member)` (a local group picked a member on another node) | the remote destination's answer for `member` |
//! | `NotFound` | the remote destination's answer: `Done` once handed to the transport, `NotFound` when no node owns the pid, `Failed` when the message cannot cross a process |

use super::default::LocalRoutes;
use super::{Destination, Push};
use crate::message::{AgentPid, MessagePriority};

/// Local routes, then a remote destination for pids that live on other nodes.
pub(crate) struct ClusterRoutes {
    /// The table of this node; shared with the transport, which pushes what arrives
    /// from other nodes into it.
    pub(crate) local: std::sync::Arc<LocalRoutes>,
    /// Where a pid unknown here goes.
    remote: std::sync::Arc<dyn Destination>,
    /// Whether the remote destination may claim messages (a durable node): one branch
    /// on the local fast path otherwise.
    durable: bool,
}

impl ClusterRoutes {
    pub(crate) fn new(
        local: std::sync::Arc<LocalRoutes>,
        remote: std::sync::Arc<dyn Destination>,
        durable: bool,
    ) -> Self {
        ClusterRoutes {
            local,
            remote,
            durable,
        }
    }
}

impl Destination for ClusterRoutes {
    #[inline]
    fn push(
        &self,
        to: &AgentPid,
        out: crate::message::Outgoing,
        priority: MessagePriority,
    ) -> Push {
        if self.durable && self.remote.claims(to, &out) {
            return self.remote.push(to, out, priority);
        }
        match self.local.push(to, out, priority) {
            Push::NotFound(out) => self.remote.push(to, out, priority),
            // A local group picked a member on another node.
            Push::Forward(out, member) => self.remote.push(&member, out, priority),
            pushed => pushed,
        }
    }
}
