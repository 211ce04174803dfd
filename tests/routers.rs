//! The delivery engine behind custom routers: retries, acks, breakers, call timeouts,
//! the ledger and the system's `DeliveryManager` work the same whether the system
//! routes through its own table or through a user's `MessageRouter` (sync, or the
//! seed's async one). Every timer moves on a `ManualClock`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sync::{manual_builder, manual_system, registered};
use serde_json::json;
use terraphim_agent_messaging::{
    AgentMessage, AgentPid, CircuitBreakerConfig, DeliveryConfig, DeliveryGuarantee,
    DeliveryOptions, DeliveryStatus, MailboxSender, MessageEnvelope, MessagePriority,
    MessageRouter, MessageSystem, MessagingError, MessagingResult, RouterConfig, RouterStats,
};

/// A router that forwards to the senders it was given, through `MailboxSender::send`
/// (which dead-letters a refused message unless the engine takes it back).
#[derive(Default)]
struct Forwarding {
    routes: Mutex<HashMap<AgentPid, MailboxSender>>,
    attempts: AtomicUsize,
}

impl Forwarding {
    fn sender(&self, to: &AgentPid) -> MessagingResult<MailboxSender> {
        let routes = self.routes.lock().unwrap();
        routes
            .get(to)
            .cloned()
            .ok_or_else(|| MessagingError::AgentNotFound(to.clone()))
    }
}

impl MessageRouter for Forwarding {
    fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
        let to = envelope.to.clone();
        let priority = envelope.delivery_options.priority;
        self.route(&to, envelope.into_message(), priority)
    }

    fn register_agent(&self, agent_id: AgentPid, sender: MailboxSender) -> MessagingResult<()> {
        self.routes.lock().unwrap().insert(agent_id, sender);
        Ok(())
    }

    fn unregister_agent(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        self.routes.lock().unwrap().remove(agent_id);
        Ok(())
    }

    fn get_stats(&self) -> RouterStats {
        RouterStats {
            messages_routed: self.attempts.load(SeqCst) as u64,
            ..RouterStats::default()
        }
    }

    fn shutdown(&self) -> MessagingResult<()> {
        Ok(())
    }

    fn route(
        &self,
        to: &AgentPid,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.attempts.fetch_add(1, SeqCst);
        self.sender(to)?.send_with_priority(message, priority)
    }
}

fn config(guarantee: DeliveryGuarantee) -> RouterConfig {
    RouterConfig {
        delivery_config: DeliveryConfig {
            guarantee,
            retry_delay: Duration::from_millis(100),
            acknowledgment_timeout: Duration::from_secs(1),
            ..DeliveryConfig::default()
        },
        ..RouterConfig::default()
    }
}

fn envelope(to: &AgentPid, n: u64, require_ack: bool) -> MessageEnvelope {
    let options = DeliveryOptions {
        require_ack,
        ..DeliveryOptions::default()
    };
    MessageEnvelope::new(to.clone(), "n".into(), json!(n), options)
}

/// A system on a manual clock routing through `router`, mailboxes bounded at `cap`.
fn routed(
    router: Arc<dyn MessageRouter>,
    guarantee: DeliveryGuarantee,
    cap: usize,
) -> (MessageSystem, terraphim_agent_messaging::ManualClock) {
    let (builder, clock) = manual_builder(config(guarantee), cap);
    (builder.router(router).build().unwrap(), clock)
}

