//! Routed `send_message` + receive with the same JSON envelopes: ours vs the 1.x
//! reference (`terraphim_agent_messaging` 1.19.2 from crates.io).
//!
//! Every contender builds `MessageEnvelope::new(to, "bench", json!({"n": i}), default
//! options).with_from(from)` per message in the producer and receives it in a consumer.
//! Ours and the crossbeam ceiling are `benches/common/contenders.rs` (`routed`,
//! `pre_resolved`, `crossbeam_envelope`), as in the criterion bench's `send_message`
//! group.
//!
//! - ours, routed: producer thread `MessageSystem::send_message(envelope)`, consumer
//!   thread `AgentMailbox::receive` on the agent's mailbox (`get_mailbox`).
//! - ours, pre-resolved: `MessageSystem::sender(&to)` once, then per message
//!   `try_send(envelope.into_message(), envelope.delivery_options.priority)`.
//! - ours, 2 producers: two producer threads `send_message` to one agent, at-least-once
//!   (the default) and exactly-once (every message reserved and committed in the
//!   dedupe window); and at-least-once while a third thread registers and unregisters
//!   an agent in a loop (registration churn: writes to the table the producers read).
//! - 1.x: its `MessageSystem::get_mailbox` returns an unconnected clone (a new channel),
//!   so its Quick Start never receives. As its own `router::tests::test_message_routing`
//!   does, we build `DefaultMessageRouter::new(RouterConfig::default())`, make an
//!   `AgentMailbox` by hand and `register_agent(pid, mailbox.sender())`; the producer task
//!   calls `route_message(envelope).await` (exactly what its `MessageSystem::send_message`
//!   does) and a consumer task `mailbox.receive().await`. Both a 2-worker multi-thread
//!   runtime and a current-thread runtime are run; the faster is reported.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use terraphim_agent_messaging::{
    AgentMailbox, AgentPid, DeliveryConfig, DeliveryGuarantee, MessageSystem, RouterConfig,
};

use crate::contenders;
use crate::harness::{median_of, rate, Better, Results, Sizes};

pub fn ref_envelope(
    from: &reference::AgentPid,
    to: &reference::AgentPid,
    i: usize,
) -> reference::MessageEnvelope {
    reference::MessageEnvelope::new(
        to.clone(),
        "bench".to_string(),
        json!({ "n": i }),
        reference::DeliveryOptions::default(),
    )
    .with_from(from.clone())
}

fn ours(n: usize, pre_resolved: bool) -> f64 {
    let system = MessageSystem::new(RouterConfig::default());
    let (from, to) = (AgentPid::new(), AgentPid::new());
    system.register_agent(to.clone()).expect("register");
    let mailbox = system.get_mailbox(&to).expect("registered");
    let elapsed = if pre_resolved {
        let sender = system.sender(&to).expect("registered");
        contenders::pre_resolved(sender, mailbox, &from, &to, n)
    } else {
        contenders::routed(system.clone(), mailbox, &from, &to, n)
    };
    system.shutdown().expect("shutdown");
    rate(n, elapsed)
}

/// One run of the 1.x reference on `rt`.
pub fn reference_run(rt: &tokio::runtime::Runtime, n: usize) -> f64 {
    use reference::MessageRouter as _;
    rt.block_on(async move {
        let router = Arc::new(reference::DefaultMessageRouter::new(
            reference::RouterConfig::default(),
        ));
        let (from, to) = (reference::AgentPid::new(), reference::AgentPid::new());
        let mailbox = reference::AgentMailbox::new(to.clone(), reference::MailboxConfig::default());
        router
            .register_agent(to.clone(), mailbox.sender())
            .await
            .expect("register");
        let start = Instant::now();
        let producer = {
            let router = router.clone();
            tokio::spawn(async move {
                for i in 0..n {
                    router
                        .route_message(ref_envelope(&from, &to, i))
                        .await
                        .expect("routed");
                }
            })
        };
        let consumer = tokio::spawn(async move {
            for _ in 0..n {
                drop(black_box(mailbox.receive().await.expect("a message")));
            }
        });
        producer.await.expect("producer");
        consumer.await.expect("consumer");
        let r = rate(n, start.elapsed());
        router.shutdown().await.expect("shutdown");
        r
    })
}

/// One run of ours (for `--one`).
pub fn one(n: usize, pre_resolved: bool) -> f64 {
    ours(n, pre_resolved)
}

/// Registrations at most made by the churn thread of one run (a bound on the loop; a
/// run ends when the producers finish).
const MAX_CHURN: usize = 10_000_000;

