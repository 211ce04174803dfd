//! Signals: monitors and exit reasons, links and trapped exits, names, crashes, and
//! group membership seen by monitors. Sync flavour, on a manual clock (nothing here
//! waits for time); the tokio twins at the end.

mod common;

use std::time::Duration;

use common::sync::{manual_system, registered, within};
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeadLetterReason, ErrorCategory, LoadBalance,
    MessageSystem, MessagingError, RouterConfig, SystemInfo,
};

fn system() -> MessageSystem {
    manual_system(RouterConfig::default(), 0).0
}

/// The next `AgentStopped` in `mailbox`: (agent, reason). Fails on anything else.
fn down(mailbox: &AgentMailbox) -> (AgentPid, String) {
    match mailbox.try_receive() {
        Ok(Some(AgentMessage::Info {
            info: SystemInfo::AgentStopped {
                agent_id, reason, ..
            },
            ..
        })) => (agent_id, reason),
        other => panic!("expected AgentStopped, got {other:?}"),
    }
}

fn assert_empty(mailbox: &AgentMailbox) {
    match mailbox.try_receive() {
        Ok(None) => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

// ===== monitors and exit reasons =====

#[test]
fn monitor_fires_once_on_unregister() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    let (target, _target_box) = registered(&system);
    system.monitor(&watcher, &target).unwrap();
    system.unregister_agent(&target).unwrap();
    assert_eq!(down(&inbox), (target.clone(), "normal".to_string()));
    assert_empty(&inbox);
    // Nothing more can fire: the target is gone.
    assert!(system.unregister_agent(&target).is_err());
    assert_empty(&inbox);
}

#[test]
fn each_monitor_fires_once() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    let (other, other_box) = registered(&system);
    let (target, _t) = registered(&system);
    let a = system.monitor(&watcher, &target).unwrap();
    let b = system.monitor(&watcher, &target).unwrap();
    assert_ne!(a, b);
    system.monitor(&other, &target).unwrap();
    system.exit(&target, "boom").unwrap();
    assert_eq!(down(&inbox).1, "boom");
    assert_eq!(down(&inbox).1, "boom");
    assert_empty(&inbox);
    assert_eq!(down(&other_box), (target, "boom".to_string()));
    assert_empty(&other_box);
}

#[test]
fn notice_is_high_priority() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    let (target, _t) = registered(&system);
    system
        .send(
            &watcher,
            AgentMessage::cast(AgentPid::nil(), "queued first"),
        )
        .unwrap();
    system.monitor(&watcher, &target).unwrap();
    system.unregister_agent(&target).unwrap();
    assert_eq!(
        down(&inbox).0,
        target,
        "the notice overtakes Normal traffic"
    );
    assert!(inbox
        .try_receive()
        .unwrap()
        .unwrap()
        .payload::<&str>()
        .is_some());
}

#[test]
fn noproc_at_once() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    let ghost = AgentPid::new();
    let r = system.monitor(&watcher, &ghost).unwrap();
    assert_eq!(down(&inbox), (ghost, "noproc".to_string()));
    assert!(!system.demonitor(r), "a noproc monitor has fired already");
}

#[test]
fn demonitor_before_and_after_stop() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    let (target, _t) = registered(&system);
    let r = system.monitor(&watcher, &target).unwrap();
    assert!(system.demonitor(r));
    assert!(!system.demonitor(r), "twice");
    system.unregister_agent(&target).unwrap();
    assert_empty(&inbox);

    let (target, _t) = registered(&system);
    let r = system.monitor(&watcher, &target).unwrap();
    system.unregister_agent(&target).unwrap();
    assert!(!system.demonitor(r), "fired already");
    assert_eq!(down(&inbox).0, target);
}

