//! The seed README's Quick Start on the tokio flavour: two agents, one message.
//!
//! Run with `cargo run --example quickstart` (needs the default `tokio` feature).

#[cfg(feature = "tokio")]
use serde_json::json;
#[cfg(feature = "tokio")]
use terraphim_agent_messaging::tokio::{
    AgentMessage, AgentPid, DeliveryOptions, MessageEnvelope, MessageSystem, RouterConfig,
};

#[cfg(feature = "tokio")]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Create message system
    let config = RouterConfig::default();
    let system = MessageSystem::new(config);

    // Register agents
    let agent1 = AgentPid::new();
    let agent2 = AgentPid::new();

    system.register_agent(agent1.clone()).await?;
    system.register_agent(agent2.clone()).await?;

    // Send message from agent1 to agent2
    let envelope = MessageEnvelope::new(
        agent2.clone(),
        "greeting".to_string(),
        json!({"message": "Hello, Agent2!"}),
        DeliveryOptions::default(),
    )
    .with_from(agent1.clone());

    system.send_message(envelope).await?;

    // Get mailbox and receive message
    if let Some(mailbox) = system.get_mailbox(&agent2).await {
        let message: AgentMessage = mailbox.receive().await?;
        println!("Agent2 received: {:?}", message);
    }

    system.shutdown().await?;
    Ok(())
}

#[cfg(not(feature = "tokio"))]
fn main() {
    eprintln!("this example needs the `tokio` feature (on by default); see sync_quickstart");
}
