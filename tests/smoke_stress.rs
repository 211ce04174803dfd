use std::thread;
use terraphim_agent_messaging::*;

#[test]
fn two_producers_exactly_once_fifo() {
    const N: u64 = 200_000;
    let mb = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let tx = mb.sender();
            thread::spawn(move || {
                for i in 0..N {
                    let pr = if i % 3 == 0 { MessagePriority::High } else { MessagePriority::Normal };
                    tx.try_send(AgentMessage::cast(AgentPid::nil(), (p, i, pr)), pr).unwrap();
                }
            })
        })
        .collect();
    let mut last = [[None::<u64>; 4]; 2];
    let mut count = 0;
    while count < 2 * N {
        let m = mb.receive().unwrap();
        let &(p, i, pr) = m.payload::<(u64, u64, MessagePriority)>().unwrap();
        let slot = &mut last[p as usize][pr.index()];
        assert!(slot.map_or(true, |l| l < i), "fifo violated");
        *slot = Some(i);
        count += 1;
    }
    for p in producers { p.join().unwrap(); }
    assert!(mb.try_receive().unwrap().is_none());
    let s = mb.stats();
    assert_eq!(s.total_messages_received, 2 * N);
    assert_eq!(s.total_messages_processed, 2 * N);
}