#[test]
fn a_forwarding_router_gets_retries_and_the_ledger() {
    let router = Arc::new(Forwarding::default());
    let (system, clock) = routed(router.clone(), DeliveryGuarantee::AtLeastOnce, 1);
    let (pid, mailbox) = registered(&system);

    system.send_message(envelope(&pid, 1, false)).unwrap();
    let second = envelope(&pid, 2, false);
    let second_id = second.id.clone();
    // Refused by the full mailbox: accepted, waiting for a retry, not dead-lettered.
    system.send_message(second).unwrap();
    assert!(system.dead_letters().is_empty());
    let waiting = system.delivery_manager().get_retry_candidates();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].id, second_id);
    assert_eq!(waiting[0].attempts, 1);
    let ledger = system.delivery_stats();
    assert_eq!(
        (ledger.total_messages, ledger.delivered, ledger.pending),
        (2, 1, 1)
    );

    assert_eq!(
        mailbox.receive().unwrap().payload::<serde_json::Value>(),
        Some(&json!(1))
    );
    clock.advance(Duration::from_millis(100));
    system.run_due_timers();
    assert_eq!(mailbox.receive().unwrap().id(), &second_id);
    assert_eq!(router.attempts.load(SeqCst), 3);

    let ledger = system.delivery_stats();
    assert_eq!(
        (ledger.total_messages, ledger.delivered, ledger.pending),
        (2, 2, 0)
    );
    assert_eq!(ledger.total_attempts, 3);
    assert!(system.delivery_manager().get_retry_candidates().is_empty());
    assert!(system.dead_letters().is_empty());
    system.shutdown().unwrap();
}

#[test]
fn a_forwarding_router_gets_acks_and_redelivery() {
    let router = Arc::new(Forwarding::default());
    let (system, clock) = routed(router, DeliveryGuarantee::AtLeastOnce, 0);
    let (pid, mailbox) = registered(&system);
    let asked = envelope(&pid, 7, true);
    let id = asked.id.clone();
    system.send_message(asked).unwrap();
    assert_eq!(mailbox.receive().unwrap().id(), &id);
    let manager = system.delivery_manager();
    assert_eq!(
        manager.get_delivery_record(&id).unwrap().status,
        DeliveryStatus::InTransit
    );

    // No ack within the timeout: redelivered with the same id.
    clock.advance(Duration::from_secs(1));
    system.run_due_timers();
    assert_eq!(mailbox.receive().unwrap().id(), &id);
    system.acknowledge(&id).unwrap();
    assert!(matches!(
        system.acknowledge(&id),
        Err(MessagingError::UnknownMessage(_))
    ));
    let ledger = system.delivery_stats();
    assert_eq!(
        (
            ledger.total_messages,
            ledger.acknowledged,
            ledger.in_transit
        ),
        (1, 1, 0)
    );
    assert_eq!(ledger, manager.get_stats());
    system.shutdown().unwrap();
}

#[test]
fn a_forwarding_router_gets_call_timeouts() {
    let router = Arc::new(Forwarding::default());
    let (system, clock) = routed(router, DeliveryGuarantee::AtLeastOnce, 0);
    let (server, mailbox) = registered(&system);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    // Answered: the reply arrives through the router's mailbox.
    let worker = std::thread::spawn(move || {
        let AgentMessage::Call {
            payload, reply_to, ..
        } = mailbox.receive().unwrap()
        else {
            panic!("a call")
        };
        reply_to.send(payload).unwrap();
        mailbox
    });
    let call = system.call_async(AgentPid::new(), &server, 5u64, Duration::from_secs(1));
    let reply = runtime.block_on(call).unwrap();
    assert_eq!(*reply.downcast::<u64>().unwrap(), 5);
    let mailbox = worker.join().unwrap();

    // Unanswered: the timeout fires on the system's wheel when the clock gets there.
    let call = system.call_async(AgentPid::new(), &server, 6u64, Duration::from_secs(2));
    clock.advance(Duration::from_secs(2));
    system.run_due_timers();
    assert!(
        matches!(runtime.block_on(call), Err(MessagingError::MessageTimeout(p)) if p == server)
    );
    drop(mailbox);
    system.shutdown().unwrap();
}

