//! What the replica tests need besides the harness: a private `redis-server` (loopback,
//! its own temp dir, AOF on so a restart keeps the tokens, plain or TLS, always with a
//! password) and relay processes started from one config with a `[state]` table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

pub const REDIS_PASSWORD: &str = "redis-pass-Zq81-never-logged";

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// Waits until something accepts TCP connections on `addr`.
async fn wait_listening(addr: SocketAddr, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not start listening on {addr}");
}

/// A private Redis; killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// (cert, key, ca) for TLS.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl RedisServer {
    pub async fn start(dir: &Path, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> RedisServer {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            tls,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .args(["--requirepass", REDIS_PASSWORD])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match &self.tls {
            None => {
                command.arg("--port").arg(self.port.to_string());
            }
            Some((cert, key, ca)) => {
                command
                    .args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        self.child = Some(
            command
                .spawn()
                .expect("redis-server (apt-get install redis-server)"),
        );
        wait_listening(
            format!("127.0.0.1:{}", self.port).parse().unwrap(),
            "redis-server",
        )
        .await;
    }

    /// SIGKILL: what a crashed Redis or a lost node looks like.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (the AOF brings the data back).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One relay process; killed when dropped. Its stderr goes to `log`.
pub struct Replica {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Replica {
    pub async fn start(config: &Path, log: PathBuf, admin: SocketAddr) -> Replica {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_smtp-oauth-relay"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", &addr.to_string()])
            .env_remove("SMTP_OAUTH_RELAY_STORE_KEY")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let replica = Replica {
            child,
            addr,
            admin,
            log,
        };
        wait_listening(addr, "relay").await;
        replica
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/readyz` of this replica.
    pub async fn readyz(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
            .await
            .unwrap()
            .unwrap();
        text
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes one config per replica (the harness config plus `state` and an admin
/// listener) and starts `count` relays from them.
pub async fn start_replicas(env: &Env, state: &str, count: usize) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for i in 0..count {
        let admin_port = free_port();
        let text = format!(
            "{}\n[state]\n{state}\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n",
            env.config_text
        );
        let config = env.path(&format!("replica{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
        replicas.push(Replica::start(&config, env.path(&format!("replica{i}.log")), admin).await);
    }
    replicas
}

/// Logs in as the scanner user (asset `support`) on `addr`.
pub async fn scanner_session(addr: SocketAddr) -> Client {
    let mut client = Client::connect(addr).await;
    client.ehlo().await;
    client
        .auth_plain(SCANNER.0, SCANNER.1)
        .await
        .expect_code(235);
    client
}

/// The code of the first refused step of one message (250 when it went through).
pub async fn send_one(client: &mut Client, subject: &str) -> u16 {
    let reply = client.cmd(&format!("MAIL FROM:<{SUPPORT_EMAIL}>")).await;
    if reply.code != 250 {
        return reply.code;
    }
    client.rcpt_to("dest@example.net", 250).await;
    client.cmd("DATA").await.expect_code(354);
    client.write(&message(subject)).await;
    client.write(b".\r\n").await;
    client.read_reply().await.code
}

/// The password file every plain-Redis replica test writes (mode 0600) into its env.
pub fn redis_password_file() -> (String, String) {
    ("redis.pass".to_string(), format!("{REDIS_PASSWORD}\n"))
}

/// `[state]` lines for a plain `redis` on loopback, with the password from the env's
/// `redis.pass` ([`redis_password_file`]).
pub fn plain_redis_state(env: &Env, redis: &RedisServer) -> String {
    format!(
        "backend = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\npassword_file = \"{}\"",
        redis.port,
        env.path("redis.pass").display()
    )
}
