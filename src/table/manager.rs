//! [`MailboxManager`]: mailboxes by pid, over the agent table.

use std::fmt;

use super::{AgentTable, InsertError};
use crate::dead_letter::DeadLetters;
use crate::error::{MessagingError, MessagingResult};
use crate::mailbox::handle::{stats_of, AgentMailbox, MailboxSender};
use crate::mailbox::shared::{Settings, Shared};
use crate::mailbox::{MailboxConfig, MailboxStats};
use crate::message::AgentPid;
use crate::sync::Arc;

/// Creates, finds and removes agents' mailboxes.
///
/// `MessageSystem` owns one and routes into the same mailboxes; it can also be used on
/// its own.
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::{AgentMessage, AgentPid, MailboxConfig, MailboxManager};
///
/// let manager = MailboxManager::new(MailboxConfig::default());
/// let pid = AgentPid::new();
/// let sender = manager.create_mailbox(pid.clone())?;
/// sender.send(AgentMessage::cast(AgentPid::new(), 1u64))?;
/// let mailbox = manager.get_mailbox(&pid).unwrap();
/// assert_eq!(mailbox.receive()?.payload::<u64>(), Some(&1));
/// manager.remove_mailbox(&pid)?;
/// assert!(manager.get_mailbox(&pid).is_none());
/// # Ok::<(), terraphim_agent_messaging::MessagingError>(())
/// ```
pub struct MailboxManager {
    table: Arc<AgentTable>,
    settings: Arc<Settings>,
}

impl MailboxManager {
    /// A manager whose mailboxes use `default_config`.
    pub fn new(default_config: MailboxConfig) -> Self {
        let settings = Settings::new(
            default_config,
            None,
            Arc::new(DeadLetters::default()),
            false,
        );
        Self::with_parts(Arc::new(AgentTable::new()), Arc::new(settings))
    }

    pub(crate) fn with_parts(table: Arc<AgentTable>, settings: Arc<Settings>) -> Self {
        MailboxManager { table, settings }
    }

    pub(crate) fn table(&self) -> &Arc<AgentTable> {
        &self.table
    }

    /// Creates `agent_id`'s mailbox and returns a sender to it.
    pub fn create_mailbox(&self, agent_id: AgentPid) -> MessagingResult<MailboxSender> {
        if let Some(e) = &self.settings.config_error {
            return Err(MessagingError::Configuration(e.clone()));
        }
        let shared = Arc::new(Shared::new(agent_id.clone(), self.settings.clone(), false));
        match self.table.insert(shared.clone()) {
            Ok(_) => Ok(MailboxSender::from_shared(shared)),
            Err(InsertError::Duplicate) => Err(MessagingError::DuplicateAgent(agent_id)),
            Err(InsertError::Full) => Err(MessagingError::System(
                "agent table full (u32::MAX agents)".into(),
            )),
        }
    }

    /// Makes the mailbox behind `sender` reachable by its pid here (a mailbox made
    /// elsewhere, e.g. by `AgentMailbox::new`).
    pub(crate) fn adopt(&self, sender: &MailboxSender) -> MessagingResult<()> {
        let pid = sender.agent_id().clone();
        match self.table.insert(sender.shared().clone()) {
            Ok(_) => Ok(()),
            Err(InsertError::Duplicate) => Err(MessagingError::DuplicateAgent(pid)),
            Err(InsertError::Full) => Err(MessagingError::System(
                "agent table full (u32::MAX agents)".into(),
            )),
        }
    }

    /// A sender to `agent_id`'s mailbox.
    pub fn get_mailbox_sender(&self, agent_id: &AgentPid) -> Option<MailboxSender> {
        self.table.get(agent_id).map(MailboxSender::from_shared)
    }

    /// A handle to `agent_id`'s mailbox (the same queue senders deliver into).
    pub fn get_mailbox(&self, agent_id: &AgentPid) -> Option<AgentMailbox> {
        self.table.get(agent_id).map(AgentMailbox::from_shared)
    }

    /// Removes and closes `agent_id`'s mailbox. A receiver still holding a handle drains
    /// what is queued; with none left, the messages go to the dead letters.
    pub fn remove_mailbox(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        let shared = self
            .table
            .remove_agent(agent_id)
            .ok_or_else(|| MessagingError::AgentNotFound(agent_id.clone()))?;
        shared.close();
        Ok(())
    }

    /// Every agent with a mailbox.
    pub fn list_agents(&self) -> Vec<AgentPid> {
        self.table.pids()
    }

    /// How many mailboxes exist.
    pub fn len(&self) -> usize {
        self.table.agents()
    }

    /// Whether there are no mailboxes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Statistics of every mailbox.
    pub fn get_all_stats(&self) -> Vec<MailboxStats> {
        let mut out = Vec::with_capacity(self.table.agents());
        self.table.for_each(|shared| out.push(stats_of(shared)));
        out
    }

    /// Removes and closes every mailbox.
    pub fn close_all(&self) {
        self.table.close_all();
    }

    /// Takes the dead letters of this manager's mailboxes, oldest first. The manager
    /// keeps the newest [`DEFAULT_DEAD_LETTER_CAPACITY`](crate::DEFAULT_DEAD_LETTER_CAPACITY)
    /// (a `MessageSystem`'s manager: its builder's `dead_letter_capacity`).
    pub fn dead_letters(&self) -> Vec<crate::DeadLetter> {
        self.settings.dead_letters.drain()
    }

    /// The counters of this manager's dead-letter store, dropped letters included.
    pub fn dead_letter_stats(&self) -> crate::DeadLetterStats {
        self.settings.dead_letters.stats()
    }
}

impl fmt::Debug for MailboxManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxManager")
            .field("mailboxes", &self.table.agents())
            .finish()
    }
}