#[test]
fn shutdown_reason() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    let (target, _t) = registered(&system);
    system.monitor(&watcher, &target).unwrap();
    system.shutdown().unwrap();
    // The watcher's mailbox closed with the notice queued: it drains first.
    let (agent, reason) = down(&inbox);
    assert_eq!((agent, reason.as_str()), (target, "shutdown"));
    assert!(matches!(
        inbox.try_receive(),
        Err(MessagingError::ChannelClosed(_))
    ));
}

#[test]
fn monitor_held_by_a_stopped_watcher_is_gone() {
    let system = system();
    let (watcher, _w) = registered(&system);
    let (target, _t) = registered(&system);
    let r = system.monitor(&watcher, &target).unwrap();
    system.unregister_agent(&watcher).unwrap();
    assert!(!system.demonitor(r));
    system.unregister_agent(&target).unwrap();
    assert!(
        system.dead_letters().is_empty(),
        "no notice to a dead watcher"
    );
}

#[test]
fn exit_dead_letters_with_its_reason() {
    let system = system();
    let target = common::sync::register(&system);
    system
        .send(&target, AgentMessage::cast(AgentPid::nil(), 1u64))
        .unwrap();
    system.exit(&target, "cancelled").unwrap();
    let letters = system.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].reason,
        DeadLetterReason::AgentStopped("cancelled".into())
    );
}

#[test]
fn bad_monitor_input() {
    let system = system();
    let (a, _a) = registered(&system);
    let e = system.monitor(&a, &a).unwrap_err();
    assert_eq!(e.category(), ErrorCategory::Validation);
    let ghost = AgentPid::new();
    assert!(matches!(
        system.monitor(&ghost, &a),
        Err(MessagingError::AgentNotFound(p)) if p == ghost
    ));
    assert!(matches!(
        system.exit(&ghost, "x"),
        Err(MessagingError::AgentNotFound(_))
    ));
    system.shutdown().unwrap();
    assert!(system.monitor(&a, &ghost).is_err());
}

// ===== links =====

#[test]
fn link_propagates_abnormal_exits() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    let (a, _a) = registered(&system);
    let (b, b_box) = registered(&system);
    system.link(&a, &b).unwrap();
    system.monitor(&watcher, &b).unwrap();
    system.exit(&a, "crashed").unwrap();
    assert_eq!(down(&inbox), (b.clone(), "crashed".to_string()));
    assert!(system.get_mailbox(&b).is_none(), "b stopped with a");
    assert!(matches!(
        b_box.try_receive(),
        Err(MessagingError::ChannelClosed(_))
    ));
}

#[test]
fn normal_exit_does_not_propagate() {
    let system = system();
    let (a, _a) = registered(&system);
    let (b, _b) = registered(&system);
    system.link(&a, &b).unwrap();
    system.unregister_agent(&a).unwrap();
    assert!(system.get_mailbox(&b).is_some());
    // The link is gone with a: b's later exit stops nothing else.
    system.exit(&b, "later").unwrap();
}

#[test]
fn trapping_turns_exits_into_notices() {
    let system = system();
    let (a, _a) = registered(&system);
    let (b, b_box) = registered(&system);
    system.link(&a, &b).unwrap();
    system.trap_exits(&b, true).unwrap();
    system.exit(&a, "crashed").unwrap();
    assert!(system.get_mailbox(&b).is_some(), "b traps: still running");
    assert_eq!(down(&b_box), (a.clone(), "crashed".to_string()));
    // Trapping sees normal exits too.
    let (c, _c) = registered(&system);
    system.link(&c, &b).unwrap();
    system.unregister_agent(&c).unwrap();
    assert_eq!(down(&b_box), (c, "normal".to_string()));
    // Untrapped again, the next link's exit stops it.
    system.trap_exits(&b, false).unwrap();
    let (d, _d) = registered(&system);
    system.link(&d, &b).unwrap();
    system.exit(&d, "again").unwrap();
    assert!(system.get_mailbox(&b).is_none());
}

