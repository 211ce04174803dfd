//! The seed README's Quick Start on the sync core: no async runtime, the same names
//! without `.await`.
//!
//! Run with `cargo run --example sync_quickstart` (it also builds with
//! `--no-default-features`).

use serde_json::json;
use terraphim_agent_messaging::{
    AgentMessage, AgentPid, DeliveryOptions, MessageEnvelope, MessageSystem, RouterConfig,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Create message system
    let config = RouterConfig::default();
    let system = MessageSystem::new(config);

    // Register agents
    let agent1 = AgentPid::new();
    let agent2 = AgentPid::new();

    system.register_agent(agent1.clone())?;
    system.register_agent(agent2.clone())?;

    // Send message from agent1 to agent2
    let envelope = MessageEnvelope::new(
        agent2.clone(),
        "greeting".to_string(),
        json!({"message": "Hello, Agent2!"}),
        DeliveryOptions::default(),
    )
    .with_from(agent1.clone());

    system.send_message(envelope)?;

    // Get mailbox and receive message (blocks this thread until it arrives)
    if let Some(mailbox) = system.get_mailbox(&agent2) {
        let message: AgentMessage = mailbox.receive()?;
        println!("Agent2 received: {:?}", message);
    }

    system.shutdown()?;
    Ok(())
}
