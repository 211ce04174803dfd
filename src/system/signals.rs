//! Signals between agents, Erlang's other half: monitors, links, exit reasons, trapped
//! exits and registered names.
//!
//! All of it is bookkeeping in one place, [`Signals`], under one lock; the agents'
//! mailboxes and the delivery engine do not know it exists. An agent stops through
//! one function, `MessageSystem::stop`, whatever stops it:
//!
//! | who | reason |
//! |---|---|
//! | `unregister_agent` | `"normal"` |
//! | `shutdown` | `"shutdown"` (monitors only: every agent stops at once) |
//! | `exit(&pid, reason)` | `reason` |
//! | the last receiving `AgentMailbox` dropped while its thread panics | `"panicked: <message>"` |
//! | a linked agent stopping with a reason other than `"normal"` | that reason |
//!
//! Stopping takes the agent out of the table, its monitors, its names, its links and
//! its trap flag out of [`Signals`], all under the signals lock; then (lock released)
//! it closes the mailbox and sends each notice: one `AgentStopped` info per monitor,
//! at `High` priority, through the delivery engine. Linked agents are stopped in the
//! same call, from a work list with a visited set, so cycles of links terminate.
//!
//! # Invariants
//!
//! - Lock order: the signals lock, then the table's. The table entry of an agent is
//!   removed under the signals lock, and `monitor` checks the table under it too: a
//!   monitor set up while its target stops either sees the target gone (and sends
//!   `noproc` at once) or is taken by the stop. Exactly one notice per monitor either
//!   way (loom model `monitor_vs_stop`).
//! - A monitor is removed when it fires, when it is demonitored, and when its
//!   watcher stops; a name and a link when either side stops.
//! - Nothing is sent, no mailbox is closed, and no user code runs under the lock.
//!
//! # Crashes
//!
//! `std::thread::panicking()` tells that a thread unwinds, not why. The system
//! installs, once per process, a panic hook that records the panic's message in a
//! thread-local and then calls the hook that was installed before it (so the usual
//! "thread panicked at" report still prints, and a hook set earlier by the
//! application keeps working). The mailbox layer calls back into the system through
//! `Settings::on_crash` when the last receiving handle of a registered agent is
//! dropped while panicking; the system reads the recorded message and stops the agent
//! with `"panicked: <message>"`. A hook installed *after* the system replaces ours:
//! the reason then reads `"panicked: <unknown>"`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::time::Duration;

use ahash::AHasher;

use super::MessageSystem;
use crate::dead_letter::DeadLetterReason;
use crate::delivery::DeliveryGuarantee;
use crate::error::{MessagingError, MessagingResult};
use crate::mailbox::shared::Shared;
use crate::message::{
    AgentMessage, AgentPid, MessageEnvelope, MessagePriority, Payload, SystemInfo,
};
use crate::sync::{lock, Mutex};

type Map<K, V> = HashMap<K, V, BuildHasherDefault<AHasher>>;
type Set<K> = HashSet<K, BuildHasherDefault<AHasher>>;

/// The longest name `register_name` takes, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// The reason of an agent stopped by `unregister_agent`: not propagated to links.
pub(crate) const NORMAL: &str = "normal";
/// The reason every agent stops with at `shutdown`.
pub(crate) const SHUTDOWN: &str = "shutdown";
/// The reason a monitor of an agent that is not registered fires with, at once.
pub(crate) const NOPROC: &str = "noproc";
/// How the reason of a crashed agent begins.
pub(crate) const PANICKED: &str = "panicked: ";

/// A monitor set up by [`MessageSystem::monitor`]; give it to
/// [`MessageSystem::demonitor`] to remove it.
///
/// Opaque; refs are unique per system, and a ref of another system names nothing
/// here (its `demonitor` returns `false`, short of a 1-in-2^64 coincidence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MonitorRef(u64);

/// One monitor.
struct Monitor {
    watcher: AgentPid,
    target: AgentPid,
}

