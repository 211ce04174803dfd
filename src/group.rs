//! Load-balanced groups: one pid, many member mailboxes.
//!
//! A group is addressed like an agent; each message to it goes to one member, picked by
//! the group's [`LoadBalance`] strategy:
//!
//! | strategy | pick | cost per pick |
//! |---|---|---|
//! | `RoundRobin` | the next member after a shared cursor | one `fetch_add` |
//! | `LeastLoaded` | the member with the shortest mailbox; ties go to the first one after the round-robin cursor, so equal loads still spread | one `fetch_add` + one length read per member |
//! | `Random` | uniform, from a splitmix64 generator over an atomic Weyl sequence | one `fetch_add` |
//!
//! Members whose mailbox is closed (unregistered, shut down) are skipped while any open
//! member remains; with none open, the strategy's pick is used as is, and sending to it
//! fails with `ChannelClosed`.
//!
//! Picks read the member list under a read lock and hand the caller a reference to the
//! chosen [`Member`] (no clone, no refcount traffic); `join`/`leave` take the write
//! lock.
//!
//! A member is a local mailbox or, on a cluster node, a pid that lives on another node
//! ([`Member::Remote`]): its queue is not visible here, so it counts as available, and
//! `LeastLoaded` picks it only when no local member can take the message.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use crate::error::{MessagingError, MessagingResult};
use crate::mailbox::MailboxSender;
use crate::message::AgentPid;
use crate::sync::{read, write, AtomicU64, AtomicUsize, RwLock};

/// How a group picks the member that gets a message.
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::LoadBalance;
/// assert_eq!(LoadBalance::default(), LoadBalance::RoundRobin);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum LoadBalance {
    /// Each member in turn.
    #[default]
    RoundRobin,
    /// The member with the fewest queued messages.
    LeastLoaded,
    /// A member chosen uniformly at random.
    Random,
    /// Every member: each gets its own copy (with its own id), sent and retried on
    /// its own. Only payloads that can be copied go out (JSON, as every envelope,
    /// strings, bytes, numbers; not calls): anything else is refused before any
    /// member gets it, with an `InvalidMessage` error and a dead letter.
    Broadcast,
}

/// A load-balanced group of mailboxes.
pub(crate) struct Group {
    /// The group's own address.
    pid: AgentPid,
    /// How members are picked.
    strategy: LoadBalance,
    /// Members in join order; no two share an agent pid.
    members: RwLock<Vec<Member>>,
    /// Round-robin position (also the tie-break start of `LeastLoaded`). Wraps.
    cursor: AtomicUsize,
    /// Weyl-sequence state of the `Random` generator.
    rng: AtomicU64,
}

/// One member of a group.
pub(crate) enum Member {
    /// An agent of this system: pushed into directly.
    Local(MailboxSender),
    /// An agent on another cluster node: routed by pid.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Remote(AgentPid),
}

impl Member {
    /// The member's pid.
    pub(crate) fn pid(&self) -> &AgentPid {
        match self {
            Member::Local(sender) => sender.agent_id(),
            Member::Remote(pid) => pid,
        }
    }
}

/// The Weyl increment (2^64 / φ, odd): successive states never repeat within 2^64 steps.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Group {
    /// An empty group.
    pub(crate) fn new(pid: AgentPid, strategy: LoadBalance) -> Self {
        let (hi, lo) = pid.as_uuid().as_u64_pair();
        Group {
            pid,
            strategy,
            members: RwLock::new(Vec::new()),
            cursor: AtomicUsize::new(0),
            rng: AtomicU64::new(hi ^ lo.rotate_left(32)),
        }
    }

    /// The group's address.
    pub(crate) fn pid(&self) -> &AgentPid {
        &self.pid
    }

    /// The balancing strategy.
    pub(crate) fn strategy(&self) -> LoadBalance {
        self.strategy
    }

    /// Adds `member`.
    ///
    /// # Errors
    ///
    /// `DuplicateAgent(member pid)` if an agent with that pid is already a member.
    pub(crate) fn join(&self, member: Member) -> MessagingResult<()> {
        let mut members = write(&self.members);
        if members.iter().any(|m| m.pid() == member.pid()) {
            return Err(MessagingError::DuplicateAgent(member.pid().clone()));
        }
        members.push(member);
        Ok(())
    }

    /// Removes the member with pid `member`.
    ///
    /// # Errors
    ///
    /// `AgentNotFound(member)` if it is not a member.
    pub(crate) fn leave(&self, member: &AgentPid) -> MessagingResult<()> {
        let mut members = write(&self.members);
        match members.iter().position(|m| m.pid() == member) {
            Some(index) => {
                members.remove(index);
                Ok(())
            }
            None => Err(MessagingError::AgentNotFound(member.clone())),
        }
    }

    /// Whether `member` is a member.
    #[cfg(test)]
    pub(crate) fn contains(&self, member: &AgentPid) -> bool {
        read(&self.members).iter().any(|m| m.pid() == member)
    }

    /// The members' pids, in join order.
    pub(crate) fn members(&self) -> Vec<AgentPid> {
        read(&self.members)
            .iter()
            .map(|m| m.pid().clone())
            .collect()
    }

    /// The number of members.
    pub(crate) fn len(&self) -> usize {
        read(&self.members).len()
    }

    /// Picks a member by the strategy and runs `f` on it under the read lock.
    ///
    /// Members with a closed mailbox are skipped while an open one exists. `f` must not
    /// call `join` or `leave` on this group (it would deadlock).
    ///
    /// # Errors
    ///
    /// `EmptyGroup(group pid)` when the group has no members.
    pub(crate) fn with_member<R>(&self, f: impl FnOnce(&Member) -> R) -> MessagingResult<R> {
        let members = read(&self.members);
        let n = members.len();
        if n == 0 {
            return Err(MessagingError::EmptyGroup(self.pid.clone()));
        }
        let index = match self.strategy {
            // A broadcast is fanned out before a member is picked; one pick is a
            // round-robin one.
            LoadBalance::RoundRobin | LoadBalance::Broadcast => {
                skip_closed(&members, self.next_cursor(n))
            }
            LoadBalance::Random => skip_closed(&members, self.next_random(n)),
            LoadBalance::LeastLoaded => least_loaded(&members, self.next_cursor(n)),
        };
        Ok(f(&members[index]))
    }

    /// The round-robin position for `n` members.
    fn next_cursor(&self, n: usize) -> usize {
        self.cursor.fetch_add(1, Relaxed) % n
    }

    /// A uniform index below `n`: splitmix64 over a Weyl sequence (wait-free; every
    /// caller gets its own state, unlike a load-step-store xorshift).
    fn next_random(&self, n: usize) -> usize {
        let mut z = self.rng.fetch_add(GOLDEN, Relaxed).wrapping_add(GOLDEN);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Lemire's multiply-shift: unbiased enough for n ≪ 2^64, no division.
        ((u128::from(z) * n as u128) >> 64) as usize
    }
}

