//! The tokio flavour on current-thread and multi-thread runtimes: call round trips,
//! receive timeouts, cancel safety of receive and call, shutdown waking receivers,
//! retries and call timeouts on the tokio timer task, custom async routers, and the
//! twins of the mailbox, manager and delivery manager.
#![cfg(feature = "tokio")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use terraphim_agent_messaging::tokio::{
    async_trait, AgentMailbox, AgentMessage, AgentPid, DeadLetterReason, DeliveryConfig,
    DeliveryGuarantee, DeliveryOptions, LoadBalance, MailboxConfig, MailboxManager, MailboxSender,
    MessageEnvelope, MessageId, MessagePriority, MessageRouter, MessageSystem, MessagingError,
    MessagingResult, RouterConfig, RouterStats,
};

mod common;
use common::tokio::{clocked_builder, manual_system, registered, within};

/// Generates `$name::current_thread` and `$name::multi_thread` from one async body.
macro_rules! both_runtimes {
    ($(async fn $name:ident() $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body() $body

            #[tokio::test(flavor = "current_thread")]
            async fn current_thread() {
                within(20, body()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn multi_thread() {
                within(20, body()).await;
            }
        }
    )*};
}

// ===== helpers =====

/// A server task answering `u64` calls with their square until its mailbox closes;
/// returns how many calls it answered.
fn squarer(mailbox: AgentMailbox) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut answered = 0;
        while let Ok(message) = mailbox.receive().await {
            if let AgentMessage::Call {
                payload, reply_to, ..
            } = message
            {
                let n = *payload.downcast::<u64>().unwrap();
                reply_to.send(Box::new(n * n)).unwrap();
                answered += 1;
            }
        }
        answered
    })
}

/// A system whose full mailboxes are retried quickly.
fn retrying_system(cap: usize) -> MessageSystem {
    let mut config = RouterConfig::default();
    config.delivery_config.guarantee = DeliveryGuarantee::AtLeastOnce;
    config.delivery_config.retry_delay = Duration::from_millis(20);
    config.delivery_config.retry_backoff_multiplier = 1.0;
    config.delivery_config.max_retries = 50;
    MessageSystem::builder(config)
        .mailbox_config(MailboxConfig {
            max_messages: cap,
            ..MailboxConfig::default()
        })
        .build()
        .unwrap()
}

/// An async router over a map, counting what it routes.
#[derive(Default)]
struct CountingRouter {
    routes: Mutex<HashMap<AgentPid, MailboxSender>>,
    envelopes: AtomicUsize,
    messages: AtomicUsize,
    unregistered: AtomicUsize,
    shut_down: AtomicUsize,
}

impl CountingRouter {
    fn route_to(&self, to: &AgentPid) -> MessagingResult<MailboxSender> {
        self.routes
            .lock()
            .unwrap()
            .get(to)
            .cloned()
            .ok_or_else(|| MessagingError::AgentNotFound(to.clone()))
    }
}

#[async_trait]
impl MessageRouter for CountingRouter {
    async fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        let sender = self.route_to(&envelope.to)?;
        self.envelopes.fetch_add(1, SeqCst);
        // Await something real, so the router is genuinely async.
        tokio::task::yield_now().await;
        let priority = envelope.delivery_options.priority;
        sender
            .send_with_priority(envelope.into_message(), priority)
            .await
    }

    async fn register_agent(
        &self,
        agent_id: AgentPid,
        sender: MailboxSender,
    ) -> MessagingResult<()> {
        assert_eq!(sender.agent_id(), &agent_id);
        self.routes.lock().unwrap().insert(agent_id, sender);
        Ok(())
    }

    async fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        self.unregistered.fetch_add(1, SeqCst);
        self.routes
            .lock()
            .unwrap()
            .remove(agent_id)
            .map(drop)
            .ok_or_else(|| MessagingError::AgentNotFound(agent_id.clone()))
    }

    async fn get_stats(&self) -> RouterStats {
        RouterStats {
            messages_routed: (self.envelopes.load(SeqCst) + self.messages.load(SeqCst)) as u64,
            active_routes: self.routes.lock().unwrap().len(),
            ..RouterStats::default()
        }
    }

    async fn shutdown(&self) -> MessagingResult<()> {
        self.shut_down.fetch_add(1, SeqCst);
        self.routes.lock().unwrap().clear();
        Ok(())
    }

    async fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        let sender = self.route_to(to)?;
        self.messages.fetch_add(1, SeqCst);
        sender.send_with_priority(message, priority).await
    }
}

// ===== on both runtimes =====

