//! Signal models: a monitor set up while its target stops (exactly one notice, the
//! stop's or `noproc`), and a demonitor racing the stop (the notice comes iff the
//! demonitor found the monitor fired).

use terraphim_agent_messaging::{
    AgentMessage, AgentPid, MessageSystem, RouterConfig, SystemInfo, TimerDriver,
};

use crate::{model, spawn};

fn system() -> MessageSystem {
    MessageSystem::builder(RouterConfig::default())
        .clock(std::sync::Arc::new(
            terraphim_agent_messaging::ManualClock::new(),
        ))
        .timer_driver(TimerDriver::Manual)
        .build()
        .expect("valid configuration")
}

/// The reasons of every `AgentStopped` about `target` queued for `watcher`.
fn notices(system: &MessageSystem, watcher: &AgentPid, target: &AgentPid) -> Vec<String> {
    let mailbox = system
        .get_mailbox(watcher)
        .expect("the watcher is registered");
    let mut reasons = Vec::new();
    while let Ok(Some(message)) = mailbox.try_receive() {
        match message {
            AgentMessage::Info {
                info:
                    SystemInfo::AgentStopped {
                        agent_id, reason, ..
                    },
                ..
            } if &agent_id == target => reasons.push(reason),
            other => panic!("unexpected {other:?}"),
        }
    }
    reasons
}

#[test]
fn monitor_vs_stop() {
    model(|| {
        let system = system();
        let (watcher, target) = (AgentPid::new(), AgentPid::new());
        system.register_agent(watcher.clone()).unwrap();
        system.register_agent(target.clone()).unwrap();
        let monitoring = {
            let (system, watcher, target) = (system.clone(), watcher.clone(), target.clone());
            spawn(move || system.monitor(&watcher, &target).unwrap())
        };
        let stopping = {
            let (system, target) = (system.clone(), target.clone());
            spawn(move || system.unregister_agent(&target).unwrap())
        };
        let r = monitoring.join().unwrap();
        stopping.join().unwrap();
        let reasons = notices(&system, &watcher, &target);
        assert_eq!(reasons.len(), 1, "exactly one notice: {reasons:?}");
        assert!(
            reasons[0] == "normal" || reasons[0] == "noproc",
            "{reasons:?}"
        );
        assert!(!system.demonitor(r), "a fired monitor is gone");
        system.shutdown().unwrap();
    });
}

#[test]
fn demonitor_vs_stop() {
    model(|| {
        let system = system();
        let (watcher, target) = (AgentPid::new(), AgentPid::new());
        system.register_agent(watcher.clone()).unwrap();
        system.register_agent(target.clone()).unwrap();
        let r = system.monitor(&watcher, &target).unwrap();
        let demonitoring = {
            let system = system.clone();
            spawn(move || system.demonitor(r))
        };
        let stopping = {
            let (system, target) = (system.clone(), target.clone());
            spawn(move || system.unregister_agent(&target).unwrap())
        };
        let removed = demonitoring.join().unwrap();
        stopping.join().unwrap();
        let reasons = notices(&system, &watcher, &target);
        assert_eq!(
            reasons.len(),
            usize::from(!removed),
            "{removed} {reasons:?}"
        );
        system.shutdown().unwrap();
    });
}
