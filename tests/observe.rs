//! Observability: the `tracing` events and spans, captured by a test subscriber and
//! asserted (cargo feature `tracing`), and the `metrics` a system publishes, read back
//! from an in-process Prometheus recorder (cargo feature `metrics`). Everything runs on
//! the test thread on a `ManualClock` with manual timers, so the thread-scoped
//! subscriber and recorder see all of it and nothing sleeps.

mod common;

/// Every test of this binary runs alone: tracing's interest cache is process-wide, so
/// a callsite first hit by a test without a subscriber, beside one that captures, may
/// stay cached as uninteresting (and the metrics recorder is process-wide too).
#[allow(dead_code)]
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(feature = "tracing")]
mod events {
    use std::sync::OnceLock;
    use std::time::Duration;

    use serde_json::json;
    use terraphim_agent_messaging::*;
    use tracing::Level;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Registry;

    use super::common::capture::{Capture, Captured, SINK};
    use super::common::sync::{manual_builder, manual_system, registered};

    const CRATE: &str = "terraphim_agent_messaging";

    /// Runs `f` under a subscriber that captures every event of this thread, at every
    /// level; returns what `f` returned and the crate's events.
    fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<Captured>) {
        // The capturing subscriber is the process's global default, installed once,
        // so no callsite is ever cached as uninteresting: scoped subscribers share
        // tracing's one interest cache with threads that run without one. (With
        // `RUST_LOG` set, `init_tracing` may have taken the global slot first: then a
        // scoped subscriber, with the cache rebuilt.)
        static GLOBAL: OnceLock<bool> = OnceLock::new();
        let _one = super::one_at_a_time();
        let global = *GLOBAL.get_or_init(|| {
            tracing::subscriber::set_global_default(Registry::default().with(Capture)).is_ok()
        });
        SINK.with(|sink| *sink.borrow_mut() = Some(Vec::new()));
        let out = if global {
            f()
        } else {
            tracing::subscriber::with_default(Registry::default().with(Capture), || {
                tracing::callsite::rebuild_interest_cache();
                f()
            })
        };
        let events = SINK
            .with(|sink| sink.borrow_mut().take())
            .unwrap_or_default();
        let ours = events.into_iter().filter(|e| e.target.starts_with(CRATE));
        (out, ours.collect())
    }

    fn envelope(to: &AgentPid, n: u64) -> MessageEnvelope {
        MessageEnvelope::new(
            to.clone(),
            "job".into(),
            json!({ "n": n }),
            DeliveryOptions::default(),
        )
    }

    fn with_message(events: &[Captured], id: &MessageId) -> Vec<Captured> {
        let id = id.to_string();
        let mine = events.iter().filter(|e| e.field("message_id") == Some(&id));
        mine.cloned().collect()
    }

    #[test]
    fn a_retried_then_dead_lettered_message() {
        let mut config = RouterConfig::default();
        config.delivery_config.max_retries = 3;
        config.delivery_config.retry_delay = Duration::from_millis(100);
        config.delivery_config.retry_backoff_multiplier = 2.0;
        let (system, clock) = manual_system(config, 1);
        let (pid, _mailbox) = registered(&system);
        system.send_message(envelope(&pid, 0)).unwrap(); // fills the mailbox

        let (id, events) = capture(|| {
            let refused = envelope(&pid, 1);
            let id = refused.id.clone();
            system.send_message(refused).unwrap(); // at-least-once: Ok, retried
            for _ in 0..10 {
                clock.advance(Duration::from_secs(1));
                system.run_due_timers();
            }
            id
        });

        let mine = with_message(&events, &id);
        assert!(
            mine.iter().all(|e| e.field("message_type") == Some("job")),
            "{mine:#?}"
        );
        let retries: Vec<_> = mine
            .iter()
            .filter(|e| e.message == "retry scheduled")
            .collect();
        let attempts: Vec<&str> = retries.iter().filter_map(|e| e.field("attempt")).collect();
        assert_eq!(attempts, ["2", "3", "4"], "{mine:#?}");
        let delays: Vec<&str> = retries.iter().filter_map(|e| e.field("delay")).collect();
        assert_eq!(delays, ["100ms", "200ms", "400ms"]);
        assert!(retries
            .iter()
            .all(|e| e.level == Level::DEBUG && e.target == format!("{CRATE}::delivery")));
        let refusals = mine.iter().filter(|e| e.message == "refused").count();
        assert_eq!(refusals, 4, "the first attempt and three retries");

        let dead: Vec<_> = events
            .iter()
            .filter(|e| e.message == "dead letter")
            .collect();
        assert_eq!(dead.len(), 1, "{events:#?}");
        let dead = dead[0];
        assert_eq!(dead.level, Level::WARN);
        assert_eq!(dead.target, format!("{CRATE}::dead_letter"));
        assert_eq!(dead.field("message_id"), Some(id.to_string().as_str()));
        assert_eq!(
            dead.field("reason"),
            Some("retries exhausted: mailbox full")
        );
        assert_eq!(dead.field("attempts"), Some("4"));
        assert_eq!(dead.field("to"), Some(pid.to_string().as_str()));
        // The message's own events, in order: it was routed before every refusal.
        let order: Vec<&str> = mine.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(order.first(), Some(&"routing"));
        assert_eq!(order.last(), Some(&"dead letter"));
    }

    #[test]
    fn a_breaker_opens_half_opens_and_closes() {
        let (builder, clock) = manual_builder(RouterConfig::default(), 1);
        let system = builder
            .circuit_breaker(CircuitBreakerConfig {
                failure_threshold: 1,
                reset_timeout: Duration::from_millis(100),
            })
            .build()
            .unwrap();
        let (pid, mailbox) = registered(&system);
        system.send_message(envelope(&pid, 0)).unwrap();

        let ((), events) = capture(|| {
            system.send_message(envelope(&pid, 1)).unwrap(); // refused: opens
            assert!(mailbox.try_receive().unwrap().is_some()); // room for the probe
            clock.advance(Duration::from_secs(1));
            system.run_due_timers(); // the retry is the probe: it goes through
        });

        let transitions: Vec<(&str, Level)> = events
            .iter()
            .filter(|e| e.target == format!("{CRATE}::breaker"))
            .map(|e| (e.message.as_str(), e.level))
            .collect();
        assert_eq!(
            transitions,
            [
                ("circuit breaker opened", Level::WARN),
                ("circuit breaker half-open", Level::INFO),
                ("circuit breaker closed", Level::INFO),
            ],
            "{events:#?}"
        );
        let pid = pid.to_string();
        assert!(events
            .iter()
            .filter(|e| e.target.ends_with("::breaker"))
            .all(|e| e.field("to") == Some(pid.as_str())));
        let opened = events
            .iter()
            .find(|e| e.message == "circuit breaker opened");
        assert_eq!(opened.and_then(|e| e.field("trips")), Some("1"));
        assert_eq!(
            mailbox.try_receive().unwrap().map(|m| m.kind()),
            Some("cast")
        );
    }

    /// A server thread that answers one call with its payload.
    fn echo_once(mailbox: AgentMailbox) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            if let Ok(AgentMessage::Call {
                payload, reply_to, ..
            }) = mailbox.receive()
            {
                reply_to.send(payload).ok();
            }
        })
    }

    /// The call span and the events of one call: routed and answered inside it, and
    /// nothing of it after it.
    fn assert_call_span(events: &[Captured], client: &AgentPid, server: &AgentPid) {
        let inside: Vec<_> = events
            .iter()
            .filter(|e| e.spans.first().is_some_and(|(name, _)| name == "call"))
            .collect();
        let messages: Vec<&str> = inside.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["routing", "call answered"], "{events:#?}");
        let (_, span) = &inside[0].spans[0];
        assert_eq!(span.get("from"), Some(&client.to_string()));
        assert_eq!(span.get("to"), Some(&server.to_string()));
        assert_eq!(span.get("timeout").map(String::as_str), Some("5s"));
        assert_eq!(
            inside[0].field("message_id"),
            span.get("message_id").map(|s| s.as_str())
        );
        assert!(inside.iter().all(|e| e.target.starts_with(CRATE)));
        let after = events.last().expect("the test's own event");
        assert_eq!(after.message, "after the call");
        assert!(after.spans.is_empty(), "the span ended with the call");
    }

    #[test]
    fn a_call_span_encloses_its_reply() {
        let (system, _clock) = manual_system(RouterConfig::default(), 0);
        let (server, mailbox) = registered(&system);
        let client = AgentPid::new();
        let worker = echo_once(mailbox);
        let (answer, events) = capture(|| {
            let answer = system.call(client.clone(), &server, 7u64, Duration::from_secs(5));
            tracing::trace!(target: CRATE, "after the call");
            answer
        });
        worker.join().unwrap();
        assert_eq!(*answer.unwrap().downcast::<u64>().unwrap(), 7);
        assert_call_span(&events, &client, &server);
    }

    #[test]
    fn an_async_call_span_encloses_its_reply() {
        let (system, _clock) = manual_system(RouterConfig::default(), 0);
        let (server, mailbox) = registered(&system);
        let client = AgentPid::new();
        let worker = echo_once(mailbox);
        let runtime = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (answer, events) = capture(|| {
            let call = system.call_async(client.clone(), &server, 8u64, Duration::from_secs(5));
            let answer = runtime.block_on(call);
            tracing::trace!(target: CRATE, "after the call");
            answer
        });
        worker.join().unwrap();
        assert_eq!(*answer.unwrap().downcast::<u64>().unwrap(), 8);
        assert_call_span(&events, &client, &server);
    }

    #[test]
    fn a_call_that_times_out_says_so_in_its_span() {
        let (system, _clock) = manual_system(RouterConfig::default(), 0);
        let (server, _mailbox) = registered(&system); // nobody answers
        let (answer, events) =
            capture(|| system.call(AgentPid::new(), &server, 1u64, Duration::from_millis(10)));
        assert!(matches!(answer, Err(MessagingError::MessageTimeout(_))));
        let timed_out = events.iter().find(|e| e.message == "call timed out");
        let timed_out = timed_out.expect("a timeout event");
        assert_eq!(timed_out.level, Level::DEBUG);
        assert_eq!(
            timed_out.spans.first().map(|(n, _)| n.as_str()),
            Some("call")
        );
    }

    /// The seed README's Quick Start, in the sync flavour: a clean run logs nothing at
    /// `INFO` or above but the shutdown's ledger.
    #[test]
    fn a_clean_quick_start_is_quiet() {
        let (result, events) = capture(|| -> Result<(), Box<dyn std::error::Error>> {
            let system = MessageSystem::new(RouterConfig::default());
            let agent1 = AgentPid::new();
            let agent2 = AgentPid::new();
            system.register_agent(agent1.clone())?;
            system.register_agent(agent2.clone())?;
            let envelope = MessageEnvelope::new(
                agent2.clone(),
                "greeting".to_string(),
                json!({"message": "Hello, Agent2!"}),
                DeliveryOptions::default(),
            )
            .with_from(agent1.clone());
            system.send_message(envelope)?;
            if let Some(mailbox) = system.get_mailbox(&agent2) {
                let message = mailbox.receive()?;
                assert_eq!(message.message_type(), Some("greeting"));
            }
            system.shutdown()?;
            Ok(())
        });
        result.unwrap();

        let loud: Vec<_> = events.iter().filter(|e| e.level <= Level::INFO).collect();
        assert_eq!(loud.len(), 1, "{loud:#?}");
        let ledger = loud[0];
        assert_eq!(ledger.message, "message system shut down");
        assert_eq!(ledger.level, Level::INFO);
        assert_eq!(ledger.target, format!("{CRATE}::system"));
        for (field, value) in [
            ("total_messages", "1"),
            ("delivered", "1"),
            ("failed", "0"),
            ("pending", "0"),
            ("dead_letters", "0"),
        ] {
            assert_eq!(ledger.field(field), Some(value), "{field}");
        }
        let registered = events.iter().filter(|e| e.message == "agent registered");
        assert_eq!(registered.count(), 2);
        assert!(events
            .iter()
            .any(|e| e.message == "routing" && e.level == Level::TRACE));
    }
}