#[test]
fn link_cycles_terminate() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    let agents: Vec<AgentPid> = (0..5).map(|_| common::sync::register(&system)).collect();
    for i in 0..agents.len() {
        // A ring, plus a chord: every agent is reached twice.
        system
            .link(&agents[i], &agents[(i + 1) % agents.len()])
            .unwrap();
        system
            .link(&agents[i], &agents[(i + 2) % agents.len()])
            .unwrap();
        system.monitor(&watcher, &agents[i]).unwrap();
    }
    within(5, move || {
        system.exit(&agents[0], "ring").unwrap();
        let mut seen: Vec<AgentPid> = (0..5).map(|_| down(&inbox).0).collect();
        assert_empty(&inbox);
        seen.sort();
        let mut expected = agents.clone();
        expected.sort();
        assert_eq!(seen, expected, "each stopped exactly once");
        assert_eq!(system.mailboxes().len(), 1);
    });
}

#[test]
fn unlink_and_bad_link_input() {
    let system = system();
    let (a, _a) = registered(&system);
    let (b, _b) = registered(&system);
    system.link(&a, &b).unwrap();
    system.link(&b, &a).unwrap(); // one link
    system.unlink(&a, &b).unwrap();
    system.exit(&a, "alone").unwrap();
    assert!(system.get_mailbox(&b).is_some());
    assert_eq!(
        system.link(&b, &b).unwrap_err().category(),
        ErrorCategory::Validation
    );
    let ghost = AgentPid::new();
    assert!(matches!(system.link(&b, &ghost), Err(MessagingError::AgentNotFound(p)) if p == ghost));
    assert!(system.unlink(&b, &ghost).is_ok());
    assert!(matches!(
        system.trap_exits(&ghost, true),
        Err(MessagingError::AgentNotFound(_))
    ));
}

// ===== names =====

#[test]
fn names_resolve_and_are_released_on_stop() {
    let system = system();
    let (worker, inbox) = registered(&system);
    system.register_name("worker", &worker).unwrap();
    assert_eq!(system.whereis("worker"), Some(worker.clone()));
    system
        .send_named("worker", AgentMessage::cast(AgentPid::nil(), 7u64))
        .unwrap();
    assert_eq!(
        inbox.try_receive().unwrap().unwrap().payload::<u64>(),
        Some(&7)
    );
    let (other, _o) = registered(&system);
    assert!(matches!(
        system.register_name("worker", &other),
        Err(MessagingError::NameTaken(n)) if n == "worker"
    ));
    system.exit(&worker, "crash").unwrap();
    assert_eq!(system.whereis("worker"), None);
    assert!(matches!(
        system.send_named("worker", AgentMessage::cast(AgentPid::nil(), ())),
        Err(MessagingError::UnknownName(_))
    ));
    // The successor takes the name back.
    let (successor, next_inbox) = registered(&system);
    system.register_name("worker", &successor).unwrap();
    system
        .send_named("worker", AgentMessage::cast(AgentPid::nil(), 8u64))
        .unwrap();
    assert_eq!(
        next_inbox.try_receive().unwrap().unwrap().payload::<u64>(),
        Some(&8)
    );
    assert!(system.unregister_name("worker"));
    assert!(!system.unregister_name("worker"));
}

#[test]
fn call_named_resolves_at_send_time() {
    let system = system();
    let (server, inbox) = registered(&system);
    system.register_name("squarer", &server).unwrap();
    let worker = std::thread::spawn(move || {
        if let Ok(AgentMessage::Call {
            payload, reply_to, ..
        }) = inbox.receive()
        {
            let n = *payload.downcast::<u64>().unwrap();
            reply_to.send(Box::new(n * n)).unwrap();
        }
    });
    let reply = system
        .call_named(AgentPid::new(), "squarer", 9u64, Duration::from_secs(5))
        .unwrap();
    assert_eq!(*reply.downcast::<u64>().unwrap(), 81);
    worker.join().unwrap();
}

