//! Cluster nodes on a real NATS server (cargo feature `nats`): two nodes in one test
//! process, each a `MessageSystem` with its own node name, on one `nats-server` started
//! by the test (`tests/cluster_support`). Every test is bounded in time (`within`), and
//! every exchange is tallied end to end, jepsen-style: each message accepted by
//! `send_message`/`send` is delivered to the remote mailbox, dead-lettered (on either
//! node, with its reason) or still pending; lost = 0.
#![cfg(feature = "nats")]

mod cluster_support;
mod common;

use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, ClusterConfig, DeadLetterReason, DeliveryConfig,
    DeliveryGuarantee, DeliveryOptions, ErrorCategory, LoadBalance, MailboxConfig, MessageEnvelope,
    MessageId, MessageSystem, MessagingError, RouterConfig, SystemInfo,
};

use cluster_support::{free_port, NatsServer};
use common::sync::within;
use common::wait_until;

fn router_config(guarantee: DeliveryGuarantee) -> RouterConfig {
    RouterConfig {
        delivery_config: DeliveryConfig {
            guarantee,
            ..DeliveryConfig::default()
        },
        ..RouterConfig::default()
    }
}

fn config(server: &NatsServer, prefix: &str, name: &str) -> ClusterConfig {
    ClusterConfig::new(server.url(), name)
        .prefix(prefix)
        .connect_timeout(Duration::from_secs(5))
}

fn node(
    server: &NatsServer,
    prefix: &str,
    name: &str,
    guarantee: DeliveryGuarantee,
) -> MessageSystem {
    MessageSystem::builder(router_config(guarantee))
        .cluster(config(server, prefix, name))
        .build()
        .unwrap_or_else(|e| panic!("node {name}: {e}\nserver log:\n{}", server.log()))
}

fn registered(system: &MessageSystem) -> (AgentPid, AgentMailbox) {
    let pid = AgentPid::new();
    system.register_agent(pid.clone()).unwrap();
    let mailbox = system.get_mailbox(&pid).unwrap();
    (pid, mailbox)
}

/// Waits until `system` resolves `pid` to `node`.
fn sees(system: &MessageSystem, pid: &AgentPid, node: &str) {
    wait_until(&format!("node {node} owning {pid}"), || {
        system.cluster_node_of(pid).as_deref() == Some(node)
    });
}

fn job(to: &AgentPid, from: &AgentPid, n: usize) -> MessageEnvelope {
    MessageEnvelope::new(
        to.clone(),
        "job".into(),
        json!({ "n": n }),
        DeliveryOptions::default(),
    )
    .with_from(from.clone())
}

/// What one receiver saw.
struct Seen {
    ids: Vec<MessageId>,
}

/// Receives on its own thread until `n` distinct messages arrived or nothing came for `quiet`,
/// checking that each arrives as the envelope or cast it was sent as.
fn receive(mailbox: AgentMailbox, from: AgentPid, n: usize) -> thread::JoinHandle<Seen> {
    receive_until_quiet(mailbox, from, n, Duration::from_secs(3))
}

fn receive_until_quiet(
    mailbox: AgentMailbox,
    from: AgentPid,
    n: usize,
    quiet: Duration,
) -> thread::JoinHandle<Seen> {
    thread::spawn(move || {
        let mut ids = Vec::new();
        // Distinct ids: at least once may deliver a copy, which must not end the count.
        let mut distinct = HashSet::new();
        while distinct.len() < n {
            let Ok(message) = mailbox.receive_timeout(quiet) else {
                break;
            };
            match &message {
                AgentMessage::Cast { .. } => {
                    let payload = message
                        .payload::<serde_json::Value>()
                        .expect("a JSON payload");
                    assert!(payload["n"].is_u64(), "{payload}");
                    if message.message_type().is_some() {
                        assert_eq!(message.message_type(), Some("job"));
                    }
                    assert_eq!(message.from(), Some(&from));
                }
                AgentMessage::Info { info, .. } => {
                    assert!(matches!(info, SystemInfo::Custom { .. }), "{info:?}");
                }
                other => panic!("unexpected {other:?}"),
            }
            distinct.insert(message.id().clone());
            ids.push(message.id().clone());
        }
        Seen { ids }
    })
}

/// The jepsen-style tally of one direction.
#[derive(Debug)]
struct Tally {
    accepted: usize,
    delivered: usize,
    dead_lettered: usize,
    lost: usize,
    duplicated: usize,
    unexpected: usize,
}

fn tally(
    accepted: &HashSet<MessageId>,
    delivered: &[MessageId],
    dead: &HashSet<MessageId>,
) -> Tally {
    let mut copies: HashMap<&MessageId, usize> = HashMap::new();
    for id in delivered {
        *copies.entry(id).or_default() += 1;
    }
    Tally {
        accepted: accepted.len(),
        delivered: copies.len(),
        dead_lettered: dead.len(),
        lost: accepted
            .iter()
            .filter(|id| !copies.contains_key(id) && !dead.contains(id))
            .count(),
        duplicated: copies.values().map(|n| n - 1).sum(),
        unexpected: copies.keys().filter(|id| !accepted.contains(id)).count(),
    }
}