both_runtimes! {
    async fn call_round_trip() {
        let system = MessageSystem::new(RouterConfig::default());
        assert!(system.has_timer_task());
        let (server, mailbox) = registered(&system).await;
        let worker = squarer(mailbox);
        let client = AgentPid::new();
        for n in 0..200u64 {
            let r: u64 = system
                .call_typed(client.clone(), &server, n, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(r, n * n);
        }
        // Concurrent callers, each with its own reply slot.
        let callers: Vec<_> = (0..8u64)
            .map(|n| {
                let system = system.clone();
                let server = server.clone();
                tokio::spawn(async move {
                    system
                        .call_typed::<u64, _>(AgentPid::new(), &server, n, Duration::from_secs(5))
                        .await
                })
            })
            .collect();
        for (n, caller) in callers.into_iter().enumerate() {
            assert_eq!(caller.await.unwrap().unwrap(), (n * n) as u64);
        }
        system.shutdown().await.unwrap();
        assert_eq!(worker.await.unwrap(), 208);
    }

    async fn receive_timeout() {
        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        let start = Instant::now();
        let r = mailbox.receive_timeout(Duration::from_millis(50)).await;
        assert!(matches!(r, Err(MessagingError::MessageTimeout(ref p)) if p == mailbox.agent_id()));
        assert!(start.elapsed() >= Duration::from_millis(50));
        // Zero takes what is ready; MAX waits (here: for a message already queued).
        mailbox.send(AgentMessage::cast(AgentPid::new(), 1u8)).await.unwrap();
        let m = mailbox.receive_timeout(Duration::ZERO).await.unwrap();
        assert_eq!(m.payload::<u8>(), Some(&1));
        assert!(mailbox.receive_timeout(Duration::ZERO).await.is_err());
        mailbox.send(AgentMessage::cast(AgentPid::new(), 2u8)).await.unwrap();
        let m = mailbox.receive_timeout(Duration::MAX).await.unwrap();
        assert_eq!(m.payload::<u8>(), Some(&2));
        // A message arriving during the wait ends it.
        let sender = mailbox.sender();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            sender.send(AgentMessage::cast(AgentPid::new(), 3u8)).await.unwrap();
        });
        let m = mailbox.receive_timeout(Duration::from_secs(10)).await.unwrap();
        assert_eq!(m.payload::<u8>(), Some(&3));
        late.await.unwrap();
    }

    async fn cancel_receive() {
        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        // A receive dropped mid-wait, by a timeout …
        assert!(tokio::time::timeout(Duration::from_millis(10), mailbox.receive()).await.is_err());
        // … and in a task that is aborted while waiting.
        let waiting = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move { mailbox.receive().await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        // Nothing was lost and the receiver claim was released.
        for n in 0..3u8 {
            mailbox.send(AgentMessage::cast(AgentPid::new(), n)).await.unwrap();
        }
        for n in 0..3u8 {
            let m = mailbox.receive().await.unwrap();
            assert_eq!(m.payload::<u8>(), Some(&n));
        }
        assert_eq!(mailbox.stats().await.total_messages_processed, 3);
    }

    async fn cancel_receive_in_select_loop() {
        // A receive raced against a ticker many times: every message arrives exactly once.
        const N: u32 = 300;
        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        let sender = mailbox.sender();
        let producer = tokio::spawn(async move {
            for n in 0..N {
                sender.send(AgentMessage::cast(AgentPid::new(), n)).await.unwrap();
                if n % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut got = Vec::new();
        let mut cancelled = 0;
        while got.len() < N as usize {
            match tokio::time::timeout(Duration::from_micros(50), mailbox.receive()).await {
                Ok(m) => got.push(*m.unwrap().payload::<u32>().unwrap()),
                Err(_) => cancelled += 1,
            }
        }
        producer.await.unwrap();
        assert_eq!(got, (0..N).collect::<Vec<_>>());
        assert!(mailbox.try_receive().await.unwrap().is_none());
        let _ = cancelled; // how many waits were cut short depends on the scheduler
    }

    async fn one_receiver_at_a_time() {
        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        let other = mailbox.clone();
        let first = tokio::spawn(async move { other.receive().await });
        // Wait until the first receive holds the claim.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match mailbox.try_receive().await {
                Err(MessagingError::ReceiverBusy(_)) => break,
                Ok(None) => {}
                r => panic!("unexpected {r:?}"),
            }
            assert!(Instant::now() < deadline, "the first receive never started");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        mailbox.send(AgentMessage::cast(AgentPid::new(), 9u8)).await.unwrap();
        assert_eq!(first.await.unwrap().unwrap().payload::<u8>(), Some(&9));
    }

    async fn shutdown_wakes_receiver() {
        let system = MessageSystem::new(RouterConfig::default());
        let (pid, mailbox) = registered(&system).await;
        system.send(&pid, AgentMessage::cast(AgentPid::new(), 1u8)).await.unwrap();
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                match mailbox.receive().await {
                    Ok(m) => got.push(*m.payload::<u8>().unwrap()),
                    Err(e) => return (got, e),
                }
            }
        });
        // Let the receiver drain and block.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!receiver.is_finished());
        system.shutdown().await.unwrap();
        let (got, e) = receiver.await.unwrap();
        assert_eq!(got, vec![1]);
        assert!(matches!(e, MessagingError::ChannelClosed(ref p) if p == &pid), "{e:?}");
        assert!(!system.has_timer_task());
        // Later operations fail; shutdown is idempotent.
        assert!(system.register_agent(AgentPid::new()).await.is_err());
        system.shutdown().await.unwrap();
    }

    async fn unregister_wakes_receiver() {
        let system = MessageSystem::new(RouterConfig::default());
        let (pid, mailbox) = registered(&system).await;
        let receiver = tokio::spawn(async move { mailbox.receive().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        system.unregister_agent(&pid).await.unwrap();
        assert!(matches!(receiver.await.unwrap(), Err(MessagingError::ChannelClosed(_))));
        system.shutdown().await.unwrap();
    }

    async fn wait_for_shutdown() {
        let system = MessageSystem::new(RouterConfig::default());
        let (_, mailbox) = registered(&system).await;
        // Not before the close …
        assert!(tokio::time::timeout(Duration::from_millis(30), mailbox.wait_for_shutdown())
            .await
            .is_err());
        let waiter = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move { mailbox.wait_for_shutdown().await })
        };
        // … and soon after it.
        system.shutdown().await.unwrap();
        within(5, waiter).await.unwrap();
        assert!(mailbox.is_closed());
        // A standalone mailbox closed by hand.
        let standalone = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        standalone.close();
        within(5, standalone.wait_for_shutdown()).await;
    }

    async fn retries_on_timer_task() {
        // At-least-once into a full bounded mailbox: accepted, retried on the timer task,
        // delivered once the receiver has drained.
        let system = retrying_system(1);
        assert!(system.has_timer_task());
        let (pid, mailbox) = registered(&system).await;
        const N: u8 = 5;
        for n in 0..N {
            system.send(&pid, AgentMessage::cast(AgentPid::new(), n)).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < N as usize {
            let m = mailbox.receive_timeout(Duration::from_secs(10)).await.unwrap();
            got.push(*m.payload::<u8>().unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, (0..N).collect::<Vec<_>>());
        // The timer task bumps the counters just after its push: wait for rest.
        let deadline = Instant::now() + Duration::from_secs(5);
        let stats = loop {
            let (stats, _) = system.get_stats().await;
            if stats.messages_delivered == u64::from(N) || Instant::now() > deadline {
                break stats;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert!(stats.retry_attempts >= u64::from(N - 1), "{stats:?}");
        // Each message pushed once (the refused pushes are not deliveries).
        assert_eq!(stats.messages_routed, u64::from(N));
        assert_eq!(stats.messages_delivered, u64::from(N));
        assert_eq!(stats.messages_failed, 0);
        assert_eq!(system.dead_letter_count(), 0);
        assert!(mailbox.try_receive().await.unwrap().is_none());
        system.shutdown().await.unwrap();
    }

    async fn ack_redelivery_on_timer_task() {
        let mut config = RouterConfig::default();
        config.delivery_config.acknowledgment_timeout = Duration::from_millis(30);
        config.delivery_config.retry_delay = Duration::from_millis(10);
        let system = MessageSystem::new(config);
        let (pid, mailbox) = registered(&system).await;
        let options = DeliveryOptions { require_ack: true, ..DeliveryOptions::default() };
        let envelope = MessageEnvelope::new(pid.clone(), "job".into(), json!(7), options);
        let id = envelope.id.clone();
        system.send_message(envelope).await.unwrap();
        let first = mailbox.receive().await.unwrap();
        // Not acknowledged: the same id comes again.
        let again = mailbox.receive_timeout(Duration::from_secs(10)).await.unwrap();
        assert_eq!(first.id(), &id);
        assert_eq!(again.id(), &id);
        // The core may not have re-registered the ack yet (see
        // `ack_of_redelivery_is_not_lost`): retry a refused ack for a while.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = system.acknowledge(&id).await {
            assert!(Instant::now() < deadline, "{e:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(matches!(system.acknowledge(&id).await, Err(MessagingError::UnknownMessage(_))));
        system.shutdown().await.unwrap();
    }

    async fn call_timeout_on_wheel() {
        let system = MessageSystem::new(RouterConfig::default());
        let (server, mailbox) = registered(&system).await;
        let start = Instant::now();
        let r = system
            .call(AgentPid::new(), &server, 1u64, Duration::from_millis(50))
            .await;
        assert!(matches!(r, Err(MessagingError::MessageTimeout(ref p)) if p == &server), "{r:?}");
        assert!(start.elapsed() >= Duration::from_millis(50));
        // The late reply is handed back to the replier.
        let AgentMessage::Call { reply_to, .. } = mailbox.try_receive().await.unwrap().unwrap() else {
            panic!("not a call")
        };
        assert!(reply_to.send(Box::new(1u64)).is_err());
        // A zero timeout fails at once without sending.
        assert!(matches!(
            system.call(AgentPid::new(), &server, 1u64, Duration::ZERO).await,
            Err(MessagingError::MessageTimeout(_))
        ));
        assert!(mailbox.is_empty().await);
        // A callee that drops the call.
        let dropper = {
            let mailbox = mailbox.clone();
            tokio::spawn(async move { drop(mailbox.receive().await.unwrap()) })
        };
        let r = system.call(AgentPid::new(), &server, 1u64, Duration::from_secs(10)).await;
        assert!(matches!(r, Err(MessagingError::DeliveryFailed(..))), "{r:?}");
        dropper.await.unwrap();
        system.shutdown().await.unwrap();
    }

    async fn cancel_call() {
        let system = MessageSystem::new(RouterConfig::default());
        let (server, mailbox) = registered(&system).await;
        // The caller gives up before the reply (its own, shorter timeout).
        let call = system.call(AgentPid::new(), &server, 5u64, Duration::from_secs(30));
        assert!(tokio::time::timeout(Duration::from_millis(20), call).await.is_err());
        let AgentMessage::Call { reply_to, .. } = mailbox.receive().await.unwrap() else {
            panic!("not a call")
        };
        let back = reply_to.send(Box::new(25u64)).unwrap_err();
        assert_eq!(*back.downcast::<u64>().unwrap(), 25);
        // The system still works for the next call.
        let worker = squarer(mailbox);
        let r: u64 = system
            .call_typed(AgentPid::new(), &server, 6u64, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r, 36);
        system.shutdown().await.unwrap();
        assert_eq!(worker.await.unwrap(), 1);
    }

    async fn custom_router() {
        let router = Arc::new(CountingRouter::default());
        let system = MessageSystem::with_router(RouterConfig::default(), router.clone()).unwrap();
        // The delivery engine's timers (retries, call timeouts) serve custom routers too.
        assert!(system.has_timer_task());
        let (a, mailbox_a) = registered(&system).await;
        let (b, mailbox_b) = registered(&system).await;
        let mut ids = Vec::new();
        for n in 0..10u32 {
            let to = if n % 2 == 0 { &a } else { &b };
            let envelope =
                MessageEnvelope::new(to.clone(), "n".into(), json!(n), DeliveryOptions::default());
            ids.push(envelope.id.clone());
            system.send_message(envelope).await.unwrap();
        }
        assert_eq!(router.envelopes.load(SeqCst), 10);
        let mut got = Vec::new();
        for mailbox in [&mailbox_a, &mailbox_b] {
            while let Some(m) = mailbox.try_receive().await.unwrap() {
                assert_eq!(m.message_type(), Some("n"));
                got.push(m.id().clone());
            }
        }
        got.sort_by_key(|id| ids.iter().position(|x| x == id).unwrap());
        assert_eq!(got, ids);
        // Unknown destinations are the router's answer.
        let nobody = AgentPid::new();
        let envelope = MessageEnvelope::new(nobody.clone(), "n".into(), json!(0), DeliveryOptions::default());
        assert!(matches!(system.send_message(envelope).await, Err(MessagingError::AgentNotFound(p)) if p == nobody));
        // Calls and built messages go through `route`.
        let worker = squarer(mailbox_b);
        let r: u64 = system.call_typed(a.clone(), &b, 9u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(r, 81);
        system.send(&a, AgentMessage::cast(b.clone(), 1u8)).await.unwrap();
        assert_eq!(router.messages.load(SeqCst), 2);
        let (stats, mailboxes) = system.get_stats().await;
        assert_eq!(stats.messages_routed, 12);
        assert_eq!(stats.active_routes, 2);
        assert_eq!(mailboxes.len(), 2);
        // The core routes through the custom router too: one engine, one router.
        system.as_sync().send(&a, AgentMessage::cast(b.clone(), 2u8)).unwrap();
        assert_eq!(router.messages.load(SeqCst), 3);
        system.unregister_agent(&a).await.unwrap();
        assert_eq!(router.unregistered.load(SeqCst), 1);
        assert!(system.get_mailbox(&a).await.is_none());
        assert!(matches!(mailbox_a.receive().await.unwrap().payload::<u8>(), Some(&1)));
        assert!(matches!(mailbox_a.receive().await.unwrap().payload::<u8>(), Some(&2)));
        assert!(matches!(mailbox_a.receive().await, Err(MessagingError::ChannelClosed(_))));
        system.shutdown().await.unwrap();
        system.shutdown().await.unwrap();
        assert_eq!(router.shut_down.load(SeqCst), 1);
        assert_eq!(worker.await.unwrap(), 1);
        assert!(system.send_message(MessageEnvelope::new(b, "n".into(), json!(0), DeliveryOptions::default())).await.is_err());
    }

    async fn groups() {
        let system = MessageSystem::new(RouterConfig::default());
        let group = system.create_group(LoadBalance::RoundRobin).await.unwrap();
        let (w1, m1) = registered(&system).await;
        let (w2, m2) = registered(&system).await;
        system.join_group(&group, &w1).await.unwrap();
        system.join_group(&group, &w2).await.unwrap();
        assert_eq!(system.group_members(&group).await.unwrap().len(), 2);
        for n in 0..4u8 {
            system.send(&group, AgentMessage::cast(AgentPid::new(), n)).await.unwrap();
        }
        assert_eq!(m1.queue_size().await + m2.queue_size().await, 4);
        assert_eq!(m1.queue_size().await, 2);
        system.leave_group(&group, &w1).await.unwrap();
        system.send(&group, AgentMessage::cast(AgentPid::new(), 9u8)).await.unwrap();
        assert_eq!(m2.queue_size().await, 3);
        system.delete_group(&group).await.unwrap();
        assert!(system.send(&group, AgentMessage::cast(AgentPid::new(), 0u8)).await.is_err());
        system.shutdown().await.unwrap();
    }

    async fn stress_many_senders() {
        // 4 producers × 2,000 messages through pre-resolved senders; every one arrives
        // once, FIFO per producer.
        const P: usize = 4;
        const N: usize = 2_000;
        let system = MessageSystem::new(RouterConfig::default());
        let (pid, mailbox) = registered(&system).await;
        let producers: Vec<_> = (0..P)
            .map(|p| {
                let sender = system.sender(&pid).unwrap();
                tokio::spawn(async move {
                    for n in 0..N {
                        sender.send(AgentMessage::cast(AgentPid::new(), (p, n))).await.unwrap();
                        if n % 64 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        let mut next = [0usize; P];
        for _ in 0..P * N {
            let m = mailbox.receive().await.unwrap();
            let &(p, n) = m.payload::<(usize, usize)>().unwrap();
            assert_eq!(n, next[p], "producer {p} out of order");
            next[p] += 1;
        }
        for p in producers {
            p.await.unwrap();
        }
        assert_eq!(next, [N; P]);
        assert!(mailbox.try_receive().await.unwrap().is_none());
        system.shutdown().await.unwrap();
    }
}

// ===== one runtime flavour =====

/// On a current-thread runtime the retry can only fire when the runtime runs the timer
/// task: blocking the thread holds it back (a timer thread would deliver meanwhile).
#[tokio::test(flavor = "current_thread")]
async fn retries_wait_for_the_runtime() {
    let system = retrying_system(1);
    let (pid, mailbox) = registered(&system).await;
    system
        .send(&pid, AgentMessage::cast(AgentPid::new(), 1u8))
        .await
        .unwrap();
    system
        .send(&pid, AgentMessage::cast(AgentPid::new(), 2u8))
        .await
        .unwrap();
    assert_eq!(
        mailbox
            .try_receive()
            .await
            .unwrap()
            .unwrap()
            .payload::<u8>(),
        Some(&1)
    );
    // The retry is due in 20 ms; block the only runtime thread well past it.
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        mailbox.try_receive().await.unwrap().is_none(),
        "fired off the runtime"
    );
    // Yielding to the runtime lets the timer task deliver it.
    let m = mailbox
        .receive_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(m.payload::<u8>(), Some(&2));
    system.shutdown().await.unwrap();
}

/// Retries that never find room end in the dead letters, counted once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted() {
    let mut config = RouterConfig::default();
    config.delivery_config.retry_delay = Duration::from_millis(5);
    config.delivery_config.retry_backoff_multiplier = 1.0;
    config.delivery_config.max_retries = 3;
    let system = MessageSystem::builder(config)
        .mailbox_config(MailboxConfig {
            max_messages: 1,
            ..MailboxConfig::default()
        })
        .build()
        .unwrap();
    let (pid, _mailbox) = registered(&system).await;
    system
        .send(&pid, AgentMessage::cast(AgentPid::new(), 1u8))
        .await
        .unwrap();
    system
        .send(&pid, AgentMessage::cast(AgentPid::new(), 2u8))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while system.dead_letter_count() == 0 {
        assert!(Instant::now() < deadline, "never given up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dead = system.dead_letters();
    assert_eq!(dead.len(), 1);
    assert!(
        matches!(dead[0].reason, DeadLetterReason::RetriesExhausted(_)),
        "{:?}",
        dead[0].reason
    );
    let (stats, _) = system.get_stats().await;
    assert_eq!(stats.retry_attempts, 3);
    assert_eq!(stats.messages_failed, 1);
    system.shutdown().await.unwrap();
}

/// Outside a runtime the system falls back to the core's timer thread, and still works
/// when driven from a runtime later.
#[test]
fn fallback_outside_runtime() {
    let system = retrying_system(1);
    assert!(!system.has_timer_task());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (pid, mailbox) = registered(&system).await;
        system
            .send(&pid, AgentMessage::cast(AgentPid::new(), 1u8))
            .await
            .unwrap();
        system
            .send(&pid, AgentMessage::cast(AgentPid::new(), 2u8))
            .await
            .unwrap();
        mailbox.receive().await.unwrap();
        let m = mailbox
            .receive_timeout(Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(m.payload::<u8>(), Some(&2));
        system.shutdown().await.unwrap();
    });
}

/// An explicit `TimerDriver::Manual` starts no task; the caller turns the wheel.
#[tokio::test(flavor = "current_thread")]
async fn manual_driver() {
    let mut config = RouterConfig::default();
    config.delivery_config.retry_delay = Duration::from_millis(100);
    let (system, clock) = manual_system(config, 1);
    assert!(!system.has_timer_task());
    let (pid, mailbox) = registered(&system).await;
    system
        .send(&pid, AgentMessage::cast(AgentPid::new(), 1u8))
        .await
        .unwrap();
    system
        .send(&pid, AgentMessage::cast(AgentPid::new(), 2u8))
        .await
        .unwrap();
    mailbox.receive().await.unwrap();
    assert!(system.run_due_timers().is_some());
    assert!(mailbox.try_receive().await.unwrap().is_none());
    clock.advance(Duration::from_millis(100));
    system.run_due_timers();
    assert_eq!(
        mailbox
            .try_receive()
            .await
            .unwrap()
            .unwrap()
            .payload::<u8>(),
        Some(&2)
    );
    system.shutdown().await.unwrap();
}

/// A custom clock does not make the timer task spin: it sleeps on the clock's terms.
#[tokio::test(flavor = "current_thread")]
async fn custom_clock_does_not_spin() {
    let mut config = RouterConfig::default();
    config.delivery_config.retry_delay = Duration::from_millis(100);
    let (builder, clock) = clocked_builder(config, 1);
    let system = builder.build().unwrap();
    assert!(system.has_timer_task());
    let (pid, mailbox) = registered(&system).await;
    system
        .send(&pid, AgentMessage::cast(AgentPid::new(), 1u8))
        .await
        .unwrap();
    system
        .send(&pid, AgentMessage::cast(AgentPid::new(), 2u8))
        .await
        .unwrap();
    mailbox.receive().await.unwrap();
    // Real time passes, the manual clock does not: nothing fires.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(mailbox.try_receive().await.unwrap().is_none());
    // Moving the clock past the deadline: the task fires it within its next sleep.
    clock.advance(Duration::from_millis(100));
    let m = mailbox
        .receive_timeout(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(m.payload::<u8>(), Some(&2));
    system.shutdown().await.unwrap();
}

/// Dropping every handle without `shutdown` ends the timer task too.
#[tokio::test(flavor = "current_thread")]
async fn drop_ends_timer_task() {
    let system = MessageSystem::new(RouterConfig::default());
    assert!(system.has_timer_task());
    let before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    drop(system);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
        >= before
    {
        assert!(Instant::now() < deadline, "timer task outlived its system");
        tokio::task::yield_now().await;
    }
}

/// A bad configuration: `build` refuses it, `new` reports it from every operation.
#[tokio::test(flavor = "current_thread")]
async fn bad_config() {
    let config = RouterConfig {
        retry_interval: Duration::ZERO,
        ..RouterConfig::default()
    };
    assert!(matches!(
        MessageSystem::builder(config.clone()).build(),
        Err(MessagingError::Configuration(_))
    ));
    let system = MessageSystem::new(config);
    assert!(!system.has_timer_task());
    assert!(matches!(
        system.register_agent(AgentPid::new()).await,
        Err(MessagingError::Configuration(_))
    ));
}

/// The mailbox manager and delivery manager twins.
#[tokio::test(flavor = "current_thread")]
async fn managers() {
    let manager = MailboxManager::new(MailboxConfig::default());
    let pid = AgentPid::new();
    let sender = manager.create_mailbox(pid.clone()).await.unwrap();
    assert!(matches!(
        manager.create_mailbox(pid.clone()).await,
        Err(MessagingError::DuplicateAgent(_))
    ));
    sender
        .send(AgentMessage::cast(AgentPid::new(), 1u8))
        .await
        .unwrap();
    let again = manager.get_mailbox_sender(&pid).await.unwrap();
    assert!(again.same_mailbox(&sender));
    assert_eq!(manager.list_agents().await, vec![pid.clone()]);
    assert_eq!(manager.get_all_stats().await[0].current_queue_size, 1);
    manager.remove_mailbox(&pid).await.unwrap();
    assert!(sender.is_closed());
    assert!(matches!(
        sender.send(AgentMessage::cast(AgentPid::new(), 2u8)).await,
        Err(MessagingError::ChannelClosed(_))
    ));
    assert!(manager.get_mailbox(&pid).await.is_none());

    let delivery =
        terraphim_agent_messaging::tokio::DeliveryManager::new(DeliveryConfig::default());
    let envelope = MessageEnvelope::new(
        AgentPid::new(),
        "t".into(),
        json!(1),
        DeliveryOptions::default(),
    );
    delivery.record_message(&envelope).await.unwrap();
    delivery.mark_in_transit(&envelope.id).await.unwrap();
    delivery.mark_delivered(&envelope.id).await.unwrap();
    delivery.mark_acknowledged(&envelope.id).await.unwrap();
    let record = delivery.get_delivery_record(&envelope.id).await.unwrap();
    assert_eq!(
        record.status,
        terraphim_agent_messaging::tokio::DeliveryStatus::Acknowledged
    );
    assert_eq!(delivery.get_stats().await.acknowledged, 1);
    assert!(delivery.get_retry_candidates().await.is_empty());
}

/// The module re-exports every public item of the crate root (or its twin), so one
/// `use terraphim_agent_messaging::tokio::{...}` line suffices.
#[test]
fn reexports_everything() {
    fn pub_use_names(source: &str, skip_self: bool) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find("pub use ") {
            let tail = &rest[at + "pub use ".len()..];
            let end = tail.find(';').unwrap();
            let item = &tail[..end];
            rest = &tail[end..];
            if skip_self && item.starts_with("self::") {
                continue;
            }
            let list = match (item.find('{'), item.rfind('}')) {
                (Some(open), Some(close)) => &item[open + 1..close],
                _ => item.rsplit("::").next().unwrap(),
            };
            names.extend(
                list.split(',')
                    .map(|n| n.split_whitespace().last().unwrap_or("").to_string())
                    .filter(|n| !n.is_empty()),
            );
        }
        names
    }
    let root = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    let module =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/tokio/mod.rs")).unwrap();
    let exported = pub_use_names(&module, false);
    let mut wanted = pub_use_names(&root, false);
    wanted.push("timer".into()); // `pub mod timer`
    assert!(wanted.len() > 30, "parsed too little of lib.rs: {wanted:?}");
    let missing: Vec<_> = wanted.iter().filter(|n| !exported.contains(n)).collect();
    assert!(missing.is_empty(), "tokio module lacks {missing:?}");
}

/// The next copy of `id`, skipping copies of earlier messages (whose ack was lost).
async fn receive_copy(mailbox: &AgentMailbox, id: &MessageId) {
    loop {
        let message = mailbox
            .receive_timeout(Duration::from_secs(10))
            .await
            .unwrap();
        if message.id() == id {
            return;
        }
    }
}

/// Core bug (src/router/default.rs, `retry`, `Stage::AwaitAck`: push, then `track`;
/// `dispatch` has the same order): a `require_ack` message is pushed into the mailbox
/// *before* its ack tracking is registered again, so a receiver on another thread that
/// takes it and acknowledges in between gets `UnknownMessage`: the ack is lost, and the
/// acknowledged message is redelivered and finally dead-lettered as `NotAcknowledged`.
/// The push wakes the parked receiver, and on a busy 2-core machine the wake often
/// preempts the timer task right after its push, which opens the window wide. Fix:
/// register the tracking before the push (and untrack if the push is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_redelivery_is_not_lost() {
    const N: usize = 150;
    let mut config = RouterConfig::default();
    config.delivery_config.acknowledgment_timeout = Duration::from_millis(3);
    config.delivery_config.max_retries = 1_000;
    let system = MessageSystem::new(config);
    let (pid, mailbox) = registered(&system).await;
    let options = DeliveryOptions {
        require_ack: true,
        max_retries: 1_000,
        ..DeliveryOptions::default()
    };
    let mut lost = 0;
    for n in 0..N {
        let envelope = MessageEnvelope::new(pid.clone(), "job".into(), json!(n), options.clone());
        let id = envelope.id.clone();
        system.send_message(envelope).await.unwrap();
        // The first copy goes unacknowledged; the redelivered one, delivered by the
        // timer task into a parked receive, is acknowledged the moment it arrives.
        receive_copy(&mailbox, &id).await;
        receive_copy(&mailbox, &id).await;
        match system.acknowledge(&id).await {
            Ok(()) => {}
            Err(MessagingError::UnknownMessage(_)) => {
                lost += 1;
                // Still tracked a moment later: it would be redelivered again.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let _ = system.acknowledge(&id).await;
            }
            Err(e) => panic!("{e:?}"),
        }
        while mailbox.try_receive().await.unwrap().is_some() {}
    }
    assert_eq!(lost, 0, "acknowledgements of delivered messages refused");
    system.shutdown().await.unwrap();
}

/// Core bug (src/router/default.rs, `dispatch`, `Push::Done` with `require_ack`): at the
/// `max_concurrent_deliveries` limit the message is pushed into the mailbox and *then*
/// refused tracking, so it is both delivered and dead-lettered as `Overloaded` (API.md:
/// each message ends in exactly one of delivered / dead letter / pending), and its ack
/// is refused. Fix: check the in-flight limit (reserve a slot) before the push.
#[tokio::test(flavor = "current_thread")]
async fn in_flight_limit_does_not_deliver_and_dead_letter() {
    let system = MessageSystem::new(RouterConfig {
        max_concurrent_deliveries: 2,
        ..RouterConfig::default()
    });
    let (pid, mailbox) = registered(&system).await;
    let options = DeliveryOptions {
        require_ack: true,
        ..DeliveryOptions::default()
    };
    let mut accepted = 0;
    for n in 0..3 {
        let envelope = MessageEnvelope::new(pid.clone(), "job".into(), json!(n), options.clone());
        if system.send_message(envelope).await.is_ok() {
            accepted += 1;
        }
    }
    let queued = mailbox.queue_size().await as u64;
    let dead = system.dead_letter_count();
    assert_eq!(
        queued + dead,
        3,
        "{accepted} accepted, {queued} queued, {dead} dead-lettered: a message counted twice"
    );
    system.shutdown().await.unwrap();
}

/// `receive_many`: waits for the first message, takes the ready rest up to the limit,
/// and loses nothing when cancelled mid-wait.
#[tokio::test(flavor = "current_thread")]
async fn receive_many_batches_and_is_cancel_safe() {
    let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    let sender = mailbox.sender();
    let mut buf = Vec::new();
    // Cancelled while waiting: nothing taken, the claim released.
    let waited =
        tokio::time::timeout(Duration::from_millis(10), mailbox.receive_many(&mut buf, 8)).await;
    assert!(waited.is_err(), "nothing was sent yet");
    assert!(buf.is_empty());
    for n in 0..5u32 {
        sender
            .send(AgentMessage::cast(AgentPid::nil(), n))
            .await
            .unwrap();
    }
    assert_eq!(mailbox.receive_many(&mut buf, 3).await.unwrap(), 3);
    assert_eq!(mailbox.receive_many(&mut buf, 0).await.unwrap(), 0);
    assert_eq!(mailbox.receive_many(&mut buf, 10).await.unwrap(), 2);
    let got: Vec<u32> = buf.iter().map(|m| *m.payload::<u32>().unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    // A waiting batch wakes on a send from another task.
    let later = sender.clone();
    tokio::spawn(async move {
        later
            .send(AgentMessage::cast(AgentPid::nil(), 9u32))
            .await
            .unwrap();
    });
    buf.clear();
    assert_eq!(mailbox.receive_many(&mut buf, 4).await.unwrap(), 1);
    assert_eq!(buf[0].payload::<u32>(), Some(&9));
    mailbox.close();
    assert!(matches!(
        mailbox.receive_many(&mut buf, 4).await,
        Err(MessagingError::ChannelClosed(_))
    ));
    // The future can move to another worker (tokio::spawn needs Send).
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&mailbox.receive_many(&mut buf, 4));
}