#[test]
fn a_forwarding_router_gets_breakers() {
    let router = Arc::new(Forwarding::default());
    let (builder, _clock) = manual_builder(config(DeliveryGuarantee::AtMostOnce), 1);
    let breaker = CircuitBreakerConfig {
        failure_threshold: 2,
        reset_timeout: Duration::from_secs(5),
    };
    let system = builder
        .router(router.clone())
        .circuit_breaker(breaker)
        .build()
        .unwrap();
    let (pid, _mailbox) = registered(&system);
    system
        .send(&pid, AgentMessage::cast(AgentPid::nil(), 0u8))
        .unwrap();
    for _ in 0..2 {
        let refused = system.send(&pid, AgentMessage::cast(AgentPid::nil(), 1u8));
        assert!(matches!(refused, Err(MessagingError::MailboxFull(_))));
    }
    // Open: refused without reaching the router.
    let before = router.attempts.load(SeqCst);
    let refused = system.send(&pid, AgentMessage::cast(AgentPid::nil(), 2u8));
    assert!(matches!(refused, Err(MessagingError::CircuitOpen(_))));
    assert_eq!(router.attempts.load(SeqCst), before);
    // Every refusal is dead-lettered once, by the engine.
    assert_eq!(system.dead_letters().len(), 3);
    assert_eq!(system.delivery_stats().failed, 3);
    system.shutdown().unwrap();
}

#[test]
fn the_system_delivery_manager_lists_exactly_the_wheel() {
    let (system, clock) = manual_system(config(DeliveryGuarantee::AtLeastOnce), 1);
    let (pid, mailbox) = registered(&system);
    let (other, _other_mailbox) = registered(&system);
    system.send_message(envelope(&pid, 0, false)).unwrap();
    let refused: Vec<_> = (1..=2).map(|n| envelope(&pid, n, false)).collect();
    let ids: Vec<_> = refused.iter().map(|e| e.id.clone()).collect();
    for e in refused {
        system.send_message(e).unwrap();
    }
    let asked = envelope(&other, 3, true);
    let asked_id = asked.id.clone();
    system.send_message(asked).unwrap();
    // A built message waits on the wheel too, but has no envelope to list.
    system
        .send(&pid, AgentMessage::cast(AgentPid::nil(), 9u8))
        .unwrap();

    let manager = system.delivery_manager();
    let listed: Vec<_> = manager
        .get_retry_candidates()
        .into_iter()
        .map(|e| e.id)
        .collect();
    // Soonest deadline first: the retries (100 ms, one tick, in either order) before
    // the ack timeout (1 s).
    assert_eq!(listed.len(), 3);
    let retries: HashSet<_> = listed[..2].iter().cloned().collect();
    assert_eq!(retries, ids.iter().cloned().collect());
    assert_eq!(listed[2], asked_id);
    assert_eq!(manager.len(), 4);
    assert_eq!(manager.get_stats(), system.delivery_stats());
    assert_eq!(manager.get_stats().pending, 3);
    assert_eq!(manager.get_stats().in_transit, 1);
    let record = manager.get_delivery_record(&ids[0]).unwrap();
    assert_eq!(
        (record.status, record.attempts),
        (DeliveryStatus::Pending, 1)
    );
    assert_eq!(record.to, pid);

    // The system's records are driven by the system.
    assert!(matches!(
        manager.mark_failed(&ids[0], "no".into()),
        Err(MessagingError::Configuration(_))
    ));
    assert!(manager.record_message(&envelope(&pid, 4, false)).is_err());
    assert!(manager.remove(&ids[0]).is_none());
    // Acks go through to the engine.
    manager.mark_acknowledged(&asked_id).unwrap();
    assert_eq!(system.delivery_stats().acknowledged, 1);

    // Drain and fire: what was listed is delivered, and the wheel is empty.
    for _ in 0..4 {
        mailbox.receive().unwrap();
        clock.advance(Duration::from_millis(400));
        system.run_due_timers();
    }
    assert!(manager.get_retry_candidates().is_empty());
    assert_eq!(manager.len(), 0);
    assert_eq!(system.delivery_stats().delivered, 4);
    system.shutdown().unwrap();
}

#[cfg(feature = "tokio")]
mod async_routers {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use terraphim_agent_messaging::tokio::{
        async_trait, AgentMessage, AgentPid, DeliveryGuarantee, MailboxSender, MessageEnvelope,
        MessagePriority, MessageRouter, MessagingError, MessagingResult,
    };

    use super::common::tokio::{clocked_builder, registered, within};
    use super::{config, envelope};

    /// The seed's "Custom Message Router", as written there: it accepts every envelope
    /// and delivers nothing.
    struct CustomRouter {}

    #[async_trait]
    impl MessageRouter for CustomRouter {
        async fn route_message(&self, _envelope: MessageEnvelope) -> MessagingResult<()> {
            Ok(())
        }