#[cfg(feature = "metrics")]
mod metrics {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use serde_json::json;
    use terraphim_agent_messaging::*;

    use super::common::sync::{manual_system, registered};

    /// The rendered samples, by series (`name{labels}`).
    fn samples(handle: &PrometheusHandle) -> BTreeMap<String, f64> {
        let text = handle.render();
        let lines = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty());
        lines
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    fn get(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {samples:#?}"))
    }

    /// Registers two agents, a worker and a callee. Sends 3 envelopes to the worker
    /// (one delivered, two refused by its full mailbox and dead-lettered at once:
    /// at-most-once), one to nobody, and makes one call to the callee, which does not
    /// answer: 5 messages sent, 2 delivered (and queued), 3 dead letters, 1 timeout.
    fn traffic(system: &MessageSystem) -> (AgentPid, AgentMailbox, AgentMailbox) {
        let (worker, mailbox) = registered(system);
        let (callee, inbox) = registered(system);
        for n in 0..3 {
            let envelope =
                MessageEnvelope::new(worker.clone(), "job".into(), json!(n), Default::default());
            let _ = system.send_message(envelope);
        }
        let nobody =
            MessageEnvelope::new(AgentPid::new(), "job".into(), json!(9), Default::default());
        assert!(system.send_message(nobody).is_err());
        let call = system.call(AgentPid::new(), &callee, 1u64, Duration::from_millis(1));
        assert!(matches!(call, Err(MessagingError::MessageTimeout(_))));
        (worker, mailbox, inbox)
    }

    fn at_most_once() -> RouterConfig {
        let mut config = RouterConfig::default();
        config.delivery_config.guarantee = DeliveryGuarantee::AtMostOnce;
        config
    }

    #[test]
    fn a_system_publishes_its_ledger_and_gauges() {
        let _one = super::one_at_a_time();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let (system, _clock) = manual_system(at_most_once(), 1);
        ::metrics::with_local_recorder(&recorder, || {
            system.watch_depth(&registered(&system).0, "idle");
            let (worker, mailbox, _inbox) = traffic(&system);
            system.watch_depth(&worker, "worker");
            system.publish_metrics();
            let s = samples(&handle);
            assert_eq!(get(&s, "agent_messaging_messages_sent_total"), 5.0);
            assert_eq!(get(&s, "agent_messaging_messages_delivered_total"), 2.0);
            let full = r#"agent_messaging_dead_letters_total{reason="mailbox_full"}"#;
            assert_eq!(get(&s, full), 2.0);
            let unknown = r#"agent_messaging_dead_letters_total{reason="agent_not_found"}"#;
            assert_eq!(get(&s, unknown), 1.0);
            let expired = r#"agent_messaging_dead_letters_total{reason="expired"}"#;
            assert_eq!(get(&s, expired), 0.0, "every reason shows, at zero");
            let timeouts = r#"agent_messaging_calls_total{outcome="timeout"}"#;
            assert_eq!(get(&s, timeouts), 1.0);
            assert_eq!(get(&s, r#"agent_messaging_calls_total{outcome="ok"}"#), 0.0);
            assert_eq!(get(&s, "agent_messaging_retries_total"), 0.0);
            assert_eq!(get(&s, "agent_messaging_agents"), 3.0);
            assert_eq!(get(&s, "agent_messaging_queued_messages"), 2.0);
            assert_eq!(get(&s, "agent_messaging_pending_messages"), 0.0);
            assert_eq!(
                get(&s, r#"agent_messaging_mailbox_depth{agent="idle"}"#),
                0.0
            );
            assert_eq!(
                get(&s, r#"agent_messaging_mailbox_depth{agent="worker"}"#),
                1.0
            );

            // The worker's message was the first pushed into its mailbox (a sampled
            // push), so its wait is timed when it is received.
            assert!(mailbox.try_receive().unwrap().is_some());
            system.publish_metrics();
            let s = samples(&handle);
            assert_eq!(get(&s, "agent_messaging_queued_messages"), 1.0);
            assert_eq!(get(&s, "agent_messaging_mailbox_wait_seconds_count"), 1.0);
            assert_eq!(
                get(&s, "agent_messaging_messages_sent_total"),
                5.0,
                "no double count"
            );

            system.shutdown().unwrap();
            let s = samples(&handle);
            assert_eq!(get(&s, "agent_messaging_agents"), 0.0);
            assert_eq!(get(&s, "agent_messaging_queued_messages"), 0.0);
            assert_eq!(
                get(&s, r#"agent_messaging_mailbox_depth{agent="worker"}"#),
                0.0
            );
            assert_eq!(get(&s, "agent_messaging_messages_sent_total"), 5.0);
        });
    }

    #[test]
    fn two_systems_add_up() {
        let _one = super::one_at_a_time();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            let (one, _) = manual_system(at_most_once(), 1);
            let (two, _) = manual_system(at_most_once(), 1);
            let _kept = (traffic(&one), traffic(&two));
            one.publish_metrics();
            two.publish_metrics();
            one.publish_metrics(); // nothing new: adds nothing
            let s = samples(&handle);
            assert_eq!(get(&s, "agent_messaging_messages_sent_total"), 10.0);
            assert_eq!(get(&s, "agent_messaging_agents"), 4.0);
            one.shutdown().unwrap();
            let s = samples(&handle);
            assert_eq!(
                get(&s, "agent_messaging_agents"),
                2.0,
                "two's agents are left"
            );
            assert_eq!(get(&s, "agent_messaging_queued_messages"), 2.0);
        });
    }

    #[test]
    fn the_timer_pass_publishes_at_most_once_a_second() {
        let _one = super::one_at_a_time();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            let (system, clock) = manual_system(at_most_once(), 1);
            system.run_due_timers(); // the first pass publishes
            let _mailbox = traffic(&system);
            system.run_due_timers();
            let sent = "agent_messaging_messages_sent_total";
            assert_eq!(get(&samples(&handle), sent), 0.0, "not yet a second later");
            clock.advance(Duration::from_secs(1));
            system.run_due_timers();
            assert_eq!(get(&samples(&handle), sent), 5.0);
        });
    }
}