/// Two nodes send `n` envelopes, `n / 10` JSON casts and one info each way under
/// `guarantee`; the tally of each direction loses nothing.
fn exchange(guarantee: DeliveryGuarantee, n: usize) {
    within(60, move || {
        let server = NatsServer::start();
        let a = node(&server, "xchg", "a", guarantee);
        let b = node(&server, "xchg", "b", guarantee);
        let (pa, ma) = registered(&a);
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");
        sees(&b, &pa, "a");
        assert_eq!(a.cluster_node_of(&pa).as_deref(), Some("a"));

        let casts = n / 10;
        let total = n + casts + 1;
        let to_b = receive(mb, pa.clone(), total);
        let to_a = receive(ma, pb.clone(), total);
        let started = Instant::now();
        let send_all = |from_sys: &MessageSystem, from: &AgentPid, to: &AgentPid| {
            let mut accepted = HashSet::new();
            for i in 0..n {
                let envelope = job(to, from, i);
                let id = envelope.id.clone();
                if from_sys.send_message(envelope).is_ok() {
                    accepted.insert(id);
                }
                if i % 10 == 0 && i / 10 < casts {
                    let cast = AgentMessage::cast(from.clone(), json!({ "n": i }));
                    let id = cast.id().clone();
                    if from_sys.send(to, cast).is_ok() {
                        accepted.insert(id);
                    }
                }
            }
            let info = AgentMessage::info(SystemInfo::Custom {
                message_type: "hello".into(),
                data: json!({}),
                timestamp: chrono::Utc::now(),
            });
            let id = info.id().clone();
            if from_sys.send(to, info).is_ok() {
                accepted.insert(id);
            }
            accepted
        };
        let accepted_ab = send_all(&a, &pa, &pb);
        let accepted_ba = send_all(&b, &pb, &pa);
        let seen_b = to_b.join().unwrap();
        let seen_a = to_a.join().unwrap();
        let took = started.elapsed();

        let dead: HashSet<MessageId> = a
            .dead_letters()
            .into_iter()
            .chain(b.dead_letters())
            .map(|letter| letter.id)
            .collect();
        let ab = tally(&accepted_ab, &seen_b.ids, &dead);
        let ba = tally(&accepted_ba, &seen_a.ids, &dead);
        println!("{guarantee:?}: a->b {ab:?}; b->a {ba:?}; {took:?}");
        for (t, stats) in [(&ab, a.cluster_stats()), (&ba, b.cluster_stats())] {
            let stats = stats.unwrap();
            assert_eq!(t.accepted, total, "every send accepted on loopback: {t:?}");
            assert_eq!(t.lost, 0, "{t:?} {stats:?}");
            assert_eq!(t.unexpected, 0, "{t:?}");
            assert_eq!(t.duplicated, 0, "no fault, no copy: {t:?}");
            assert_eq!(t.delivered + t.dead_lettered, t.accepted, "{t:?}");
            assert_eq!(stats.queued, 0, "{stats:?}");
            assert_eq!(stats.publish_failed, 0, "{stats:?}");
        }
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn two_nodes_exchange_at_least_once() {
    exchange(DeliveryGuarantee::AtLeastOnce, 500);
}

#[test]
fn two_nodes_exchange_at_most_once() {
    exchange(DeliveryGuarantee::AtMostOnce, 500);
}

#[test]
fn two_nodes_exchange_exactly_once() {
    exchange(DeliveryGuarantee::ExactlyOnce, 500);
}

/// A frame as another node writes it (wire version 1).
fn frame(to: &AgentPid, id: &MessageId, exactly_once: bool) -> String {
    json!({
        "v": 1, "to": to, "priority": "Normal", "from_node": "elsewhere",
        "exactly_once": exactly_once,
        "body": {"kind": "cast", "id": id, "from": null, "message_type": "dup", "payload": {"n": 1}},
    })
    .to_string()
}

#[test]
fn an_exactly_once_copy_that_arrives_again_is_not_delivered_again() {
    within(30, || {
        let server = NatsServer::start();
        let b = node(&server, "dup", "b", DeliveryGuarantee::AtLeastOnce);
        let (pb, mb) = registered(&b);
        let (once, twice, republished) = (MessageId::new(), MessageId::new(), MessageId::new());
        // The same frame three times, as JetStream redelivers one whose ack was lost
        // (no Nats-Msg-Id, so the stream keeps every copy).
        let frames = [
            frame(&pb, &once, true),
            frame(&pb, &once, true),
            frame(&pb, &once, true),
            frame(&pb, &twice, false),
            frame(&pb, &twice, false),
        ];
        let url = server.url();
        let (pb2, republished2) = (pb.clone(), republished.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
            for frame in frames {
                js.publish("dup.node.b", frame.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            // A publish retried after its ack was lost: the same Nats-Msg-Id (what the
            // publisher sets, = the message id) is stored once by the stream.
            for _ in 0..2 {
                let publish = async_nats::jetstream::message::PublishMessage::build()
                    .payload(frame(&pb2, &republished2, false).into())
                    .message_id(republished2.to_string());
                js.send_publish("dup.node.b", publish)
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        });
        wait_until("six frames handled", || {
            let stats = b.cluster_stats().unwrap();
            stats.delivered + stats.duplicates == 6
        });
        let mut ids = Vec::new();
        while let Some(message) = mb.try_receive().unwrap() {
            assert_eq!(message.message_type(), Some("dup"));
            ids.push(message.id().clone());
        }
        assert_eq!(
            ids,
            [
                once.clone(),
                twice.clone(),
                twice.clone(),
                republished.clone()
            ],
            "exactly once: one copy; at least once: both; republished: stored once"
        );
        assert_eq!(b.cluster_stats().unwrap().duplicates, 2);
        b.shutdown().unwrap();
    });
}

/// The server is SIGKILLed mid-stream and restarted on the same port and store: every
/// message accepted before, during and after is delivered or dead-lettered with its
/// reason; none is lost; under exactly-once none is delivered twice.
fn server_restart(guarantee: DeliveryGuarantee) {
    within(90, move || {
        let mut server = NatsServer::start();
        let a = node(&server, "crash", "a", guarantee);
        let b = node(&server, "crash", "b", guarantee);
        let pa = AgentPid::new();
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");
        let n = 300;
        // The client reconnects with a back-off (up to 4 s between tries) and the
        // consumer resumes after it: a long quiet period is no loss.
        let seen = receive_until_quiet(mb, pa.clone(), n, Duration::from_secs(20));
        // Generous retries: the restart must fit in them.
        let options = DeliveryOptions {
            max_retries: 8,
            retry_delay: Duration::from_millis(200),
            ..DeliveryOptions::default()
        };
        let mut accepted = HashSet::new();
        let mut order = Vec::new();
        for i in 0..n {
            if i == n / 3 {
                server.kill();
            }
            if i == 2 * n / 3 {
                server.restart();
                if guarantee == DeliveryGuarantee::AtMostOnce {
                    // Core NATS keeps nothing: what is published before the receiving
                    // node has resubscribed is gone. Both back first.
                    wait_until("both nodes reconnected", || {
                        a.cluster_stats().unwrap().connected && b.cluster_stats().unwrap().connected
                    });
                }
            }
            let envelope =
                MessageEnvelope::new(pb.clone(), "job".into(), json!({ "n": i }), options.clone())
                    .with_from(pa.clone());
            let id = envelope.id.clone();
            order.push(id.clone());
            match a.send_message(envelope) {
                Ok(()) => {
                    accepted.insert(id);
                }
                Err(e) => panic!("send {i}: {e}"),
            }
            // About a second and a half without a server.
            let down = (n / 3..2 * n / 3).contains(&i);
            thread::sleep(Duration::from_millis(if down { 15 } else { 2 }));
        }
        // Quiesce: everything published or given up on by the sender.
        wait_until("a's publisher settling", || {
            a.cluster_stats().unwrap().queued == 0
        });
        let seen = seen.join().unwrap();
        let dead: HashSet<MessageId> = a
            .dead_letters()
            .into_iter()
            .chain(b.dead_letters())
            .map(|letter| letter.id)
            .collect();
        let t = tally(&accepted, &seen.ids, &dead);
        println!(
            "server restart, {guarantee:?}: {t:?} {:?} {:?}",
            a.cluster_stats(),
            b.cluster_stats()
        );
        assert_eq!(t.accepted, n);
        assert_eq!(t.unexpected, 0, "{t:?}");
        if guarantee == DeliveryGuarantee::AtMostOnce {
            // What the sender could not send is reported (a dead letter on it): only
            // what was on its way when the server died may vanish, as at most once
            // allows. Those were sent just before the kill.
            let lost: Vec<usize> = order
                .iter()
                .enumerate()
                .filter(|(_, id)| !seen.ids.contains(id) && !dead.contains(id))
                .map(|(i, _)| i)
                .collect();
            assert!(
                lost.iter().all(|&i| (n / 3 - 10..n / 3 + 5).contains(&i)),
                "lost outside the moment of the kill: {lost:?} {t:?}"
            );
            assert!(t.dead_lettered > 0, "the outage was reported: {t:?}");
            assert_eq!(t.duplicated, 0, "{t:?}");
        } else {
            assert_eq!(t.lost, 0, "{t:?}");
        }
        if guarantee == DeliveryGuarantee::ExactlyOnce {
            assert_eq!(t.duplicated, 0, "{t:?}");
        }
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn a_server_killed_and_restarted_mid_stream_at_most_once_reports_what_it_could_not_send() {
    server_restart(DeliveryGuarantee::AtMostOnce);
}

#[test]
fn a_server_killed_and_restarted_mid_stream_loses_nothing_at_least_once() {
    server_restart(DeliveryGuarantee::AtLeastOnce);
}

#[test]
fn a_server_killed_and_restarted_mid_stream_delivers_each_id_once_exactly_once() {
    server_restart(DeliveryGuarantee::ExactlyOnce);
}

#[test]
fn refused_remotely_is_redelivered_with_backoff_then_dead_lettered_there() {
    within(60, || {
        let server = NatsServer::start();
        let a = node(&server, "refuse", "a", DeliveryGuarantee::AtLeastOnce);
        // B's mailboxes hold one message, and nobody receives.
        let b = MessageSystem::builder(router_config(DeliveryGuarantee::AtLeastOnce))
            .mailbox_config(MailboxConfig {
                max_messages: 1,
                ..MailboxConfig::default()
            })
            .cluster(config(&server, "refuse", "b"))
            .build()
            .unwrap();
        let pa = AgentPid::new();
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");

        let options = DeliveryOptions {
            max_retries: 2,
            retry_delay: Duration::from_millis(50),
            ..DeliveryOptions::default()
        };
        let mut ids = Vec::new();
        for n in 0..3 {
            let envelope =
                MessageEnvelope::new(pb.clone(), "job".into(), json!({ "n": n }), options.clone())
                    .with_from(pa.clone());
            ids.push(envelope.id.clone());
            a.send_message(envelope).unwrap();
        }
        // The first fills the mailbox; the other two are redelivered twice (50 ms, then
        // 100 ms later) and given up on by B.
        wait_until("two dead letters on b", || {
            b.cluster_stats().unwrap().dead_lettered == 2
        });
        let letters = b.dead_letters();
        assert_eq!(letters.len(), 2);
        for letter in &letters {
            assert_eq!(
                letter.reason,
                DeadLetterReason::RetriesExhausted("mailbox full".into())
            );
            assert_eq!(
                letter.attempts, 3,
                "first delivery + max_retries redeliveries"
            );
            assert_eq!(letter.to, pb);
            assert!(ids.contains(&letter.id));
        }
        let stats = b.cluster_stats().unwrap();
        assert_eq!(stats.delivered, 1, "{stats:?}");
        assert_eq!(stats.redelivery_requests, 4, "{stats:?}");
        assert_eq!(stats.received, 1 + 2 * 3, "{stats:?}");
        let first = mb.try_receive().unwrap().expect("the first one");
        assert!(ids.contains(first.id()));
        assert!(a.dead_letters().is_empty());
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

/// Serves calls on `mailbox` until it closes: `{"double": n}` is answered with
/// `2n`, `{"opaque": true}` with a `u64` (which cannot cross), `{"slow": ms}` after
/// sleeping, anything else is dropped without a reply.
fn serve(mailbox: AgentMailbox) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while let Ok(message) = mailbox.receive() {
            let AgentMessage::Call {
                payload, reply_to, ..
            } = message
            else {
                continue;
            };
            let request = *payload.downcast::<serde_json::Value>().unwrap();
            if let Some(n) = request["double"].as_u64() {
                reply_to.send(Box::new(json!(n * 2))).ok();
            } else if request["opaque"].is_boolean() {
                reply_to.send(Box::new(42u64)).ok();
            } else if let Some(ms) = request["slow"].as_u64() {
                thread::sleep(Duration::from_millis(ms));
                reply_to.send(Box::new(json!("late"))).ok();
            }
        }
    })
}

#[test]
fn a_remote_call_is_answered_with_the_callees_json_reply() {
    within(30, || {
        let server = NatsServer::start();
        let a = node(&server, "call", "a", DeliveryGuarantee::AtLeastOnce);
        let b = node(&server, "call", "b", DeliveryGuarantee::AtLeastOnce);
        let pa = AgentPid::new();
        let (pb, mb) = registered(&b);
        let server_thread = serve(mb);
        sees(&a, &pb, "b");

        let second = Duration::from_secs(2);
        for n in 0..20u64 {
            let answer: serde_json::Value = a
                .call_typed(pa.clone(), &pb, json!({ "double": n }), second)
                .unwrap();
            assert_eq!(answer, json!(n * 2));
        }
        let reply = a
            .call(pa.clone(), &pb, json!({ "double": 21 }), second)
            .unwrap();
        assert_eq!(reply.downcast_ref::<serde_json::Value>(), Some(&json!(42)));

        // A reply that cannot cross, and a callee that drops the call: the caller
        // fails at once, not after its timeout.
        let long = Duration::from_secs(10);
        for request in [json!({ "opaque": true }), json!({ "nothing": 0 })] {
            let started = Instant::now();
            let err = a.call(pa.clone(), &pb, request, long).unwrap_err();
            assert!(matches!(err, MessagingError::DeliveryFailed(..)), "{err}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        // No reply within the call's timeout: MessageTimeout, as for a local call.
        let err = a
            .call(
                pa.clone(),
                &pb,
                json!({ "slow": 600 }),
                Duration::from_millis(200),
            )
            .unwrap_err();
        assert!(matches!(err, MessagingError::MessageTimeout(_)), "{err}");

        let stats = a.cluster_stats().unwrap();
        assert_eq!((stats.calls_sent, stats.calls_failed), (24, 2), "{stats:?}");
        assert_eq!(b.cluster_stats().unwrap().calls_served, 24);
        a.shutdown().unwrap();
        b.shutdown().unwrap();
        server_thread.join().unwrap();
    });
}

#[test]
fn a_remote_call_the_callee_cannot_take_fails_at_once_and_is_dead_lettered_there() {
    within(30, || {
        let server = NatsServer::start();
        let a = node(&server, "call2", "a", DeliveryGuarantee::AtLeastOnce);
        let b = MessageSystem::builder(router_config(DeliveryGuarantee::AtLeastOnce))
            .mailbox_config(MailboxConfig {
                max_messages: 1,
                ..MailboxConfig::default()
            })
            .cluster(config(&server, "call2", "b"))
            .build()
            .unwrap();
        let pa = AgentPid::new();
        let (pb, _mb) = registered(&b);
        sees(&a, &pb, "b");
        b.send_message(job(&pb, &pa, 0)).unwrap(); // fills the mailbox
        let started = Instant::now();
        let err = a
            .call(
                pa.clone(),
                &pb,
                json!({ "double": 1 }),
                Duration::from_secs(10),
            )
            .unwrap_err();
        assert!(matches!(err, MessagingError::DeliveryFailed(..)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let letters = b.dead_letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].reason, DeadLetterReason::MailboxFull);
        assert_eq!(letters[0].to, pb);
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn unregister_removes_the_pid_from_the_other_nodes_view() {
    within(30, || {
        let server = NatsServer::start();
        let a = node(&server, "unreg", "a", DeliveryGuarantee::AtLeastOnce);
        let b = node(&server, "unreg", "b", DeliveryGuarantee::AtLeastOnce);
        let (pb, _mb) = registered(&b);
        sees(&a, &pb, "b");
        b.unregister_agent(&pb).unwrap();
        wait_until("a forgetting the pid", || a.cluster_node_of(&pb).is_none());
        let err = a.send_message(job(&pb, &AgentPid::new(), 0)).unwrap_err();
        assert!(
            matches!(err, MessagingError::AgentNotFound(ref p) if *p == pb),
            "{err}"
        );
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn shutdown_withdraws_every_pid_at_once() {
    within(30, || {
        let server = NatsServer::start();
        let a = node(&server, "leave", "a", DeliveryGuarantee::AtLeastOnce);
        let b = node(&server, "leave", "b", DeliveryGuarantee::AtLeastOnce);
        let pids: Vec<AgentPid> = (0..5).map(|_| registered(&b).0).collect();
        for pid in &pids {
            sees(&a, pid, "b");
        }
        b.shutdown().unwrap();
        wait_until("a forgetting b's pids", || {
            pids.iter().all(|p| a.cluster_node_of(p).is_none())
        });
        a.shutdown().unwrap();
    });
}

#[test]
fn a_node_name_is_refused_while_a_live_node_holds_it() {
    within(30, || {
        let server = NatsServer::start();
        let lease = Duration::from_millis(900);
        let build = || {
            MessageSystem::builder(RouterConfig::default())
                .cluster(config(&server, "names", "b").lease(lease))
                .build()
        };
        let b = build().unwrap();
        let err = build().unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Configuration, "{err}");
        assert!(err.to_string().contains("\"b\" is in use"), "{err}");
        // A clean shutdown frees the name at once...
        b.shutdown().unwrap();
        let b = build().unwrap();
        // ...and so does a crash: the dead holder no longer answers (see
        // a_crashed_node_takes_its_name_back_at_once).
        drop(b);
        build().unwrap().shutdown().unwrap();
    });
}

#[test]
fn a_node_dropped_without_unregistering_stops_resolving_after_its_lease() {
    within(30, || {
        let server = NatsServer::start();
        let lease = Duration::from_millis(800);
        let a = node(&server, "lease", "a", DeliveryGuarantee::AtLeastOnce);
        let b = MessageSystem::builder(router_config(DeliveryGuarantee::AtLeastOnce))
            .cluster(config(&server, "lease", "b").lease(lease))
            .build()
            .unwrap();
        let (pb, _mb) = registered(&b);
        sees(&a, &pb, "b");
        // Heartbeats keep it resolving past one lease.
        thread::sleep(lease + lease / 2);
        assert_eq!(a.cluster_node_of(&pb).as_deref(), Some("b"));

        drop(_mb);
        drop(b); // no unregister, no shutdown: as if the process died
        let dropped = Instant::now();
        wait_until("b's lease lapsing on a", || {
            a.cluster_node_of(&pb).is_none()
        });
        let after = dropped.elapsed();
        assert!(after <= lease + Duration::from_secs(2), "{after:?}");
        let err = a.send_message(job(&pb, &AgentPid::new(), 0)).unwrap_err();
        assert!(matches!(err, MessagingError::AgentNotFound(_)), "{err}");
        a.shutdown().unwrap();
    });
}

#[test]
fn clusters_with_different_prefixes_do_not_see_each_other() {
    within(30, || {
        let server = NatsServer::start();
        // Same node names, other prefixes: separate streams, buckets and subjects.
        let red = node(&server, "red", "a", DeliveryGuarantee::AtLeastOnce);
        let blue = node(&server, "blue", "a", DeliveryGuarantee::AtLeastOnce);
        let blue_b = node(&server, "blue", "b", DeliveryGuarantee::AtLeastOnce);
        let (pb, mb) = registered(&blue_b);
        sees(&blue, &pb, "b");
        assert_eq!(red.cluster_node_of(&pb), None);
        let err = red.send_message(job(&pb, &AgentPid::new(), 1)).unwrap_err();
        assert!(matches!(err, MessagingError::AgentNotFound(_)), "{err}");
        blue.send_message(job(&pb, &AgentPid::new(), 2)).unwrap();
        let got = mb.receive_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got.payload::<serde_json::Value>(), Some(&json!({ "n": 2 })));
        assert!(
            mb.receive_timeout(Duration::from_millis(200)).is_err(),
            "nothing from red"
        );
        for system in [red, blue, blue_b] {
            system.shutdown().unwrap();
        }
    });
}

#[test]
fn garbage_on_our_subjects_is_dead_lettered_with_a_reason() {
    within(30, || {
        let server = NatsServer::start();
        let b = node(&server, "junk", "b", DeliveryGuarantee::AtLeastOnce);
        let url = server.url();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            client
                .publish("junk.direct.b", "\u{0}garbage".into())
                .await
                .unwrap();
            client
                .publish("junk.direct.b", r#"{"v":2,"to":"x","body":{}}"#.into())
                .await
                .unwrap();
            client.flush().await.unwrap();
            let js = async_nats::jetstream::new(client);
            js.publish("junk.node.b", "{not json".into())
                .await
                .unwrap()
                .await
                .unwrap();
            js.publish("junk.node.b", r#"{"v":99}"#.into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
        wait_until("four undecodable frames", || {
            b.cluster_stats().unwrap().undecodable == 4
        });
        let letters = b.dead_letters();
        assert_eq!(letters.len(), 4);
        let reasons: Vec<String> = letters.iter().map(|l| l.reason.to_string()).collect();
        assert_eq!(
            reasons
                .iter()
                .filter(|r| r.contains("undecodable frame"))
                .count(),
            2,
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("wire version 2")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("wire version 99")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().all(|r| r.contains("on subject junk.")),
            "{reasons:?}"
        );

        // The node still works.
        let a = node(&server, "junk", "a", DeliveryGuarantee::AtLeastOnce);
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");
        a.send_message(job(&pb, &AgentPid::new(), 7)).unwrap();
        assert!(mb.receive_timeout(Duration::from_secs(5)).is_ok());
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn an_unreachable_server_is_a_clear_error_within_the_connect_timeout() {
    within(30, || {
        let timeout = Duration::from_millis(1500);
        // Nothing listens: refused at once.
        let url = format!("nats://127.0.0.1:{}", free_port());
        let started = Instant::now();
        let err = MessageSystem::builder(RouterConfig::default())
            .cluster(ClusterConfig::new(url.clone(), "a").connect_timeout(timeout))
            .build()
            .unwrap_err();
        assert!(
            started.elapsed() < timeout + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains(&url), "{err}");

        // A listener that accepts but never speaks: the connect timeout ends it.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("nats://{}", silent.local_addr().unwrap());
        let started = Instant::now();
        let err = MessageSystem::builder(RouterConfig::default())
            .cluster(ClusterConfig::new(url.clone(), "a").connect_timeout(timeout))
            .build()
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= timeout / 2 && took < timeout + Duration::from_secs(1),
            "{took:?}"
        );
        assert!(err.to_string().contains(&url), "{err}");
        assert_eq!(err.category(), ErrorCategory::System);
    });
}

#[test]
fn a_node_authenticates_with_a_password_or_a_token_and_bad_credentials_are_clear() {
    within(30, || {
        let build = |config: ClusterConfig| {
            MessageSystem::builder(RouterConfig::default())
                .cluster(config.connect_timeout(Duration::from_secs(3)))
                .build()
        };
        let server = NatsServer::start_with_config(
            "authorization { user: \"agent\", password: \"s3cret\" }\n",
        );
        let ok = build(config(&server, "auth", "a").user_and_password("agent", "s3cret")).unwrap();
        ok.shutdown().unwrap();
        let started = Instant::now();
        let err =
            build(config(&server, "auth", "b").user_and_password("agent", "wrong")).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains(&server.url()), "{err}");
        assert!(
            !err.to_string().contains("wrong"),
            "no secret in the error: {err}"
        );
        let err = build(config(&server, "auth", "c")).unwrap_err();
        assert!(err.to_string().contains(&server.url()), "{err}");

        let server = NatsServer::start_with_config("authorization { token: \"t0k3n\" }\n");
        let ok = build(config(&server, "auth", "a").token("t0k3n")).unwrap();
        ok.shutdown().unwrap();
        assert!(build(config(&server, "auth", "b").token("nope")).is_err());

        // A credentials file that cannot be read: Configuration, naming the file.
        let err = build(config(&server, "auth", "d").credentials_file("/nonexistent/agent.creds"))
            .unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Configuration, "{err}");
        assert!(
            err.to_string().contains("/nonexistent/agent.creds"),
            "{err}"
        );
    });
}

#[test]
fn a_node_talks_tls_to_a_server_that_requires_it() {
    within(30, || {
        let server = NatsServer::start_with_config(&cluster_support::tls_config());
        let build = |config: ClusterConfig| {
            MessageSystem::builder(RouterConfig::default())
                .cluster(config.connect_timeout(Duration::from_secs(3)))
                .build()
        };
        // Trusting the test authority: connected, and messages cross.
        let trusted =
            |name| config(&server, "tls", name).ca_file(cluster_support::tls_file("ca.pem"));
        let a = build(trusted("a").require_tls(true))
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
        let b = build(trusted("b")).unwrap();
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");
        a.send_message(job(&pb, &AgentPid::new(), 5)).unwrap();
        assert_eq!(numbers(&mb, 1), vec![5]);
        a.shutdown().unwrap();
        b.shutdown().unwrap();

        // Without the authority the server's certificate is not trusted: a clear error
        // naming the server, within the connect timeout.
        let started = Instant::now();
        let err = build(config(&server, "tls", "c")).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains(&server.url()), "{err}");
        // A CA file that cannot be read: an error that names it.
        let err = build(config(&server, "tls", "d").ca_file("/nonexistent/ca.pem")).unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Configuration, "{err}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");

        // require_tls against a server without TLS: refused, not sent in the clear.
        let plain = NatsServer::start();
        let err = build(config(&plain, "tls", "e").require_tls(true)).unwrap_err();
        assert!(err.to_string().contains(&plain.url()), "{err}");
    });
}

#[test]
fn a_bad_cluster_configuration_is_refused_before_connecting() {
    let build = |config: ClusterConfig| {
        MessageSystem::builder(RouterConfig::default())
            .cluster(config)
            .build()
            .unwrap_err()
    };
    let nowhere = "nats://127.0.0.1:1";
    for config in [
        ClusterConfig::new(nowhere, "a.b"),
        ClusterConfig::new(nowhere, ""),
        ClusterConfig::new(nowhere, "a").prefix("x y"),
        ClusterConfig::new(nowhere, "a").connect_timeout(Duration::ZERO),
        ClusterConfig::new(nowhere, "a").lease(Duration::from_millis(10)),
        ClusterConfig::new("", "a"),
    ] {
        let err = build(config.clone());
        assert_eq!(
            err.category(),
            ErrorCategory::Configuration,
            "{config:?}: {err}"
        );
    }
    let err = MessageSystem::builder(RouterConfig {
        retry_interval: Duration::ZERO,
        ..RouterConfig::default()
    })
    .cluster(ClusterConfig::new(nowhere, "a"))
    .build()
    .unwrap_err();
    assert!(err.to_string().contains("retry_interval"), "{err}");
}

#[test]
fn an_oversized_payload_is_a_clear_error() {
    within(30, || {
        let server = NatsServer::start_with_config("max_payload: 4096\n");
        let a = node(&server, "big", "a", DeliveryGuarantee::AtLeastOnce);
        let b = node(&server, "big", "b", DeliveryGuarantee::AtLeastOnce);
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");
        let big = MessageEnvelope::new(
            pb.clone(),
            "big".into(),
            json!("x".repeat(8192)),
            DeliveryOptions::default(),
        );
        let id = big.id.clone();
        let err = a.send_message(big).unwrap_err();
        assert!(matches!(err, MessagingError::InvalidMessage(_)), "{err}");
        assert!(err.to_string().contains("max_payload of 4096"), "{err}");
        let letters = a.dead_letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].id, id);
        // A small one still goes.
        a.send_message(job(&pb, &AgentPid::new(), 1)).unwrap();
        assert!(mb.receive_timeout(Duration::from_secs(5)).is_ok());
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn what_cannot_cross_is_refused_and_dead_lettered() {
    within(30, || {
        let server = NatsServer::start();
        let a = node(&server, "refuse2", "a", DeliveryGuarantee::AtLeastOnce);
        let b = node(&server, "refuse2", "b", DeliveryGuarantee::AtLeastOnce);
        let pa = AgentPid::new();
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");

        // A cast whose payload is not JSON cannot cross.
        let err = a
            .send(&pb, AgentMessage::cast(pa.clone(), 42u64))
            .unwrap_err();
        assert!(matches!(err, MessagingError::InvalidMessage(_)), "{err}");
        assert!(err.to_string().contains("serde_json::Value"), "{err}");
        // Nor a call whose payload is not JSON.
        let err = a
            .call(pa.clone(), &pb, 7u8, Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(err, MessagingError::InvalidMessage(_)), "{err}");
        // Each one handed back to a dead letter, none dropped.
        assert_eq!(a.dead_letters().len(), 2);
        assert!(mb.receive_timeout(Duration::from_millis(300)).is_err());

        for system in [a, b] {
            system.shutdown().unwrap();
        }
    });
}

#[cfg(feature = "tokio")]
mod tokio_flavour {
    use super::*;
    use terraphim_agent_messaging::tokio as tam;

    async fn node(server: &NatsServer, prefix: &str, name: &str) -> tam::MessageSystem {
        tam::MessageSystem::builder(RouterConfig::default())
            .cluster(config(server, prefix, name))
            .connect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn nodes_on_the_current_runtime_exchange_envelopes() {
        common::tokio::within(30, async {
            let server = NatsServer::start();
            let a = node(&server, "tk", "a").await;
            let b = node(&server, "tk", "b").await;
            let pa = AgentPid::new();
            let pb = AgentPid::new();
            a.register_agent(pa.clone()).await.unwrap();
            b.register_agent(pb.clone()).await.unwrap();
            let mb = b.get_mailbox(&pb).await.unwrap();
            while a.cluster_node_of(&pb).is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut sent = Vec::new();
            for n in 0..100 {
                let envelope = job(&pb, &pa, n);
                sent.push(envelope.id.clone());
                a.send_message(envelope).await.unwrap();
            }
            for id in &sent {
                let message = mb.receive().await.unwrap();
                assert_eq!(message.id(), id, "one sender, one priority: in order");
                assert_eq!(message.from(), Some(&pa));
            }
            // A remote call awaited on the current runtime.
            let callee = tokio::spawn(async move {
                if let Ok(AgentMessage::Call {
                    payload, reply_to, ..
                }) = mb.receive().await
                {
                    let n = payload.downcast::<serde_json::Value>().unwrap()["n"]
                        .as_u64()
                        .unwrap();
                    reply_to.send(Box::new(json!(n + 1))).ok();
                }
            });
            let answer: serde_json::Value = a
                .call_typed(pa.clone(), &pb, json!({ "n": 41 }), Duration::from_secs(2))
                .await
                .unwrap();
            assert_eq!(answer, json!(42));
            callee.await.unwrap();
            b.unregister_agent(&pb).await.unwrap();
            while a.cluster_node_of(&pb).is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            a.shutdown().await.unwrap();
            b.shutdown().await.unwrap();
        })
        .await;
    }

    /// The transport's events and metrics, captured on the test thread: a
    /// current-thread runtime runs the nodes' tasks here, where the capture layer's
    /// sink and a local recorder are. A message sent with `require_ack` is never acknowledged:
    /// one redelivery, then a dead letter on the receiving node.
    #[cfg(all(feature = "tracing", feature = "metrics"))]
    #[tokio::test]
    async fn the_transport_is_traced_and_metered() {
        use common::capture::{Capture, SINK};
        use tracing_subscriber::layer::SubscriberExt;

        // The capturing subscriber is the process's global default (events of other
        // threads find no sink and are dropped): a scoped one shares tracing's interest
        // cache with the other tests' threads, which may cache a callsite as
        // uninteresting. Under RUST_LOG, init_tracing may hold the global slot: then
        // scoped, with the cache rebuilt.
        let subscriber = || tracing_subscriber::Registry::default().with(Capture);
        let _scoped = match tracing::subscriber::set_global_default(subscriber()) {
            Ok(()) => None,
            Err(_) => {
                let guard = tracing::subscriber::set_default(subscriber());
                tracing::callsite::rebuild_interest_cache();
                Some(guard)
            }
        };
        SINK.with(|sink| *sink.borrow_mut() = Some(Vec::new()));
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _metered = metrics::set_default_local_recorder(&recorder);

        let server = NatsServer::start();
        let mut rc = router_config(DeliveryGuarantee::AtLeastOnce);
        rc.delivery_config.acknowledgment_timeout = Duration::from_millis(200);
        rc.delivery_config.retry_delay = Duration::from_millis(10);
        rc.delivery_config.max_retries = 1;
        let connect = |name: &'static str| {
            tam::MessageSystem::builder(rc.clone())
                .cluster(config(&server, "obs", name))
                .connect()
        };
        let a = connect("traced-a").await.unwrap();
        let b = connect("traced-b").await.unwrap();
        let worker = AgentPid::new();
        a.register_agent(worker.clone()).await.unwrap();
        let mailbox = a.get_mailbox(&worker).await.unwrap();
        while b.cluster_node_of(&worker).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut envelope = job(&worker, &AgentPid::new(), 1);
        envelope.delivery_options.require_ack = true;
        let id = envelope.id.clone();
        b.send_message(envelope).await.unwrap();
        for _ in 0..2 {
            let got = tokio::time::timeout(Duration::from_secs(5), mailbox.receive()).await;
            assert_eq!(got.unwrap().unwrap().id(), &id);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while a.cluster_stats().unwrap().dead_lettered == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no dead letter");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();

        let events = SINK.with(|sink| sink.borrow_mut().take()).unwrap();
        let cluster: Vec<_> = events
            .iter()
            .filter(|e| e.target == "terraphim_agent_messaging::cluster")
            .collect();
        let named = |message: &str| cluster.iter().filter(|e| e.message == message).count();
        assert_eq!(named("cluster node joined"), 2, "{cluster:#?}");
        assert_eq!(named("cluster node left"), 2, "{cluster:#?}");
        let id_text = id.to_string();
        let redelivery = cluster
            .iter()
            .find(|e| e.message == "redelivery requested")
            .expect("a redelivery event");
        assert_eq!(redelivery.field("message_id"), Some(id_text.as_str()));
        assert_eq!(redelivery.field("reason"), Some("no acknowledgement"));
        assert_eq!(redelivery.field("delivery"), Some("1"));
        let dead = events
            .iter()
            .find(|e| e.message == "dead letter")
            .expect("a dead-letter event");
        assert_eq!(dead.field("message_id"), Some(id_text.as_str()));
        assert!(
            dead.field("reason").unwrap().contains("no acknowledgement"),
            "{dead:?}"
        );

        let text = handle.render();
        let sample = |series: &str| -> f64 {
            text.lines()
                .find(|line| line.starts_with(series))
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        let counter = |name: &str, node: &str| sample(&format!("{name}{{node=\"{node}\"}}"));
        assert_eq!(
            counter("agent_messaging_cluster_published_total", "traced-b"),
            1.0
        );
        assert_eq!(
            counter("agent_messaging_cluster_received_total", "traced-a"),
            2.0
        );
        assert_eq!(
            counter(
                "agent_messaging_cluster_redelivery_requests_total",
                "traced-a"
            ),
            1.0
        );
        assert_eq!(
            counter("agent_messaging_cluster_dead_letters_total", "traced-a"),
            1.0
        );
        assert_eq!(
            sample("agent_messaging_cluster_awaiting_ack{node=\"traced-a\"}"),
            0.0
        );
    }

    #[tokio::test]
    async fn build_refuses_a_cluster_and_names_connect() {
        let err = tam::MessageSystem::builder(RouterConfig::default())
            .cluster(ClusterConfig::new("nats://127.0.0.1:1", "a"))
            .build()
            .unwrap_err();
        assert_eq!(err.category(), ErrorCategory::Configuration);
        assert!(err.to_string().contains("connect().await"), "{err}");
    }
}

// ===== durable mailboxes, restarts, acknowledgements across nodes =====

/// A node whose mailboxes are persistent (`enable_persistence: true`).
fn durable_node(server: &NatsServer, prefix: &str, name: &str, rc: RouterConfig) -> MessageSystem {
    MessageSystem::builder(rc)
        .mailbox_config(MailboxConfig {
            enable_persistence: true,
            ..MailboxConfig::default()
        })
        .cluster(config(server, prefix, name))
        .build()
        .unwrap_or_else(|e| panic!("node {name}: {e}\nserver log:\n{}", server.log()))
}

/// Receives `n` distinct messages (bounded), returning their `n` payload numbers.
fn numbers(mailbox: &AgentMailbox, n: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut ids = HashSet::new();
    while ids.len() < n {
        let message = mailbox
            .receive_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("after {} of {n}: {e}", ids.len()));
        if ids.insert(message.id().clone()) {
            let payload = message.payload::<serde_json::Value>().expect("JSON");
            seen.push(payload["n"].as_u64().unwrap());
        }
    }
    seen.sort_unstable();
    seen
}

#[test]
fn persistence_needs_a_cluster_node_and_at_least_once() {
    let persistent = MailboxConfig {
        enable_persistence: true,
        ..MailboxConfig::default()
    };
    let err = MessageSystem::builder(RouterConfig::default())
        .mailbox_config(persistent.clone())
        .build()
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Configuration, "{err}");
    assert!(err.to_string().contains("needs a cluster node"), "{err}");
    assert!(
        err.to_string().contains("nats"),
        "says how to get it: {err}"
    );
    // Checked before connecting: no server is needed to refuse it.
    let err = MessageSystem::builder(router_config(DeliveryGuarantee::AtMostOnce))
        .mailbox_config(persistent)
        .cluster(ClusterConfig::new(
            format!("nats://127.0.0.1:{}", free_port()),
            "a",
        ))
        .build()
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Configuration, "{err}");
    assert!(err.to_string().contains("AtMostOnce"), "{err}");
}

#[test]
fn a_crashed_node_takes_its_name_back_at_once() {
    within(30, || {
        let server = NatsServer::start();
        let build = || {
            MessageSystem::builder(RouterConfig::default())
                .cluster(config(&server, "crash", "b").lease(Duration::from_secs(60)))
                .build()
        };
        let b = build().unwrap();
        let err = build().unwrap_err();
        assert!(err.to_string().contains("\"b\" is in use"), "{err}");
        // Dropped without shutdown, as a killed process: its lease has a minute to run,
        // but nothing answers on its alive subject any more.
        drop(b);
        let started = Instant::now();
        let b = build().unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        b.shutdown().unwrap();
    });
}

/// Messages sent while a durable node is down wait in the stream and reach its agent
/// once it is back under the same name and registers the same pid: after a clean
/// shutdown and after a crash.
fn durable_across_restart(crash: bool) {
    within(60, move || {
        let server = NatsServer::start();
        let rc = router_config(DeliveryGuarantee::AtLeastOnce);
        let worker = AgentPid::new();
        let a = durable_node(&server, "durable", "a", rc.clone());
        a.register_agent(worker.clone()).unwrap();
        let b = node(&server, "durable", "b", DeliveryGuarantee::AtLeastOnce);
        sees(&b, &worker, "a");
        if crash {
            drop(a);
        } else {
            a.shutdown().unwrap();
        }
        // While a is down: its pid still resolves for at-least-once sends, and each
        // send returns once the stream has the message on file.
        let from = AgentPid::new();
        for n in 0..20 {
            b.send_message(job(&worker, &from, n)).unwrap();
            let stats = b.cluster_stats().unwrap();
            assert_eq!(stats.published, n as u64 + 1, "stored before Ok: {stats:?}");
        }
        // At most once cannot wait for a node that is down: refused once it is known
        // to be down (it left; a crashed node's lease has yet to lapse, and until then
        // an at-most-once message to it is lost, as at most once allows).
        let direct = node(&server, "durable", "c", DeliveryGuarantee::AtMostOnce);
        if !crash {
            sees(&direct, &worker, "a");
            let err = direct.send_message(job(&worker, &from, 99)).unwrap_err();
            assert!(matches!(err, MessagingError::AgentNotFound(_)), "{err}");
        }

        let a = durable_node(&server, "durable", "a", rc);
        a.register_agent(worker.clone()).unwrap();
        let mailbox = a.get_mailbox(&worker).unwrap();
        assert_eq!(numbers(&mailbox, 20), (0..20).collect::<Vec<u64>>());
        assert!(a.dead_letters().is_empty(), "{:?}", a.dead_letters());
        for system in [a, b, direct] {
            system.shutdown().unwrap();
        }
    });
}

#[test]
fn a_durable_node_receives_after_a_clean_restart_what_was_sent_while_it_was_down() {
    durable_across_restart(false);
}

#[test]
fn a_durable_node_receives_after_a_crash_what_was_sent_while_it_was_down() {
    durable_across_restart(true);
}

#[test]
fn a_durable_nodes_own_sends_are_stored_and_unacknowledged_ones_survive_a_crash() {
    within(60, || {
        let server = NatsServer::start();
        let rc = router_config(DeliveryGuarantee::ExactlyOnce);
        let worker = AgentPid::new();
        let a = durable_node(&server, "own", "a", rc.clone());
        a.register_agent(worker.clone()).unwrap();
        let from = AgentPid::new();
        let acked = DeliveryOptions {
            require_ack: true,
            ..DeliveryOptions::default()
        };
        for n in 0..5 {
            let mut envelope = job(&worker, &from, n);
            envelope.delivery_options = acked.clone();
            a.send_message(envelope).unwrap();
        }
        let stats = a.cluster_stats().unwrap();
        assert_eq!(
            stats.published, 5,
            "a local send went through the stream: {stats:?}"
        );
        // The agent takes them but dies before acknowledging them.
        let mailbox = a.get_mailbox(&worker).unwrap();
        assert_eq!(numbers(&mailbox, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(a.cluster_stats().unwrap().awaiting_ack, 5);
        drop(mailbox);
        drop(a);

        // The successor gets them back once the server's ack wait passed.
        let a = durable_node(&server, "own", "a", rc);
        a.register_agent(worker.clone()).unwrap();
        let mailbox = a.get_mailbox(&worker).unwrap();
        let mut again = Vec::new();
        while again.len() < 5 {
            let message = mailbox.receive_timeout(Duration::from_secs(20)).unwrap();
            a.acknowledge(message.id()).unwrap();
            again.push(
                message.payload::<serde_json::Value>().unwrap()["n"]
                    .as_u64()
                    .unwrap(),
            );
        }
        again.sort_unstable();
        assert_eq!(again, vec![0, 1, 2, 3, 4]);
        wait_until("the acks settling", || {
            a.cluster_stats().unwrap().awaiting_ack == 0
        });
        a.shutdown().unwrap();
    });
}

#[test]
fn require_ack_across_nodes_redelivers_until_acknowledged_then_dead_letters() {
    within(60, || {
        let server = NatsServer::start();
        let mut rc = router_config(DeliveryGuarantee::AtLeastOnce);
        rc.delivery_config.acknowledgment_timeout = Duration::from_millis(300);
        rc.delivery_config.retry_delay = Duration::from_millis(20);
        rc.delivery_config.max_retries = 2;
        let a = MessageSystem::builder(rc.clone())
            .cluster(config(&server, "acks", "a"))
            .build()
            .unwrap();
        let b = node(&server, "acks", "b", DeliveryGuarantee::AtLeastOnce);
        let (worker, mailbox) = registered(&a);
        sees(&b, &worker, "a");
        let from = AgentPid::new();
        let options = DeliveryOptions {
            require_ack: true,
            ..DeliveryOptions::default()
        };

        // Acknowledged on its second delivery: seen twice, then settled.
        let mut first = job(&worker, &from, 1);
        first.delivery_options = options.clone();
        let first_id = first.id.clone();
        b.send_message(first).unwrap();
        let one = mailbox.receive_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(one.id(), &first_id);
        let two = mailbox.receive_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(two.id(), &first_id, "redelivered after the ack timeout");
        a.acknowledge(&first_id).unwrap();
        assert!(
            mailbox.receive_timeout(Duration::from_millis(800)).is_err(),
            "settled: not delivered again"
        );
        assert!(a.acknowledge(&first_id).is_err(), "an ack settles once");

        // Never acknowledged: 1 + max_retries deliveries, then a dead letter on a.
        let mut second = job(&worker, &from, 2);
        second.delivery_options = options;
        let second_id = second.id.clone();
        b.send_message(second).unwrap();
        for _ in 0..3 {
            let m = mailbox.receive_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(m.id(), &second_id);
        }
        let mut letters = Vec::new();
        wait_until("the dead letter on a", || {
            letters.extend(a.dead_letters());
            letters.iter().any(|l| l.id == second_id)
        });
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter = &letters[0];
        assert!(
            matches!(&letter.reason, DeadLetterReason::RetriesExhausted(why) if why.contains("no acknowledgement")),
            "{:?}",
            letter.reason
        );
        assert!(mailbox.receive_timeout(Duration::from_millis(500)).is_err());
        assert_eq!(a.cluster_stats().unwrap().awaiting_ack, 0);
        // The sender waits for no ack of its own: it published each message once,
        // keeps nothing pending and gives up on nothing.
        let sender = b.cluster_stats().unwrap();
        assert_eq!(
            (sender.published, sender.publish_retries),
            (2, 0),
            "{sender:?}"
        );
        let ledger = b.delivery_stats();
        assert_eq!((ledger.pending, ledger.in_transit), (0, 0), "{ledger:?}");
        assert!(b.dead_letters().is_empty(), "{:?}", b.dead_letters());
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

/// A `require_ack` message that crossed to another node is acknowledged there; the
/// sender's engine must not wait for that ack itself (it never comes back to it):
/// otherwise the sender redelivers it after its own acknowledgement timeout and then
/// dead-letters a message that was delivered and acknowledged (or does so at shutdown).
#[test]
fn a_require_ack_message_handed_to_another_node_is_not_awaited_by_the_sender() {
    within(30, || {
        let server = NatsServer::start();
        let mut rc = router_config(DeliveryGuarantee::AtLeastOnce);
        rc.delivery_config.acknowledgment_timeout = Duration::from_millis(200);
        rc.delivery_config.retry_delay = Duration::from_millis(20);
        rc.delivery_config.max_retries = 1;
        let a = MessageSystem::builder(rc)
            .cluster(config(&server, "handover", "a"))
            .build()
            .unwrap();
        let b = node(&server, "handover", "b", DeliveryGuarantee::AtLeastOnce);
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");
        let mut envelope = job(&pb, &AgentPid::new(), 1);
        envelope.delivery_options.require_ack = true;
        let id = envelope.id.clone();
        a.send_message(envelope).unwrap();
        let stats = a.delivery_stats();
        assert_eq!(
            (stats.pending, stats.in_transit),
            (0, 0),
            "handed to the transport, settled for the sender: {stats:?}"
        );
        let got = mb.receive_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got.id(), &id);
        b.acknowledge(&id).unwrap();
        // Past a's own timeout and retry: nothing more arrives, nothing is given up.
        assert!(mb.receive_timeout(Duration::from_millis(800)).is_err());
        let letters = a.dead_letters();
        assert!(letters.is_empty(), "{letters:?}");
        a.shutdown().unwrap();
        let letters: Vec<_> = a
            .dead_letters()
            .into_iter()
            .chain(b.dead_letters())
            .collect();
        assert!(letters.is_empty(), "{letters:?}");
        b.shutdown().unwrap();
    });
}

/// A durable node's own `require_ack` message goes through the stream: its agent's
/// `acknowledge` must settle it there, or the stream redelivers a message that was
/// acknowledged.
#[test]
fn a_durable_nodes_own_require_ack_message_is_settled_by_its_agents_acknowledge() {
    within(30, || {
        let server = NatsServer::start();
        let mut rc = router_config(DeliveryGuarantee::AtLeastOnce);
        rc.delivery_config.acknowledgment_timeout = Duration::from_millis(200);
        rc.delivery_config.retry_delay = Duration::from_millis(20);
        let a = durable_node(&server, "ownack", "a", rc);
        let (worker, mailbox) = registered(&a);
        let mut envelope = job(&worker, &AgentPid::new(), 1);
        envelope.delivery_options.require_ack = true;
        let id = envelope.id.clone();
        a.send_message(envelope).unwrap();
        let got = mailbox.receive_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got.id(), &id);
        a.acknowledge(&id).unwrap();
        assert!(
            mailbox.receive_timeout(Duration::from_millis(800)).is_err(),
            "acknowledged: not redelivered"
        );
        assert_eq!(a.cluster_stats().unwrap().awaiting_ack, 0);
        a.shutdown().unwrap();
        let letters = a.dead_letters();
        assert!(letters.is_empty(), "{letters:?}");
    });
}

#[test]
fn the_survivors_remove_a_dead_nodes_entries_from_the_registry() {
    within(30, || {
        let server = NatsServer::start();
        let lease = Duration::from_millis(600);
        let a = MessageSystem::builder(RouterConfig::default())
            .cluster(config(&server, "clean", "a").lease(lease))
            .build()
            .unwrap();
        let b = MessageSystem::builder(RouterConfig::default())
            .cluster(config(&server, "clean", "b").lease(lease))
            .build()
            .unwrap();
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");
        drop(mb);
        drop(b); // killed: nothing deleted by b itself
        wait_until("a removing b's entries", || {
            a.cluster_stats().unwrap().lapsed_nodes_removed >= 1
        });
        // A node that starts now does not see b's pid at all: the entry is gone.
        let c = node(&server, "clean", "c", DeliveryGuarantee::AtLeastOnce);
        assert_eq!(c.cluster_node_of(&pb), None);
        let err = c.send_message(job(&pb, &AgentPid::new(), 0)).unwrap_err();
        assert!(matches!(err, MessagingError::AgentNotFound(_)), "{err}");
        a.shutdown().unwrap();
        c.shutdown().unwrap();
    });
}

/// A send to a group whose pick lives on a durable node returns `Ok` once the stream
/// has the message on file, as a send to that member's pid does.
#[test]
fn a_send_to_a_group_waits_until_a_durable_members_node_stored_it() {
    within(30, || {
        let server = NatsServer::start();
        let rc = router_config(DeliveryGuarantee::AtLeastOnce);
        let b = durable_node(&server, "gstore", "b", rc);
        let (member, mailbox) = registered(&b);
        let a = node(&server, "gstore", "a", DeliveryGuarantee::AtLeastOnce);
        sees(&a, &member, "b");
        let group = a.create_group(LoadBalance::RoundRobin).unwrap();
        a.join_group(&group, &member).unwrap();
        let from = AgentPid::new();
        for n in 0..20 {
            a.send_message(job(&group, &from, n)).unwrap();
            let stats = a.cluster_stats().unwrap();
            assert_eq!(stats.published, n as u64 + 1, "stored before Ok: {stats:?}");
        }
        assert_eq!(numbers(&mailbox, 20), (0..20).collect::<Vec<u64>>());
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn a_group_spans_nodes() {
    within(60, || {
        let server = NatsServer::start();
        let a = node(&server, "groups", "a", DeliveryGuarantee::AtLeastOnce);
        let b = node(&server, "groups", "b", DeliveryGuarantee::AtLeastOnce);
        let (local, local_box) = registered(&a);
        let (remote1, remote1_box) = registered(&b);
        let (remote2, remote2_box) = registered(&b);
        sees(&a, &remote1, "b");
        sees(&a, &remote2, "b");
        let boxes = [&local_box, &remote1_box, &remote2_box];
        let from = AgentPid::new();

        // Round robin: each member, wherever it lives, gets a third.
        let group = a.create_group(LoadBalance::RoundRobin).unwrap();
        for member in [&local, &remote1, &remote2] {
            a.join_group(&group, member).unwrap();
        }
        assert_eq!(
            a.group_members(&group).unwrap(),
            vec![local.clone(), remote1.clone(), remote2.clone()]
        );
        for n in 0..30 {
            a.send_message(job(&group, &from, n)).unwrap();
        }
        let got: Vec<usize> = boxes.iter().map(|b| numbers(b, 10).len()).collect();
        assert_eq!(got, vec![10, 10, 10]);

        // Broadcast: every member gets its own copy.
        let all = a.create_group(LoadBalance::Broadcast).unwrap();
        for member in [&local, &remote1, &remote2] {
            a.join_group(&all, member).unwrap();
        }
        a.send_message(job(&all, &from, 77)).unwrap();
        for mailbox in boxes {
            assert_eq!(numbers(mailbox, 1), vec![77]);
        }

        // Least loaded prefers a local member that can take it.
        let near = a.create_group(LoadBalance::LeastLoaded).unwrap();
        a.join_group(&near, &remote1).unwrap();
        a.join_group(&near, &local).unwrap();
        for n in 0..5 {
            a.send_message(job(&near, &from, n)).unwrap();
        }
        assert_eq!(numbers(&local_box, 5), vec![0, 1, 2, 3, 4]);

        // A pid no node owns cannot join.
        let err = a.join_group(&group, &AgentPid::new()).unwrap_err();
        assert!(matches!(err, MessagingError::AgentNotFound(_)), "{err}");
        for mailbox in boxes {
            assert!(mailbox.receive_timeout(Duration::from_millis(200)).is_err());
        }
        assert!(a.dead_letters().is_empty());
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn a_node_cut_off_from_the_server_is_forgotten_then_comes_back() {
    within(60, || {
        let server = NatsServer::start();
        let proxy = cluster_support::Proxy::start(&server);
        let lease = Duration::from_millis(600);
        let a = MessageSystem::builder(RouterConfig::default())
            .cluster(config(&server, "cut", "a").lease(lease))
            .build()
            .unwrap();
        let b = MessageSystem::builder(RouterConfig::default())
            .cluster(
                ClusterConfig::new(proxy.url(), "b")
                    .prefix("cut")
                    .lease(lease)
                    .connect_timeout(Duration::from_secs(5)),
            )
            .build()
            .unwrap();
        let (pb, mb) = registered(&b);
        sees(&a, &pb, "b");

        // Partitioned: b's lease lapses on a, which forgets b and deletes its entries.
        proxy.cut();
        wait_until("a removing b's entries", || {
            a.cluster_stats().unwrap().lapsed_nodes_removed >= 1
        });
        assert_eq!(a.cluster_node_of(&pb), None);
        let err = a.send_message(job(&pb, &AgentPid::new(), 0)).unwrap_err();
        assert!(matches!(err, MessagingError::AgentNotFound(_)), "{err}");

        // Healed: b reconnects, renews its lease, writes its registration back.
        proxy.heal();
        let back = Instant::now() + Duration::from_secs(30);
        while a.cluster_node_of(&pb).as_deref() != Some("b") {
            assert!(Instant::now() < back, "b never came back\n{}", server.log());
            thread::sleep(Duration::from_millis(20));
        }
        a.send_message(job(&pb, &AgentPid::new(), 1)).unwrap();
        assert_eq!(numbers(&mb, 1), vec![1]);
        a.shutdown().unwrap();
        b.shutdown().unwrap();
    });
}

#[test]
fn a_pid_lives_on_one_node_at_a_time() {
    within(30, || {
        let server = NatsServer::start();
        let lease = Duration::from_millis(600);
        let a = node(&server, "twice", "a", DeliveryGuarantee::AtLeastOnce);
        let b = MessageSystem::builder(RouterConfig::default())
            .cluster(config(&server, "twice", "b").lease(lease))
            .build()
            .unwrap();
        let (pid, mailbox) = registered(&b);
        sees(&a, &pid, "b");
        // Held by a live node: refused, and nothing changes on either node.
        let err = a.register_agent(pid.clone()).unwrap_err();
        assert!(
            matches!(err, MessagingError::DuplicateAgent(ref p) if *p == pid),
            "{err}"
        );
        assert!(a.get_mailbox(&pid).is_none(), "not registered on a");
        assert_eq!(a.cluster_node_of(&pid).as_deref(), Some("b"));
        // Once b is gone (killed, lease lapsed), a may take it.
        drop(mailbox);
        drop(b);
        wait_until("b's lease lapsing on a", || {
            a.cluster_node_of(&pid).is_none()
        });
        a.register_agent(pid.clone()).unwrap();
        assert_eq!(a.cluster_node_of(&pid).as_deref(), Some("a"));
        // And a node registering its own pid again (a restart) is not refused.
        let c = node(&server, "twice", "c", DeliveryGuarantee::AtLeastOnce);
        sees(&c, &pid, "a");
        a.shutdown().unwrap();
        c.shutdown().unwrap();
    });
}
