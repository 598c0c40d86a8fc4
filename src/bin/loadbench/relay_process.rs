//! The relay child process: started per run from the `smtp-oauth-relay` binary next to this
//! one with a generated config, waited for until it greets, killed when the run ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::client::Smtp;
use crate::setup::Bench;

impl Bench {
    pub(crate) async fn spawn_relay(&self, upstream: SocketAddr) -> RelayProcess {
        let n = self.run_no.fetch_add(1, Ordering::Relaxed);
        let listen = free_port().await;
        let config = self.dir.path().join(format!("relay-{n}.toml"));
        std::fs::write(&config, self.relay_config(listen, upstream))
            .expect("cannot write the relay config");
        let log_path = self.dir.path().join(format!("relay-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("cannot create the relay log");
        let child = Command::new(&self.relay_exe)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("SMTP_OAUTH_RELAY_CONFIG")
            .env_remove("SMTP_OAUTH_RELAY_LISTEN")
            .env_remove("SMTP_OAUTH_RELAY_ADMIN_LISTEN")
            .env_remove("SMTP_OAUTH_RELAY_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot share the log file"))
            .stderr(log)
            .spawn()
            .expect("cannot start the relay");
        let mut relay = RelayProcess {
            pid: child.id(),
            child,
            addr: listen,
            log: log_path,
        };
        relay.wait_ready().await;
        relay
    }
}

pub(crate) struct RelayProcess {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) log: PathBuf,
}

impl RelayProcess {
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the relay exited during startup ({status}); its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(tcp) = TcpStream::connect(self.addr).await {
                // Read the greeting so the probe is a complete (if short) session.
                let mut conn = Smtp::new(tcp);
                if conn.expect(220).await.is_ok() {
                    let _ = conn.quit().await;
                    // Let the relay release the probe's connection slot.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the relay did not accept connections within 15 s; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("cannot find a free port");
    listener.local_addr().expect("listener address")
}