#[test]
fn bad_names() {
    let system = system();
    let (pid, _p) = registered(&system);
    for name in [String::new(), "x".repeat(256)] {
        let e = system.register_name(&name, &pid).unwrap_err();
        assert_eq!(e.category(), ErrorCategory::Validation, "{name:?}");
    }
    system.register_name(&"x".repeat(255), &pid).unwrap();
    let ghost = AgentPid::new();
    assert!(matches!(
        system.register_name("ghost", &ghost),
        Err(MessagingError::AgentNotFound(_))
    ));
    let taken = MessagingError::NameTaken("n".into());
    assert_eq!(taken.category(), ErrorCategory::Configuration);
    assert!(taken.is_recoverable(), "the holder may stop");
    let unknown = MessagingError::UnknownName("n".into());
    assert_eq!(unknown.category(), ErrorCategory::NotFound);
}

// ===== crashes =====

#[test]
fn panicking_receiver_stops_its_agent() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    // No name: what is left queued is dead-lettered (a named agent's goes to its
    // successor, below).
    let (worker, mailbox) = registered(&system);
    system.monitor(&watcher, &worker).unwrap();
    system
        .send(&worker, AgentMessage::cast(AgentPid::nil(), "boom"))
        .unwrap();
    system
        .send(&worker, AgentMessage::cast(AgentPid::nil(), "left over"))
        .unwrap();
    let thread = std::thread::spawn(move || {
        let message = mailbox.receive().unwrap();
        let what = message.payload::<&str>().unwrap();
        panic!("handler failed on {what}");
    });
    assert!(thread.join().is_err());
    let (agent, reason) = down(&inbox);
    assert_eq!(agent, worker);
    assert_eq!(reason, "panicked: handler failed on boom");
    assert!(system.get_mailbox(&worker).is_none());
    let letters = system.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].reason,
        DeadLetterReason::AgentStopped("panicked: handler failed on boom".into())
    );
}

#[test]
fn a_handle_dropped_normally_does_not_stop_the_agent() {
    let system = system();
    let (worker, mailbox) = registered(&system);
    std::thread::spawn(move || drop(mailbox)).join().unwrap();
    assert!(system.get_mailbox(&worker).is_some());
}

#[test]
fn a_panic_with_another_handle_alive_does_not_stop_the_agent() {
    let system = system();
    let (worker, mailbox) = registered(&system);
    let spare = mailbox.clone();
    let thread = std::thread::spawn(move || {
        let _mine = mailbox;
        panic!("not the last handle");
    });
    assert!(thread.join().is_err());
    assert!(system.get_mailbox(&worker).is_some());
    drop(spare);
}

// ===== groups seen by monitors =====

