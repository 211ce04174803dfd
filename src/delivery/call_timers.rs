//! Async calls' timeouts: wheels in shards, so that callers on different threads do
//! not serialise on one lock (issue 12, item 4). Each call arms one timer and, when
//! its reply comes first, disarms it: two locks of its own shard, none shared with the
//! tracked messages' wheel.
//!
//! # Invariants
//!
//! - A call's timer lives in the shard its key picks, for its whole life; its
//!   [`CallTimerKey`] names the shard and the wheel entry.
//! - Each shard remembers the earliest deadline the driver knows of for it
//!   (`published`, set by every firing pass under the shard's lock). An arm that
//!   lowers it tells the timer service ([`TimerService::scheduled`]); an arm that does
//!   not is covered by a wake-up the driver has planned already. Calls with one
//!   timeout arrive in deadline order, so most arms touch nothing shared.
//! - An arm racing a firing pass, into a shard the pass has visited, is not planned
//!   over: its insert precedes the store of the pass's plan, and the driver sleeps
//!   until the earliest deadline it reads after that store (`next_deadline`), which
//!   sees the insert; an arm whose insert comes after that read compares with the
//!   stored plan and wakes the driver if earlier (loom: `timer_set_while_a_pass_fires_an_earlier_one`).

use super::shards::{Shards, SHARDS};
use crate::message::reply::ReplyTimeout;
use crate::timer::service::TimerService;
use crate::timer::{TimerKey, TimerWheel};

/// One shard: its wheel, and its earliest deadline as last published to the driver.
struct Shard {
    wheel: TimerWheel<ReplyTimeout>,
    published: u64,
}

/// Names an armed call timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallTimerKey {
    shard: usize,
    key: TimerKey,
}

/// Every pending async call's timeout.
pub(crate) struct CallTimers {
    shards: Shards<Shard>,
}

impl CallTimers {
    pub(crate) fn new() -> Self {
        CallTimers {
            shards: Shards::new(SHARDS, || Shard {
                wheel: TimerWheel::new(),
                published: u64::MAX,
            }),
        }
    }

    /// Arms `timeout` at tick `deadline` in the shard of `key` (any value that differs
    /// between concurrent calls: the call's id). Hands it back if `deadline` has
    /// passed: the caller expires it.
    pub(crate) fn arm(
        &self,
        timeout: ReplyTimeout,
        deadline: u64,
        key: u64,
        timers: &TimerService,
    ) -> Result<CallTimerKey, ReplyTimeout> {
        let shard = self.shards.index(key);
        let mut locked = self.shards.lock(shard);
        let key = locked
            .wheel
            .insert(deadline, timeout)
            .map_err(|elapsed| elapsed.into_inner())?;
        let lowered = deadline < locked.published;
        if lowered {
            locked.published = deadline;
        }
        drop(locked);
        if lowered {
            timers.scheduled(deadline);
        }
        Ok(CallTimerKey { shard, key })
    }

    /// Disarms a call's timeout (its reply came, or the call was dropped).
    pub(crate) fn disarm(&self, key: CallTimerKey) {
        self.shards.lock(key.shard).wheel.cancel(key.key);
    }

    /// Takes every timeout due at `now` into `due`; returns the earliest deadline
    /// left. Part of a firing pass (see the module docs).
    pub(crate) fn take_due(&self, now: u64, due: &mut Vec<ReplyTimeout>) -> Option<u64> {
        let mut fired = Vec::new();
        let mut next: Option<u64> = None;
        self.shards.each(|shard| {
            shard.wheel.advance(now, &mut fired);
            let earliest = shard.wheel.next_deadline();
            shard.published = earliest.unwrap_or(u64::MAX);
            if let Some(at) = earliest {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        });
        due.extend(fired.into_iter().map(|(_, timeout)| timeout));
        next
    }

    /// The earliest deadline of any call.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        self.shards.each(|shard| {
            if let Some(at) = shard.wheel.next_deadline() {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        });
        next
    }
}