/// The signal bookkeeping of one system (see the module doc).
pub(crate) struct Signals {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The next monitor ref (starts at a random number, so that refs of two systems
    /// do not coincide).
    next_ref: u64,
    monitors: Map<u64, Monitor>,
    /// Monitor refs by target (agent or group).
    by_target: Map<AgentPid, Vec<u64>>,
    /// Monitor refs by watcher (removed when the watcher stops). A set: a watcher
    /// may hold many monitors, and each fires (leaves this index) on its own.
    by_watcher: Map<AgentPid, Set<u64>>,
    /// Links, both directions.
    links: Map<AgentPid, Vec<AgentPid>>,
    /// Agents that trap exits.
    trapping: Set<AgentPid>,
    /// Registered names.
    names: Map<String, AgentPid>,
    /// Names by holder (released when the holder stops).
    names_of: Map<AgentPid, Vec<String>>,
}

/// A notice to send once the lock is released.
pub(crate) struct Notice {
    to: AgentPid,
    info: SystemInfo,
}

impl Signals {
    pub(crate) fn new() -> Self {
        let seed = AgentPid::new().as_uuid().as_u64_pair().0;
        Signals {
            state: Mutex::new(State {
                next_ref: seed,
                ..State::default()
            }),
        }
    }
}

impl State {
    fn new_ref(&mut self) -> u64 {
        let r = self.next_ref;
        self.next_ref = r.wrapping_add(1);
        r
    }

    /// Removes monitor `r` from every index; returns it.
    fn remove_monitor(&mut self, r: u64) -> Option<Monitor> {
        let monitor = self.monitors.remove(&r)?;
        remove_from(&mut self.by_target, &monitor.target, &r);
        self.unindex_watcher(&monitor.watcher, r);
        Some(monitor)
    }

    /// Forgets `r` as a monitor held by `watcher`.
    fn unindex_watcher(&mut self, watcher: &AgentPid, r: u64) {
        if let Some(refs) = self.by_watcher.get_mut(watcher) {
            refs.remove(&r);
            if refs.is_empty() {
                self.by_watcher.remove(watcher);
            }
        }
    }

    /// Takes every monitor of `target` (they fire).
    fn take_monitors_of(&mut self, target: &AgentPid) -> Vec<Monitor> {
        let refs = self.by_target.remove(target).unwrap_or_default();
        refs.into_iter()
            .filter_map(|r| {
                let monitor = self.monitors.remove(&r)?;
                self.unindex_watcher(&monitor.watcher, r);
                Some(monitor)
            })
            .collect()
    }

    /// Drops every monitor `watcher` holds (it stopped).
    fn drop_monitors_by(&mut self, watcher: &AgentPid) {
        for r in self.by_watcher.remove(watcher).unwrap_or_default() {
            if let Some(monitor) = self.monitors.remove(&r) {
                remove_from(&mut self.by_target, &monitor.target, &r);
            }
        }
    }

    /// The watchers of `target`, for a notice that does not end the monitors.
    fn watchers_of(&self, target: &AgentPid) -> Vec<AgentPid> {
        self.by_target.get(target).map_or_else(Vec::new, |refs| {
            refs.iter()
                .filter_map(|r| self.monitors.get(r).map(|m| m.watcher.clone()))
                .collect()
        })
    }

    /// Releases every name of `pid`.
    fn release_names(&mut self, pid: &AgentPid) {
        for name in self.names_of.remove(pid).unwrap_or_default() {
            self.names.remove(&name);
        }
    }

    /// Removes the link `a — b` (both directions).
    fn unlink(&mut self, a: &AgentPid, b: &AgentPid) {
        remove_from(&mut self.links, a, b);
        remove_from(&mut self.links, b, a);
    }
}

/// Removes `value` from the list of `key`, dropping the list once empty.
fn remove_from<K: std::hash::Hash + Eq + Clone, V: PartialEq>(
    map: &mut Map<K, Vec<V>>,
    key: &K,
    value: &V,
) {
    if let Some(list) = map.get_mut(key) {
        if let Some(at) = list.iter().position(|v| v == value) {
            list.swap_remove(at);
        }
        if list.is_empty() {
            map.remove(key);
        }
    }
}

fn stopped(agent_id: &AgentPid, reason: &str) -> SystemInfo {
    stopped_at(agent_id, reason, chrono::Utc::now())
}

fn stopped_at(
    agent_id: &AgentPid,
    reason: &str,
    timestamp: chrono::DateTime<chrono::Utc>,
) -> SystemInfo {
    SystemInfo::AgentStopped {
        agent_id: agent_id.clone(),
        timestamp,
        reason: reason.to_string(),
    }
}

/// Checks a name for `register_name`.
fn check_name(name: &str) -> MessagingResult<()> {
    if name.is_empty() {
        return Err(MessagingError::InvalidMessage(
            "an agent's name cannot be empty".into(),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(MessagingError::InvalidMessage(format!(
            "an agent's name is at most {MAX_NAME_LEN} bytes (this one has {})",
            name.len()
        )));
    }
    Ok(())
}

// ===== the panic message =====

thread_local! {
    /// The message of the panic this thread is unwinding from, recorded by our hook.
    static PANIC_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) the panic hook that records each panic's message for
/// this thread, chained to the hook installed before it.
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // `take_hook` must not run on a panicking thread; a system built while unwinding
    // simply reports `<unknown>` messages.
    if std::thread::panicking() {
        return;
    }
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "<non-string panic payload>".to_string());
            // `try_with`: a panic during thread teardown has no thread-locals left.
            let _ = PANIC_MESSAGE.try_with(|slot| {
                if let Ok(mut slot) = slot.try_borrow_mut() {
                    *slot = Some(message);
                }
            });
            previous(info);
        }));
    });
}