/// Whether `member` can take a message now: open, not full, and its circuit breaker
/// closed (a remote member: as far as this node can tell). A member that cannot is
/// passed over while another can.
fn available(member: &Member) -> bool {
    match member {
        Member::Local(sender) => sender.shared().accepts_now(),
        Member::Remote(_) => true,
    }
}

/// `start`, or the first available member after it (wrapping), or `start` if none is.
fn skip_closed(members: &[Member], start: usize) -> usize {
    let n = members.len();
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| available(&members[i]))
        .unwrap_or(start)
}

/// The available member with the shortest queue, scanning from `start` (first wins
/// ties); `start` if none is available.
fn least_loaded(members: &[Member], start: usize) -> usize {
    let n = members.len();
    let mut best: Option<(usize, usize)> = None; // (queue size, index)
    for k in 0..n {
        let i = (start + k) % n;
        let member = &members[i];
        if !available(member) {
            continue;
        }
        let load = match member {
            Member::Local(sender) => sender.queue_size(),
            // Unknown: after every local member that can take it.
            Member::Remote(_) => usize::MAX,
        };
        if best.is_none_or(|(least, _)| load < least) {
            best = Some((load, i));
            if load == 0 {
                break; // nothing beats an empty mailbox
            }
        }
    }
    best.map_or(start, |(_, i)| i)
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("pid", &self.pid)
            .field("strategy", &self.strategy)
            .field("members", &self.len())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mailbox::{AgentMailbox, MailboxConfig};
    use crate::message::{AgentMessage, MessagePriority};

    fn mailboxes(n: usize) -> Vec<AgentMailbox> {
        (0..n)
            .map(|_| AgentMailbox::new(AgentPid::new(), MailboxConfig::default()))
            .collect()
    }

    fn local(member: &Member) -> &MailboxSender {
        match member {
            Member::Local(sender) => sender,
            Member::Remote(pid) => panic!("{pid} is remote"),
        }
    }

    fn group_of(strategy: LoadBalance, boxes: &[AgentMailbox]) -> Group {
        let group = Group::new(AgentPid::new(), strategy);
        for mailbox in boxes {
            group.join(Member::Local(mailbox.sender())).unwrap();
        }
        group
    }

    /// Sends `picks` casts through the group; returns how many each mailbox got.
    fn spread(group: &Group, boxes: &[AgentMailbox], picks: usize) -> Vec<usize> {
        for _ in 0..picks {
            group
                .with_member(|m| local(m).send(AgentMessage::cast(AgentPid::nil(), ())))
                .unwrap()
                .unwrap();
        }
        boxes.iter().map(AgentMailbox::queue_size).collect()
    }

    #[test]
    fn join_and_leave() {
        let boxes = mailboxes(2);
        let group = Group::new(AgentPid::new(), LoadBalance::LeastLoaded);
        assert_eq!(group.strategy(), LoadBalance::LeastLoaded);
        assert_eq!(group.len(), 0);
        match group.with_member(|_| ()) {
            Err(MessagingError::EmptyGroup(pid)) => assert_eq!(&pid, group.pid()),
            other => panic!("{other:?}"),
        }
        group.join(Member::Local(boxes[0].sender())).unwrap();
        group.join(Member::Local(boxes[1].sender())).unwrap();
        match group.join(Member::Local(boxes[0].sender())) {
            Err(MessagingError::DuplicateAgent(pid)) => assert_eq!(&pid, boxes[0].agent_id()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            group.members(),
            vec![boxes[0].agent_id().clone(), boxes[1].agent_id().clone()]
        );
        assert!(group.contains(boxes[1].agent_id()));
        group.leave(boxes[0].agent_id()).unwrap();
        match group.leave(boxes[0].agent_id()) {
            Err(MessagingError::AgentNotFound(pid)) => assert_eq!(&pid, boxes[0].agent_id()),
            other => panic!("{other:?}"),
        }
        assert_eq!(group.len(), 1);
        assert!(!group.contains(boxes[0].agent_id()));
        group.leave(boxes[1].agent_id()).unwrap();
        assert!(matches!(
            group.with_member(|_| ()),
            Err(MessagingError::EmptyGroup(_))
        ));
    }

    #[test]
    fn round_robin_is_even() {
        let boxes = mailboxes(3);
        let group = group_of(LoadBalance::RoundRobin, &boxes);
        assert_eq!(spread(&group, &boxes, 30), vec![10, 10, 10]);
        let order: Vec<AgentPid> = (0..6)
            .map(|_| group.with_member(|m| m.pid().clone()).unwrap())
            .collect();
        assert_eq!(order[..3], order[3..], "a fixed cycle");
        assert_eq!(
            order.iter().collect::<std::collections::HashSet<_>>().len(),
            3
        );
    }

    #[test]
    fn round_robin_across_threads() {
        let boxes = mailboxes(3);
        let group = group_of(LoadBalance::RoundRobin, &boxes);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..300 {
                        group
                            .with_member(|m| local(m).send(AgentMessage::cast(AgentPid::nil(), ())))
                            .unwrap()
                            .unwrap();
                    }
                });
            }
        });
        let got: Vec<usize> = boxes.iter().map(AgentMailbox::queue_size).collect();
        assert_eq!(got, vec![300, 300, 300]);
    }

    #[test]
    fn least_loaded_picks_shortest() {
        let boxes = mailboxes(3);
        for _ in 0..5 {
            boxes[0]
                .send(AgentMessage::cast(AgentPid::nil(), ()))
                .unwrap();
        }
        for _ in 0..2 {
            boxes[2]
                .send(AgentMessage::cast(AgentPid::nil(), ()))
                .unwrap();
        }
        let idle = group_of(LoadBalance::LeastLoaded, &mailboxes(3));
        let ties: Vec<AgentPid> = (0..6)
            .map(|_| idle.with_member(|m| m.pid().clone()).unwrap())
            .collect();
        assert_eq!(ties[..3], ties[3..], "equal loads rotate");
        assert_eq!(
            ties.iter().collect::<std::collections::HashSet<_>>().len(),
            3
        );
        let group = group_of(LoadBalance::LeastLoaded, &boxes);
        // Loads 5, 0, 2: the next picks fill the shortest first, ending level.
        assert_eq!(spread(&group, &boxes, 8), vec![5, 5, 5]);
        // Equal loads spread like round robin.
        assert_eq!(spread(&group, &boxes, 30), vec![15, 15, 15]);
        for _ in 0..3 {
            boxes[1].try_receive().unwrap().unwrap();
        }
        let picked = group.with_member(|m| m.pid().clone()).unwrap();
        assert_eq!(&picked, boxes[1].agent_id());
    }

    #[test]
    fn random_spreads() {
        let boxes = mailboxes(3);
        let group = group_of(LoadBalance::Random, &boxes);
        let got = spread(&group, &boxes, 3000);
        assert_eq!(got.iter().sum::<usize>(), 3000);
        // Expected 1000 each, σ ≈ 26: ±200 is ~8σ.
        assert!(got.iter().all(|&n| (800..=1200).contains(&n)), "{got:?}");
        let one = group_of(LoadBalance::Random, &boxes[..1]);
        for _ in 0..10 {
            assert_eq!(
                &one.with_member(|m| m.pid().clone()).unwrap(),
                boxes[0].agent_id()
            );
        }
    }

    #[test]
    fn skips_closed_members() {
        for strategy in [
            LoadBalance::RoundRobin,
            LoadBalance::LeastLoaded,
            LoadBalance::Random,
        ] {
            let boxes = mailboxes(3);
            let group = group_of(strategy, &boxes);
            boxes[0].close();
            boxes[2].close();
            for _ in 0..20 {
                let picked = group.with_member(|m| m.pid().clone()).unwrap();
                assert_eq!(&picked, boxes[1].agent_id(), "{strategy:?}");
            }
            boxes[1].close();
            // All closed: still a pick, whose send fails.
            let sent = group
                .with_member(|m| {
                    local(m).try_send(
                        AgentMessage::cast(AgentPid::nil(), ()),
                        MessagePriority::Normal,
                    )
                })
                .unwrap();
            assert!(
                matches!(sent, Err(crate::TrySendError::Closed(_))),
                "{strategy:?}"
            );
        }
    }
}