        async fn register_agent(&self, _: AgentPid, _: MailboxSender) -> MessagingResult<()> {
            Ok(())
        }
    }

    /// An async router forwarding to the senders it was given.
    #[derive(Default)]
    struct Forwarding {
        routes: Mutex<HashMap<AgentPid, MailboxSender>>,
    }

    #[async_trait]
    impl MessageRouter for Forwarding {
        async fn route_message(&self, envelope: MessageEnvelope) -> MessagingResult<()> {
            let to = envelope.to.clone();
            let priority = envelope.delivery_options.priority;
            self.route(&to, envelope.into_message(), priority).await
        }

        async fn register_agent(
            &self,
            pid: AgentPid,
            sender: MailboxSender,
        ) -> MessagingResult<()> {
            self.routes.lock().unwrap().insert(pid, sender);
            Ok(())
        }

        async fn route(
            &self,
            to: &AgentPid,
            message: AgentMessage,
            priority: MessagePriority,
        ) -> MessagingResult<()> {
            let sender = self.routes.lock().unwrap().get(to).cloned();
            let sender = sender.ok_or_else(|| MessagingError::AgentNotFound(to.clone()))?;
            sender.send_with_priority(message, priority).await
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_seed_custom_router_gets_acks_and_the_ledger() {
        let (builder, clock) = clocked_builder(config(DeliveryGuarantee::AtLeastOnce), 0);
        let system = builder.router(Arc::new(CustomRouter {})).build().unwrap();
        let (pid, _mailbox) = registered(&system).await;
        let asked = envelope(&pid, 1, true);
        let id = asked.id.clone();
        system.send_message(asked).await.unwrap();
        // The router took it; the engine tracks it for its ack, on the system's wheel.
        assert_eq!(
            system.delivery_manager().get_retry_candidates().await.len(),
            1
        );
        system.acknowledge(&id).await.unwrap();
        let ledger = system.delivery_stats();
        assert_eq!((ledger.total_messages, ledger.acknowledged), (1, 1));
        // A call through a router without `route` is refused at once, not left to time out.
        clock.advance(Duration::from_millis(1));
        let call = system.call(AgentPid::new(), &pid, 1u8, Duration::from_secs(1));
        assert!(matches!(
            call.await,
            Err(MessagingError::DeliveryFailed(..))
        ));
        system.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_forwarding_async_router_gets_retries_and_calls() {
        let (builder, clock) = clocked_builder(config(DeliveryGuarantee::ExactlyOnce), 1);
        let system = builder
            .timer_driver(terraphim_agent_messaging::tokio::TimerDriver::Manual)
            .router(Arc::new(Forwarding::default()))
            .build()
            .unwrap();
        let (pid, mailbox) = registered(&system).await;
        system.send_message(envelope(&pid, 1, false)).await.unwrap();
        let second = envelope(&pid, 2, false);
        let id = second.id.clone();
        system.send_message(second.clone()).await.unwrap();
        assert_eq!(system.delivery_stats().pending, 1);
        assert!(system.dead_letters().is_empty());
        mailbox.receive().await.unwrap();
        clock.advance(Duration::from_millis(100));
        system.run_due_timers();
        assert_eq!(mailbox.receive().await.unwrap().id(), &id);
        // Exactly-once through the router: the same id again is suppressed.
        system.send_message(second).await.unwrap();
        assert!(mailbox.try_receive().await.unwrap().is_none());
        assert_eq!(system.delivery_stats().duplicates, 1);

        let server = mailbox.clone();
        let worker = tokio::spawn(async move {
            if let AgentMessage::Call {
                payload, reply_to, ..
            } = server.receive().await.unwrap()
            {
                let n = *payload.downcast::<u64>().unwrap();
                reply_to.send(Box::new(n * n)).unwrap();
            }
        });
        let squared: u64 = within(
            10,
            system.call_typed(AgentPid::new(), &pid, 12u64, Duration::from_secs(5)),
        )
        .await
        .unwrap();
        assert_eq!(squared, 144);
        worker.await.unwrap();
        system.shutdown().await.unwrap();
    }
}
