//! `AgentPid` and `MessageId`: 128-bit identifiers that display as UUIDs.
//!
//! Making an id must not cost a system call. Each thread seeds itself once from the OS
//! (through `uuid`'s v4 generator) and then derives ids from a counter:
//!
//! - the high 64 bits are the thread's random seed (with the UUID version nibble set),
//! - the low 64 bits are the thread's counter, scrambled by multiplication with an odd
//!   constant modulo 2^62 (a bijection, so no two ids of one thread collide) and tagged
//!   with the RFC 4122 variant bits.
//!
//! Ids of different threads differ in their 60 random seed bits; two threads share a
//! seed with probability about `threads² / 2^61`.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Odd multiplier for scrambling counters (a 62-bit golden-ratio constant).
const SCRAMBLE: u64 = 0x9E37_79B9_7F4A_7C15 & LOW_62;
const LOW_62: u64 = (1 << 62) - 1;

thread_local! {
    /// `(seed, counter)` of this thread; the seed is 0 until first use.
    static GENERATOR: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A fresh, process-unique UUID (version 4 layout), without a system call after the
/// first id of each thread.
fn next_uuid() -> Uuid {
    GENERATOR.with(|cell| {
        let (mut seed, counter) = cell.get();
        if seed == 0 {
            let (hi, _) = Uuid::new_v4().as_u64_pair();
            // Version nibble 4 in bits 12..16 of the high half; never 0 afterwards.
            seed = (hi & !0xF000) | 0x4000;
        }
        cell.set((seed, counter.wrapping_add(1)));
        let low = (counter.wrapping_mul(SCRAMBLE) & LOW_62) | (0b10 << 62);
        Uuid::from_u64_pair(seed, low)
    })
}

/// The address of an agent, like an Erlang pid.
///
/// `AgentPid::new()` makes a fresh random-looking, process-unique id. The nil pid
/// ([`AgentPid::nil`]) stands for "no sender" (an envelope without
/// [`with_from`](crate::MessageEnvelope::with_from)).
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::AgentPid;
///
/// let a = AgentPid::new();
/// let b = AgentPid::new();
/// assert_ne!(a, b);
/// assert_eq!(a.to_string().len(), 36); // displayed as a UUID
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentPid(
    /// The UUID, public as in 1.x: `AgentPid(uuid)` and `pid.0` work. `AgentPid(Uuid::nil())`
    /// is [`AgentPid::nil`], "no sender".
    pub Uuid,
);

impl AgentPid {
    /// A fresh pid.
    pub fn new() -> Self {
        AgentPid(next_uuid())
    }

    /// The nil pid, used for "no sender".
    pub const fn nil() -> Self {
        AgentPid(Uuid::nil())
    }

    /// Whether this is the nil pid.
    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        AgentPid(uuid)
    }

    /// The UUID of this pid.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The pid as a hyphenated UUID string.
    pub fn as_str(&self) -> String {
        self.0.to_string()
    }
}

impl Default for AgentPid {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for AgentPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for AgentPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentPid({})", self.0)
    }
}

/// The identity of one message: the key for acknowledgements and deduplication.
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::MessageId;
///
/// assert_ne!(MessageId::new(), MessageId::new());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A fresh id (no system call).
    pub fn new() -> Self {
        MessageId(next_uuid())
    }

    /// The id as a hyphenated UUID string.
    pub fn as_str(&self) -> String {
        self.0.to_string()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

/// The identifier of a supervisor, as 1.x re-exported it from `terraphim_agent_supervisor`.
///
/// Kept so 1.x code that names it compiles; nothing in this crate uses it. It is this
/// crate's own type: a `terraphim_agent_supervisor::SupervisorId` converts with
/// `SupervisorId(their_id.0)`.
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::SupervisorId;
///
/// let id = SupervisorId::new();
/// assert_ne!(id, SupervisorId::new());
/// assert_eq!(id.as_str(), id.to_string());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SupervisorId(
    /// The UUID.
    pub Uuid,
);

impl SupervisorId {
    /// A fresh id (no system call).
    pub fn new() -> Self {
        SupervisorId(next_uuid())
    }

    /// The id as a hyphenated UUID string.
    pub fn as_str(&self) -> String {
        self.0.to_string()
    }
}

impl Default for SupervisorId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SupervisorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for SupervisorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SupervisorId({})", self.0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn unique_within_and_across_threads() {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| (0..50_000).map(|_| MessageId::new()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(seen.insert(id), "duplicate id");
            }
        }
    }

    #[test]
    fn looks_like_uuid_v4() {
        let id = MessageId::new();
        assert_eq!(id.0.get_version_num(), 4);
        assert_eq!(id.0.get_variant(), uuid::Variant::RFC4122);
        assert!(!AgentPid::new().is_nil());
        assert!(AgentPid::nil().is_nil());
    }
}