#[test]
fn group_membership_is_visible_to_monitors() {
    let system = system();
    let (watcher, inbox) = registered(&system);
    let group = system.create_group(LoadBalance::RoundRobin).unwrap();
    system.monitor(&watcher, &group).unwrap();
    let (member, _m) = registered(&system);
    system.join_group(&group, &member).unwrap();
    system.unregister_agent(&member).unwrap();
    let kinds: Vec<String> = (0..2)
        .map(|_| match inbox.try_receive().unwrap().unwrap() {
            AgentMessage::Info {
                info:
                    SystemInfo::Custom {
                        message_type, data, ..
                    },
                ..
            } => {
                assert_eq!(data["member"], member.to_string());
                assert_eq!(data["group"], group.to_string());
                message_type
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["group_member_joined", "group_member_left"]);
    system.delete_group(&group).unwrap();
    assert_eq!(down(&inbox), (group, "normal".to_string()));
}

// ===== the tokio flavour =====

#[cfg(feature = "tokio")]
mod tokio_flavour {
    use super::*;
    use terraphim_agent_messaging::tokio as tk;

    #[tokio::test]
    async fn monitor_link_and_names() {
        let (system, _clock) = common::tokio::manual_system(RouterConfig::default(), 0);
        let (watcher, inbox) = common::tokio::registered(&system).await;
        let (a, _a) = common::tokio::registered(&system).await;
        let (b, _b) = common::tokio::registered(&system).await;
        system.link(&a, &b).await.unwrap();
        system.monitor(&watcher, &b).await.unwrap();
        system.register_name("b", &b).await.unwrap();
        assert_eq!(system.whereis("b"), Some(b.clone()));
        system.exit(&a, "gone").await.unwrap();
        match inbox.receive().await.unwrap() {
            tk::AgentMessage::Info {
                info:
                    SystemInfo::AgentStopped {
                        agent_id, reason, ..
                    },
                ..
            } => {
                assert_eq!(agent_id, b);
                assert_eq!(reason, "gone");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(system.whereis("b"), None);
        system.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_that_panics_stops_its_agent() {
        let (system, _clock) = common::tokio::manual_system(RouterConfig::default(), 0);
        let (watcher, inbox) = common::tokio::registered(&system).await;
        let (worker, mailbox) = common::tokio::registered(&system).await;
        system.monitor(&watcher, &worker).await.unwrap();
        system
            .send(&worker, tk::AgentMessage::cast(AgentPid::nil(), "boom"))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let message = mailbox.receive().await.unwrap();
            panic!("task failed on {}", message.payload::<&str>().unwrap());
        });
        assert!(task.await.unwrap_err().is_panic());
        match common::tokio::within(5, inbox.receive()).await.unwrap() {
            tk::AgentMessage::Info {
                info: SystemInfo::AgentStopped { reason, .. },
                ..
            } => assert_eq!(reason, "panicked: task failed on boom"),
            other => panic!("{other:?}"),
        }
        system.shutdown().await.unwrap();
    }
}

#[test]
fn a_crashed_named_agents_queue_goes_to_its_successor() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (worker, mailbox) = registered(&system);
    system.register_name("worker", &worker).unwrap();
    for k in 0..4u64 {
        system
            .send_named("worker", AgentMessage::cast(AgentPid::nil(), k))
            .unwrap();
    }
    let thread = std::thread::spawn(move || {
        let first = mailbox.receive().unwrap();
        assert_eq!(first.payload::<u64>(), Some(&0));
        panic!("after the first message");
    });
    assert!(thread.join().is_err());
    assert_eq!(system.whereis("worker"), None);
    // Before a successor exists, a retry finds the name free and waits.
    clock.advance(Duration::from_millis(100));
    system.run_due_timers();
    let (successor, inbox) = registered(&system);
    system.register_name("worker", &successor).unwrap();
    clock.advance(Duration::from_secs(1));
    system.run_due_timers();
    let mut got: Vec<u64> = Vec::new();
    while let Some(m) = inbox.try_receive().unwrap() {
        got.push(*m.payload::<u64>().unwrap());
    }
    got.sort();
    assert_eq!(
        got,
        [1, 2, 3],
        "the crashed agent's queue reached its successor"
    );
    assert!(system.dead_letters().is_empty());
    let stats = system.delivery_stats();
    assert_eq!(stats.pending + stats.in_transit, 0);
}

#[test]
fn a_crashed_agents_queue_without_a_successor_is_dead_lettered() {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (worker, mailbox) = registered(&system);
    system.register_name("lonely", &worker).unwrap();
    system
        .send(&worker, AgentMessage::cast(AgentPid::nil(), 1u64))
        .unwrap();
    let thread = std::thread::spawn(move || {
        let _keep = mailbox;
        panic!("before receiving");
    });
    assert!(thread.join().is_err());
    for _ in 0..10 {
        clock.advance(Duration::from_secs(1));
        system.run_due_timers();
    }
    let letters = system.dead_letters();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.to_string().contains("lonely"),
        "{}",
        letters[0].reason
    );
}