/// The message of the panic this thread unwinds from, if our hook recorded it.
fn panic_message() -> String {
    PANIC_MESSAGE
        .try_with(|slot| slot.try_borrow().ok().and_then(|m| m.clone()))
        .ok()
        .flatten()
        .unwrap_or_else(|| "<unknown>".to_string())
}

// ===== MessageSystem: monitors, links, exits, names =====

impl MessageSystem {
    fn signals(&self) -> &Signals {
        &self.inner.signals
    }

    /// Whether `pid` is a registered agent or group.
    fn is_registered(&self, pid: &AgentPid) -> bool {
        self.inner.mailboxes.table().lookup(pid).is_some()
    }

    /// Sends each notice as an `Info` at `High` priority, through the delivery engine
    /// (a full mailbox is retried as the guarantee says; a watcher gone meanwhile
    /// dead-letters it).
    pub(super) fn send_notices(&self, notices: Vec<Notice>) {
        for notice in notices {
            let message = AgentMessage::info(notice.info);
            let _ = self
                .inner
                .engine
                .dispatch_message(&notice.to, message, MessagePriority::High);
        }
    }

    /// Monitors `target` for `watcher` (Erlang's `monitor(process, Target)`): when
    /// `target` stops, `watcher` receives exactly one
    /// `AgentMessage::Info { info: SystemInfo::AgentStopped { agent_id: target,
    /// timestamp, reason }, .. }` at `High` priority, with the reason it stopped for
    /// (`"normal"`, `"shutdown"`, `"panicked: …"`, or `exit`'s). A `target` that is not
    /// registered answers at once with reason `"noproc"`. A group can be monitored
    /// too: its monitors also receive a `SystemInfo::Custom` of type
    /// `"group_member_joined"` or `"group_member_left"` (data `{"group", "member"}`)
    /// when its membership changes, and `AgentStopped` (`"normal"`) when it is
    /// deleted. Each call sets up a monitor of its own; a monitor ends when it fires,
    /// when it is demonitored, or when its watcher stops.
    ///
    /// # Errors
    ///
    /// `AgentNotFound(watcher)` if the watcher is not a registered agent;
    /// `InvalidMessage` if `watcher == target`; the system's error after shutdown.
    ///
    /// # Examples
    ///
    /// ```
    /// use terraphim_agent_messaging::{AgentMessage, AgentPid, MessageSystem, RouterConfig, SystemInfo};
    ///
    /// let system = MessageSystem::new(RouterConfig::default());
    /// let (watcher, worker) = (AgentPid::new(), AgentPid::new());
    /// system.register_agent(watcher.clone())?;
    /// system.register_agent(worker.clone())?;
    /// system.monitor(&watcher, &worker)?;
    /// system.exit(&worker, "out of coffee")?;
    /// match system.get_mailbox(&watcher).unwrap().receive()? {
    ///     AgentMessage::Info { info: SystemInfo::AgentStopped { agent_id, reason, .. }, .. } => {
    ///         assert_eq!(agent_id, worker);
    ///         assert_eq!(reason, "out of coffee");
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), terraphim_agent_messaging::MessagingError>(())
    /// ```
    pub fn monitor(&self, watcher: &AgentPid, target: &AgentPid) -> MessagingResult<MonitorRef> {
        self.check()?;
        if watcher == target {
            return Err(MessagingError::InvalidMessage(format!(
                "agent {watcher} cannot monitor itself"
            )));
        }
        let table = self.inner.mailboxes.table();
        let mut state = lock(&self.signals().state);
        if table.get(watcher).is_none() {
            return Err(MessagingError::AgentNotFound(watcher.clone()));
        }
        let r = state.new_ref();
        // Checked under the signals lock: a stop removes the target from the table
        // under it too (see the module's invariants).
        if !self.is_registered(target) {
            drop(state);
            let notice = Notice {
                to: watcher.clone(),
                info: stopped(target, NOPROC),
            };
            self.send_notices(vec![notice]);
            return Ok(MonitorRef(r));
        }
        state.monitors.insert(
            r,
            Monitor {
                watcher: watcher.clone(),
                target: target.clone(),
            },
        );
        state.by_target.entry(target.clone()).or_default().push(r);
        state
            .by_watcher
            .entry(watcher.clone())
            .or_default()
            .insert(r);
        Ok(MonitorRef(r))
    }

    /// Removes a monitor. `true` if it was set up and had not fired yet (its notice
    /// will not come); `false` if it fired already (its notice may be in the
    /// watcher's mailbox), was removed before, or is not this system's.
    pub fn demonitor(&self, monitor: MonitorRef) -> bool {
        lock(&self.signals().state)
            .remove_monitor(monitor.0)
            .is_some()
    }

    /// Links `a` and `b` (Erlang's `link`): when either stops with a reason other
    /// than `"normal"`, the other stops with the same reason, unless it traps exits
    /// ([`trap_exits`](Self::trap_exits)): then it receives the `AgentStopped` info
    /// instead (for a `"normal"` stop too, as in Erlang). Linking twice is one link.
    ///
    /// # Errors
    ///
    /// `AgentNotFound` for a pid that is not a registered agent; `InvalidMessage` if
    /// `a == b`.
    pub fn link(&self, a: &AgentPid, b: &AgentPid) -> MessagingResult<()> {
        self.check()?;
        if a == b {
            return Err(MessagingError::InvalidMessage(format!(
                "agent {a} cannot link to itself"
            )));
        }
        let table = self.inner.mailboxes.table();
        let mut state = lock(&self.signals().state);
        for pid in [a, b] {
            if table.get(pid).is_none() {
                return Err(MessagingError::AgentNotFound(pid.clone()));
            }
        }
        let links = state.links.entry(a.clone()).or_default();
        if !links.contains(b) {
            links.push(b.clone());
            state.links.entry(b.clone()).or_default().push(a.clone());
        }
        Ok(())
    }

    /// Removes the link between `a` and `b`, if any (never an error for pids that are
    /// not linked or not registered).
    pub fn unlink(&self, a: &AgentPid, b: &AgentPid) -> MessagingResult<()> {
        lock(&self.signals().state).unlink(a, b);
        Ok(())
    }

    /// Whether `pid` traps exits: a linked agent's stop then arrives as an
    /// `AgentStopped` info instead of stopping `pid`.
    ///
    /// # Errors
    ///
    /// `AgentNotFound` if `pid` is not a registered agent.
    pub fn trap_exits(&self, pid: &AgentPid, trap: bool) -> MessagingResult<()> {
        self.check()?;
        let table = self.inner.mailboxes.table();
        let mut state = lock(&self.signals().state);
        if table.get(pid).is_none() {
            return Err(MessagingError::AgentNotFound(pid.clone()));
        }
        if trap {
            state.trapping.insert(pid.clone());
        } else {
            state.trapping.remove(pid);
        }
        Ok(())
    }

    /// Stops `pid` with `reason`, as if it had exited with it (Erlang's
    /// `exit(Pid, kill)` with a reason of your choosing): it is unregistered, its
    /// mailbox closes (a receiver drains what is queued, then gets `ChannelClosed`;
    /// with none left, queued messages are dead-lettered as `AgentStopped(reason)`),
    /// its monitors fire with `reason`, its names are released, and its links stop
    /// too unless `reason` is `"normal"` (trappers get the info instead). It stops
    /// whether or not it traps exits.
    ///
    /// # Errors
    ///
    /// `AgentNotFound` if `pid` is not a registered agent.
    pub fn exit(&self, pid: &AgentPid, reason: &str) -> MessagingResult<()> {
        self.check()?;
        self.stop(pid, reason)
    }

    /// Stops `pid` with `reason` and everything linked to it that does not trap exits
    /// (see the module doc). `AgentNotFound` if `pid` is not a registered agent.
    pub(super) fn stop(&self, pid: &AgentPid, reason: &str) -> MessagingResult<()> {
        if let Some(router) = self.custom_router() {
            router.unregister_agent(pid)?;
        }
        let table = self.inner.mailboxes.table();
        let mut work = vec![(pid.clone(), reason.to_string())];
        let mut visited: Set<AgentPid> = Set::default();
        let mut first = true;
        while let Some((pid, reason)) = work.pop() {
            if !visited.insert(pid.clone()) {
                continue;
            }
            if !first {
                if let Some(router) = self.custom_router() {
                    let _ = router.unregister_agent(&pid);
                }
            }
            let mut notices = Vec::new();
            let mut state = lock(&self.signals().state);
            let Some(mailbox) = table.remove_agent(&pid) else {
                drop(state);
                if first {
                    return Err(MessagingError::AgentNotFound(pid));
                }
                continue;
            };
            first = false;
            let now = chrono::Utc::now();
            for monitor in state.take_monitors_of(&pid) {
                notices.push(Notice {
                    to: monitor.watcher,
                    info: stopped_at(&pid, &reason, now),
                });
            }
            state.drop_monitors_by(&pid);
            let name = state
                .names_of
                .get(&pid)
                .and_then(|names| names.first().cloned());
            state.release_names(&pid);
            state.trapping.remove(&pid);
            for other in state.links.remove(&pid).unwrap_or_default() {
                remove_from(&mut state.links, &other, &pid);
                if state.trapping.contains(&other) {
                    notices.push(Notice {
                        to: other,
                        info: stopped_at(&pid, &reason, now),
                    });
                } else if reason != NORMAL {
                    work.push((other, reason.clone()));
                }
            }
            drop(state);
            // Out of the lock: close the mailbox, leave the groups, tell the watchers.
            if reason == NORMAL || reason == SHUTDOWN {
                mailbox.close();
            } else if let Some(name) = name.filter(|_| {
                reason.starts_with(PANICKED)
                    && self.inner.engine.guarantee() != DeliveryGuarantee::AtMostOnce
            }) {
                // A crashed named agent: what it left queued goes to its successor.
                mailbox.close_keeping();
                let queued = mailbox.take_queued();
                self.inner.engine.hand_back(&pid, &name, queued);
            } else {
                mailbox.close_with(DeadLetterReason::AgentStopped(reason.clone()));
            }
            self.inner.engine.routes().forget(&pid);
            self.left_groups(&pid);
            self.send_notices(notices);
        }
        Ok(())
    }

    /// `pid` stopped: it leaves every group it was in, and the groups' monitors hear
    /// of it.
    fn left_groups(&self, pid: &AgentPid) {
        for group in self.inner.mailboxes.table().groups() {
            if group.leave(pid).is_ok() {
                self.group_changed(group.pid(), pid, "group_member_left");
            }
        }
    }

    /// Tells the monitors of `group` that `member` joined or left (`kind`).
    pub(super) fn group_changed(&self, group: &AgentPid, member: &AgentPid, kind: &str) {
        let watchers = lock(&self.signals().state).watchers_of(group);
        if watchers.is_empty() {
            return;
        }
        let data = serde_json::json!({ "group": group.to_string(), "member": member.to_string() });
        let notices = watchers
            .into_iter()
            .map(|to| Notice {
                to,
                info: SystemInfo::Custom {
                    message_type: kind.to_string(),
                    data: data.clone(),
                    timestamp: chrono::Utc::now(),
                },
            })
            .collect();
        self.send_notices(notices);
    }

    /// Removes `group` from the table under the signals lock; its monitors fire with
    /// `"normal"`. `false` if it was not there.
    pub(super) fn remove_group(&self, group: &AgentPid) -> bool {
        let table = self.inner.mailboxes.table();
        let mut state = lock(&self.signals().state);
        if table.remove(group).is_none() {
            return false;
        }
        let notices: Vec<Notice> = state
            .take_monitors_of(group)
            .into_iter()
            .map(|m| Notice {
                to: m.watcher,
                info: stopped(group, NORMAL),
            })
            .collect();
        state.release_names(group);
        drop(state);
        self.send_notices(notices);
        true
    }

    /// The last receiving handle of `mailbox` was dropped while its thread panicked:
    /// if it is still the registered mailbox of its pid, the agent stops with
    /// `"panicked: <message>"`. Must not panic (it runs during unwinding).
    pub(super) fn crashed(&self, mailbox: &Shared) {
        let registered = self
            .inner
            .mailboxes
            .table()
            .get(&mailbox.pid)
            .is_some_and(|current| std::ptr::eq(&*current, mailbox));
        if !registered || self.is_shut_down() {
            return;
        }
        let reason = format!("{PANICKED}{}", panic_message());
        let _ = self.stop(&mailbox.pid, &reason);
    }

    /// At shutdown: every monitor fires with `"shutdown"`, straight into the
    /// watchers' mailboxes (the engine is stopping; a refused notice is
    /// dead-lettered), before the mailboxes close; the rest of the bookkeeping goes.
    pub(super) fn shutdown_signals(&self) {
        let state = std::mem::take(&mut *lock(&self.signals().state));
        for monitor in state.monitors.into_values() {
            if let Some(sender) = self.sender(&monitor.watcher) {
                let notice = AgentMessage::info(stopped(&monitor.target, SHUTDOWN));
                let _ = sender.send_with_priority(notice, MessagePriority::High);
            }
        }
    }

    // ===== names =====

    /// Registers `name` for `pid` (Erlang's `register/2`), so that
    /// [`send_named`](Self::send_named) and [`whereis`](Self::whereis) find it. The
    /// name is released when `pid` stops (or by
    /// [`unregister_name`](Self::unregister_name)), so a restarted agent can take it
    /// back. An agent may hold several names.
    ///
    /// # Errors
    ///
    /// `NameTaken` if the name is held (by any agent, `pid` included);
    /// `InvalidMessage` for an empty name or one over 255 bytes; `AgentNotFound` if
    /// `pid` is not a registered agent or group.
    pub fn register_name(&self, name: &str, pid: &AgentPid) -> MessagingResult<()> {
        self.check()?;
        check_name(name)?;
        let mut state = lock(&self.signals().state);
        if !self.is_registered(pid) {
            return Err(MessagingError::AgentNotFound(pid.clone()));
        }
        if state.names.contains_key(name) {
            return Err(MessagingError::NameTaken(name.to_string()));
        }
        state.names.insert(name.to_string(), pid.clone());
        state
            .names_of
            .entry(pid.clone())
            .or_default()
            .push(name.to_string());
        Ok(())
    }

    /// Releases `name`; `true` if it was registered.
    pub fn unregister_name(&self, name: &str) -> bool {
        let mut state = lock(&self.signals().state);
        let Some(pid) = state.names.remove(name) else {
            return false;
        };
        remove_from(&mut state.names_of, &pid, &name.to_string());
        true
    }

    /// The agent registered as `name`, if any.
    pub fn whereis(&self, name: &str) -> Option<AgentPid> {
        lock(&self.signals().state).names.get(name).cloned()
    }

    /// The pid `name` resolves to now, or `UnknownName`.
    fn resolve(&self, name: &str) -> MessagingResult<AgentPid> {
        self.whereis(name)
            .ok_or_else(|| MessagingError::UnknownName(name.to_string()))
    }

    /// Sends `message` to the agent registered as `name` at `Normal` priority. The
    /// name is resolved now: a message already sent stays with the pid it resolved
    /// to.
    ///
    /// # Errors
    ///
    /// `UnknownName` if no agent holds the name; otherwise as
    /// [`send`](Self::send).
    pub fn send_named(&self, name: &str, message: AgentMessage) -> MessagingResult<()> {
        self.check()?;
        let pid = self.resolve(name)?;
        self.send(&pid, message)
    }

    /// Routes `envelope` to the agent registered as `name` (its `to` is set to the
    /// pid the name resolves to now).
    pub fn send_message_named(
        &self,
        name: &str,
        mut envelope: MessageEnvelope,
    ) -> MessagingResult<()> {
        self.check()?;
        envelope.to = self.resolve(name)?;
        self.send_message(envelope)
    }

    /// [`call`](Self::call) to the agent registered as `name` (resolved now).
    pub fn call_named<T: std::any::Any + Send>(
        &self,
        from: AgentPid,
        name: &str,
        payload: T,
        timeout: Duration,
    ) -> MessagingResult<Payload> {
        self.check()?;
        let pid = self.resolve(name)?;
        self.call(from, &pid, payload, timeout)
    }
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("Signals")
            .field("monitors", &state.monitors.len())
            .field("names", &state.names.len())
            .finish_non_exhaustive()
    }
}
