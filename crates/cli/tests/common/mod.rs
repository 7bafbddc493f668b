//! Real `wimse` processes for integration tests: a server and agents in a temp dir, each
//! killed when dropped, so that no test leaves a process behind.
#![allow(dead_code, reason = "each test file uses its own part of the harness")]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use wimse_core::TrustDomain;
use wimse_core::bundle::TrustBundle;

/// The binary under test.
pub const WIMSE: &str = env!("CARGO_BIN_EXE_wimse");

/// The trust domain of test servers.
pub const TRUST_DOMAIN: &str = "test.example";

/// Where [`free_port`] looks: below Linux's ephemeral range (32768 and up), from which
/// the kernel hands out ports to `bind(":0")` and outgoing connections. A port taken from
/// that range and bound a moment later by a `wimse` process could meanwhile have gone to
/// another test's listener, which would then answer in its stead.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port nobody listens on right now, and that no other call in this test process has
/// returned.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORTS.end - PORTS.start);
    // Each test process starts elsewhere in the range.
    let offset = std::process::id() % span;
    loop {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(step < span, "no free port left in {PORTS:?}");
        let port = PORTS.start + u16::try_from((offset + step) % span).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits up to `within` for `ready`, panicking with `what()` otherwise.
pub fn wait_for(within: Duration, mut ready: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends SIGTERM to `child` and waits for it to exit; returns whether it exited cleanly.
pub fn terminate(child: &mut Child) -> bool {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A `wimse server run` in a directory.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its TLS listener.
    pub addr: SocketAddr,
    /// Its trust domain.
    pub trust_domain: String,
}

impl Server {
    /// Starts a server on a free port with extra arguments.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(dir, free_port(), extra)
    }

    /// Starts a server on `port`.
    pub fn start_at(dir: &Path, port: u16, extra: &[&str]) -> Self {
        Self::start_for(TRUST_DOMAIN, dir, port, extra)
    }

    /// Starts a server of `trust_domain` on `port`.
    pub fn start_for(trust_domain: &str, dir: &Path, port: u16, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let child = Command::new(WIMSE)
            .args(["server", "run", "--trust-domain", trust_domain, "--bind"])
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            dir: dir.to_owned(),
            addr,
            trust_domain: trust_domain.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(server.socket().exists() && TcpStream::connect(addr).is_ok()) {
            let exited = server.child.try_wait().unwrap();
            assert!(exited.is_none(), "server exited: {}", server.log());
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        server
    }

    /// The admin socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("server.sock")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Runs an admin command.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(WIMSE)
            .args(args)
            .arg("--admin-socket")
            .arg(self.socket())
            .output()
            .unwrap()
    }

    /// Runs an admin command that must succeed; its stdout.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs an admin command that must fail with one line on stderr; that line.
    pub fn admin_err(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one line of error: {stderr}");
        stderr
    }

    /// Makes this server's prepared key of `kind` sign at once (`localauthority activate
    /// --force`); the command's output.
    pub fn activate_now(&self, kind: &str) -> String {
        self.admin_ok(&[
            "server",
            "localauthority",
            "activate",
            "--kind",
            kind,
            "--force",
        ])
    }

    /// The published bundle.
    pub fn bundle(&self) -> TrustBundle {
        let json = self.admin_ok(&["server", "bundle", "show", "--format", "spiffe"]);
        TrustBundle::from_spiffe_json(
            TrustDomain::new(&self.trust_domain).unwrap(),
            json.as_bytes(),
        )
        .unwrap()
    }

    /// Writes the X.509 roots as PEM (an agent's bootstrap bundle) into `path`.
    pub fn write_bundle_pem(&self, path: &Path) {
        let pem = self.admin_ok(&["server", "bundle", "show", "--format", "pem"]);
        std::fs::write(path, pem).unwrap();
    }

    /// A fresh join token and the agent ID it yields.
    pub fn join_token(&self) -> (String, String) {
        let out = self.admin_ok(&["server", "token", "generate", "--ttl", "600"]);
        let mut lines = out.lines();
        let token = lines.next().unwrap().split_whitespace().last().unwrap();
        let agent = lines.next().unwrap().split_whitespace().last().unwrap();
        (token.to_owned(), agent.to_owned())
    }

    /// Creates an entry; returns its ID.
    pub fn create_entry(
        &self,
        spiffe_id: &str,
        parent: &str,
        selectors: &[&str],
        extra: &[&str],
    ) -> String {
        let mut args = vec![
            "server",
            "entry",
            "create",
            "--spiffe-id",
            spiffe_id,
            "--parent-id",
            parent,
        ];
        for s in selectors {
            args.extend(["--selector", s]);
        }
        args.extend(extra);
        let out = self.admin_ok(&args);
        out.lines()
            .find(|l| l.starts_with("Entry ID"))
            .and_then(|l| l.split_whitespace().last())
            .unwrap()
            .to_owned()
    }

    /// This server trusts `other`'s trust domain: the operator copies `other`'s bundle
    /// once (into `dir`), and from then on this server fetches it from `other`'s bundle
    /// endpoint (`https_spiffe`).
    pub fn federate_with(&self, other: &Server, dir: &Path) {
        let bundle = dir.join(format!("{}-bundle.json", other.trust_domain));
        let json = other.admin_ok(&["server", "bundle", "show", "--format", "spiffe"]);
        std::fs::write(&bundle, json).unwrap();
        self.admin_ok(&[
            "server",
            "federation",
            "create",
            "--trust-domain",
            &other.trust_domain,
            "--bundle-endpoint-url",
            &format!("https://{}/.well-known/spiffe-bundle", other.addr),
            "--profile",
            "https_spiffe",
            "--endpoint-spiffe-id",
            &format!("spiffe://{}/wimse/server", other.trust_domain),
            "--trust-bundle",
            bundle.to_str().unwrap(),
        ]);
    }

    /// SIGTERM, a clean exit, and no admin socket left behind.
    pub fn stop(mut self) {
        assert!(
            terminate(&mut self.child),
            "server did not stop cleanly: {}",
            self.log()
        );
        assert!(!self.socket().exists(), "admin socket left behind");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `wimse agent run` attested to a server.
pub struct Agent {
    /// The process.
    pub child: Child,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its Workload API socket.
    pub socket: PathBuf,
}

impl Agent {
    /// Starts an agent with a join token (or other attestation given in `extra`).
    pub fn start(dir: &Path, server: &Server, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let bundle = dir.join("bootstrap.pem");
        if !bundle.exists() {
            server.write_bundle_pem(&bundle);
        }
        let socket = dir.join("agent.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .unwrap();
        let child = Command::new(WIMSE)
            .args(["agent", "run", "--server-address"])
            .arg(server.addr.to_string())
            .arg("--trust-bundle")
            .arg(&bundle)
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut agent = Agent {
            child,
            dir: dir.to_owned(),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !agent.socket.exists() {
            let exited = agent.child.try_wait().unwrap();
            assert!(exited.is_none(), "agent exited: {}", agent.log());
            assert!(
                Instant::now() < deadline,
                "agent did not start: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        agent
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The Workload API endpoint as SPIFFE clients take it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `wimse agent ...` against this agent's socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(WIMSE)
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .unwrap()
    }

    /// Runs `wimse agent exec --socket <socket> -- <command>`.
    pub fn exec(&self, command: &[&str]) -> Output {
        Command::new(WIMSE)
            .args(["agent", "exec", "--socket"])
            .arg(&self.socket)
            .arg("--")
            .args(command)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .unwrap()
    }

    /// SIGTERM, and a clean exit.
    pub fn stop(mut self) {
        assert!(
            terminate(&mut self.child),
            "agent did not stop cleanly: {}",
            self.log()
        );
        assert!(!self.socket.exists(), "agent socket left behind");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This process's uid, as an agent's `unix:uid` selector names it.
pub fn my_uid_selector() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap();
    format!("unix:uid:{uid}")
}

/// A CA for x509pop node certificates and one node certificate, made in the test.
pub fn x509pop_ca_and_node() -> (String, Vec<Vec<u8>>, wimse_core::jose::SigningKey) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node ca");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let node_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut node = rcgen::CertificateParams::new(vec!["node-1.test.example".into()]).unwrap();
    node.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let node_cert = node.signed_by(&node_key, &issuer).unwrap();
    (
        ca_cert.pem(),
        vec![node_cert.der().to_vec()],
        wimse_core::jose::SigningKey::from_pkcs8_der(&node_key.serialize_der()).unwrap(),
    )
}

/// One HTTP/1.1 request over a fresh connection; (status, body).
pub fn http(port: u16, request_line: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let (status, _, body) = http_full(port, request_line, headers, body);
    (status, body)
}

/// One HTTP/1.1 request over a fresh connection; (status, header section, body).
pub fn http_full(
    port: u16,
    request_line: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut text = format!("{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(text, "{k}: {v}\r\n");
    }
    let _ = write!(text, "Content-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(text.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A `wimse proxy` or `wimse gateway` process, killed on drop.
pub struct Proxy {
    child: Child,
    log: PathBuf,
}

impl Proxy {
    /// Starts `wimse ARGS`, logging to `DIR/NAME.log`, and waits until `port` accepts.
    pub fn start(dir: &Path, name: &str, args: &[&str], port: u16) -> Self {
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(WIMSE)
            .args(args)
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Proxy { child, log };
        let log = proxy.log.clone();
        let read = move || std::fs::read_to_string(&log).unwrap_or_default();
        let child = &mut proxy.child;
        wait_for(
            Duration::from_secs(60),
            || {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "{name} exited: {}",
                    read()
                );
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
            || format!("{name} did not start: {}", read()),
        );
        proxy
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; whether it exited cleanly.
    pub fn stop(mut self) -> bool {
        terminate(&mut self.child)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `name`'s line in a command's output (`Name : value`).
pub fn line_value<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no `{name}` in {out}"))
        .trim()
}
