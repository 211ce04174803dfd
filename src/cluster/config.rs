//! [`ClusterConfig`]: where the server is, who this node is, how it authenticates, and
//! the names it uses on the server.
//!
//! # Validation
//!
//! | field | refused (`Configuration` error at build) |
//! |---|---|
//! | node name | empty, longer than 64, or a character outside `A-Z a-z 0-9 _ -` (it is a subject token, a consumer name and a key) |
//! | prefix | empty, longer than 32, or a character outside `A-Z a-z 0-9 _ -` (it names a stream and a bucket) |
//! | `connect_timeout` | zero, or more than an hour |
//! | `lease` | under 100 ms (heartbeats every third of it), or more than a day |
//! | `credentials_file`, `ca_file` | a file that cannot be read (reported when connecting, naming the file) |

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How a node authenticates to the server (the last one set wins).
#[derive(Clone, Default)]
pub(crate) enum Auth {
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
    CredentialsFile(PathBuf),
}

/// A cluster node's connection to NATS JetStream (cargo feature `nats`).
///
/// `MessageSystem::builder(rc).cluster(ClusterConfig::new("nats://127.0.0.1:4222", "node-a"))`
/// makes the system a node named `node-a`. Every node of one cluster uses the same
/// server (or NATS cluster) and the same [`prefix`](Self::prefix); nodes with another
/// prefix on the same server never see each other.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use terraphim_agent_messaging::ClusterConfig;
///
/// let config = ClusterConfig::new("nats://127.0.0.1:4222", "node-a")
///     .prefix("billing")
///     .user_and_password("agent", "s3cret")
///     .connect_timeout(Duration::from_secs(2))
///     .lease(Duration::from_secs(10));
/// assert_eq!(config.node_name(), "node-a");
/// assert_eq!(config.stream_name(), "billing_msgs");
/// assert_eq!(config.bucket_name(), "billing_registry");
/// assert!(!format!("{config:?}").contains("s3cret")); // secrets are not printed
/// ```
#[derive(Clone)]
pub struct ClusterConfig {
    pub(crate) url: String,
    pub(crate) node: String,
    pub(crate) prefix: String,
    pub(crate) auth: Auth,
    pub(crate) require_tls: bool,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) connect_timeout: Duration,
    pub(crate) lease: Duration,
    /// Whether this node keeps its agents' messages on file (set by the builder from
    /// `MailboxConfig::enable_persistence`).
    pub(crate) durable: bool,
}

impl ClusterConfig {
    /// The default subject and bucket prefix.
    pub const DEFAULT_PREFIX: &'static str = "tam";
    /// The default connect timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default lease: a node that stops renewing it (killed, partitioned) stops
    /// resolving on the other nodes this long after its last renewal.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

    /// A node named `node_name` on the server at `url` (e.g. `nats://127.0.0.1:4222`;
    /// several comma-separated URLs are tried in turn), with the default prefix
    /// (`"tam"`), no authentication, TLS if the server asks for it, a 5 s connect
    /// timeout and a 15 s lease.
    pub fn new(url: impl Into<String>, node_name: impl Into<String>) -> Self {
        ClusterConfig {
            url: url.into(),
            node: node_name.into(),
            prefix: Self::DEFAULT_PREFIX.to_string(),
            auth: Auth::None,
            require_tls: false,
            ca_file: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            lease: Self::DEFAULT_LEASE,
            durable: false,
        }
    }

    /// The prefix of every subject (`{prefix}.node.{node}`), the message stream
    /// (`{prefix}_msgs`) and the registry bucket (`{prefix}_registry`): two clusters
    /// with different prefixes share a server without seeing each other.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Authenticates with a user name and a password.
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.auth = Auth::UserPassword(user.into(), password.into());
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// Authenticates with a `.creds` file (a user JWT and its nkey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// Refuses to talk to the server without TLS.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// Trusts the certificate authorities in this PEM file (for a server whose
    /// certificate is not signed by a public authority); implies TLS.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// How long building the node may take to reach the server and set up its stream,
    /// bucket and consumer before it fails with a clear error (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long after its last renewal a silent node's pids stop resolving on the
    /// other nodes (default 15 s; renewed every third of it).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The server URL(s).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The subject and bucket prefix.
    pub fn prefix_name(&self) -> &str {
        &self.prefix
    }

    /// The JetStream stream that carries at-least-once messages: `{prefix}_msgs`.
    pub fn stream_name(&self) -> String {
        format!("{}_msgs", self.prefix)
    }

    /// The JetStream key-value bucket of pid → node: `{prefix}_registry`.
    pub fn bucket_name(&self) -> String {
        format!("{}_registry", self.prefix)
    }

    /// The subject a node's at-least-once messages are published on:
    /// `{prefix}.node.{node}` (captured by the stream).
    pub fn node_subject(&self, node: &str) -> String {
        format!("{}.node.{node}", self.prefix)
    }

    /// The subject a node's at-most-once messages are published on (core NATS, outside
    /// the stream): `{prefix}.direct.{node}`.
    pub fn direct_subject(&self, node: &str) -> String {
        format!("{}.direct.{node}", self.prefix)
    }

    /// The subject a node answers remote calls on (core request/reply):
    /// `{prefix}.call.{node}`.
    pub fn call_subject(&self, node: &str) -> String {
        format!("{}.call.{node}", self.prefix)
    }

    /// The subject a live node answers on, so that a node starting under its name can
    /// tell a crashed holder from a live one: `{prefix}.alive.{node}`.
    pub(crate) fn alive_subject(&self, node: &str) -> String {
        format!("{}.alive.{node}", self.prefix)
    }

    /// Checks the names and durations (see the module doc).
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_token("node name", &self.node, 64)?;
        check_token("cluster prefix", &self.prefix, 32)?;
        if self.url.trim().is_empty() {
            return Err("the cluster URL is empty (e.g. nats://127.0.0.1:4222)".into());
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(3600) {
            return Err(format!(
                "connect_timeout must be in (0, 1 h], got {:?}",
                self.connect_timeout
            ));
        }
        if self.lease < Duration::from_millis(100) || self.lease > Duration::from_secs(86_400) {
            return Err(format!(
                "the cluster lease must be in [100 ms, 1 day], got {:?}",
                self.lease
            ));
        }
        Ok(())
    }
}

fn check_token(what: &str, value: &str, max: usize) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if value.is_empty() || value.len() > max || !value.chars().all(allowed) {
        return Err(format!(
            "{what} {value:?} must be 1 to {max} characters of A-Z, a-z, 0-9, '_' or '-' \
             (it is used in subjects, stream, consumer and bucket names)"
        ));
    }
    Ok(())
}

impl fmt::Debug for ClusterConfig {
    /// Prints no password, token or credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::None => "none".to_string(),
            Auth::UserPassword(user, _) => format!("user {user:?}"),
            Auth::Token(_) => "token".to_string(),
            Auth::CredentialsFile(path) => format!("credentials file {}", path.display()),
        };
        f.debug_struct("ClusterConfig")
            .field("url", &self.url)
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .field("auth", &auth)
            .field("require_tls", &self.require_tls)
            .field("ca_file", &self.ca_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("lease", &self.lease)
            .field("durable", &self.durable)
            .finish()
    }
}