/// Two producer threads `send_message` to one agent under `guarantee` (each message a
/// fresh id: exactly-once reserves and commits each in the dedupe window); with
/// `churn`, a third thread registers and unregisters another agent in a loop while
/// they send, each a write to the agent table the producers route through. Returns
/// the producers' rate and the churn thread's registrations per second.
fn ours_2p(n: usize, guarantee: DeliveryGuarantee, churn: bool) -> (f64, f64) {
    let config = RouterConfig {
        delivery_config: DeliveryConfig {
            guarantee,
            ..DeliveryConfig::default()
        },
        ..RouterConfig::default()
    };
    let system = MessageSystem::new(config);
    let (from, to) = (AgentPid::new(), AgentPid::new());
    system.register_agent(to.clone()).expect("register");
    let mailbox = system.get_mailbox(&to).expect("registered");
    let done = AtomicBool::new(false);
    let churned = AtomicUsize::new(0);
    let elapsed = std::thread::scope(|s| {
        if churn {
            let (system, done, churned) = (&system, &done, &churned);
            s.spawn(move || {
                let mut k = 0;
                while !done.load(Relaxed) && k < MAX_CHURN {
                    let pid = AgentPid::new();
                    system.register_agent(pid.clone()).expect("register");
                    system.unregister_agent(&pid).expect("unregister");
                    k += 1;
                }
                churned.store(k, Relaxed);
            });
        }
        let elapsed = contenders::run(
            2,
            n,
            system.clone(),
            mailbox,
            |system, i| {
                system
                    .send_message(contenders::envelope(&from, &to, i))
                    .expect("registered agent");
            },
            |rx: &mut AgentMailbox| {
                drop(black_box(rx.receive().expect("a message")));
                1
            },
        );
        done.store(true, Relaxed);
        elapsed
    });
    system.shutdown().expect("shutdown");
    let churn_rate = churned.load(Relaxed) as f64 / elapsed.as_secs_f64();
    (rate(n, elapsed), churn_rate)
}

/// `--one` cases: routed-2p-ours, routed-2p-exactly-once, routed-2p-churn.
pub fn one_2p(case: &str, n: usize) -> String {
    let (guarantee, churn) = match case {
        "routed-2p-ours" => (DeliveryGuarantee::AtLeastOnce, false),
        "routed-2p-exactly-once" => (DeliveryGuarantee::ExactlyOnce, false),
        "routed-2p-churn" => (DeliveryGuarantee::AtLeastOnce, true),
        other => panic!("unknown case {other}"),
    };
    let (msgs, churn) = ours_2p(n, guarantee, churn);
    format!("{msgs:.0} msg/s, {churn:.0} registrations/s")
}

/// crossbeam carrying the same envelopes (no routing, no conversion): the ceiling any
/// `send_message` can reach when the producer builds one JSON envelope per message.
fn crossbeam_envelope(n: usize) -> f64 {
    let (from, to) = (AgentPid::new(), AgentPid::new());
    rate(n, contenders::crossbeam_envelope(&from, &to, n))
}

pub fn bench(sizes: &Sizes, results: &mut Results) {
    let runs = sizes.runs;
    let s = "routed";
    println!(
        "\n== routed send_message + receive, JSON envelopes (ours {} / 1.x {} per run, median of {runs}) ==",
        sizes.n_channel, sizes.n_reference
    );
    results.push(
        s,
        "send_message: ours MessageSystem::send_message",
        median_of(runs, || ours(sizes.n_channel, false)),
        "msg/s",
        Better::Higher,
    );
    results.push(
        s,
        "send_message: ours pre-resolved MailboxSender",
        median_of(runs, || ours(sizes.n_channel, true)),
        "msg/s",
        Better::Higher,
    );
    results.push(
        s,
        "send_message, 2 producers: ours at-least-once (default)",
        median_of(runs, || {
            ours_2p(sizes.n_channel, DeliveryGuarantee::AtLeastOnce, false).0
        }),
        "msg/s",
        Better::Higher,
    );
    results.push(
        s,
        "send_message, 2 producers: ours exactly-once",
        median_of(runs, || {
            ours_2p(sizes.n_channel, DeliveryGuarantee::ExactlyOnce, false).0
        }),
        "msg/s",
        Better::Higher,
    );
    let mut churn = Vec::new();
    let with_churn = median_of(runs, || {
        let (msgs, registrations) =
            ours_2p(sizes.n_channel, DeliveryGuarantee::AtLeastOnce, true);
        churn.push(registrations);
        msgs
    });
    churn.sort_by(f64::total_cmp);
    results.push_note(
        s,
        "send_message, 2 producers, registration churn: ours",
        with_churn,
        "msg/s",
        Better::Higher,
        format!(
            "a third thread registers and unregisters an agent meanwhile: median {} registrations/s",
            crate::harness::fmt_value(churn[churn.len() / 2])
        ),
    );
    results.push(
        s,
        "send_message: crossbeam carrying the envelope (ceiling)",
        median_of(runs, || crossbeam_envelope(sizes.n_channel)),
        "msg/s",
        Better::Higher,
    );
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let m = median_of(runs, || reference_run(&multi, sizes.n_reference));
    drop(multi);
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let c = median_of(runs, || reference_run(&single, sizes.n_reference));
    results.push_note(
        s,
        "send_message: 1.x reference route_message + receive",
        m.max(c),
        "msg/s",
        Better::Higher,
        format!(
            "best of multi-thread {} / current-thread {}",
            crate::harness::fmt_value(m),
            crate::harness::fmt_value(c)
        ),
    );
}
