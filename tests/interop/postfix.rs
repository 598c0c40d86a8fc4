//! The most common deployment end to end: a real Postfix uses the relay as its
//! `relayhost` with SASL (PLAIN), over STARTTLS that it verifies against the test CA.
//!
//! Each test runs a private, throwaway Postfix instance that lives entirely in a temp
//! directory (its own main.cf, master.cf, queue, data directory and log file), with its
//! smtpd on a free loopback port; `/etc/postfix` is never read for configuration nor
//! written. A guard stops the instance (`postfix -c DIR stop`, then SIGKILL to its master
//! if that did not work) even when the test fails. Needs root (as CI runs) and Postfix
//! installed: CI (`.ci/run`) installs it; elsewhere the tests skip with a note, but under
//! CI (env `CI` set) a missing Postfix fails them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use smtp_oauth_relay::sandbox::gmail::Delivered;

const POSTFIX: &str = "/usr/sbin/postfix";
const POSTQUEUE: &str = "/usr/sbin/postqueue";
const MASTER_CF: &str = "/etc/postfix/master.cf";
/// The Postfix instance's name for itself (HELO towards the relay, its Received header).
const POSTFIX_HOSTNAME: &str = "postfix.test";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// True when Postfix is installed and we are root. When it is not installed: fails the
/// test under CI, otherwise prints a note and returns false so that the test can return
/// early.
fn require_postfix() -> bool {
    let installed = Path::new(POSTFIX).is_file() && Path::new(MASTER_CF).is_file();
    if !crate::installed_or_skip("postfix", installed) {
        return false;
    }
    let in_ci = std::env::var("CI").is_ok_and(|value| !value.is_empty());
    // A Postfix instance is started (and its queue owned) by root.
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
    });
    if !root {
        assert!(!in_ci, "the Postfix tests need root (CI runs as root)");
        eprintln!("skipping: the Postfix tests need root");
        return false;
    }
    true
}

/// A private Postfix instance in a temp directory, relaying to the relay of an [`Env`].
/// Dropping it stops the instance.
struct Postfix {
    /// Holds `etc/` (config_directory), `queue/`, `data/`, `maillog`.
    root: tempfile::TempDir,
    /// Its smtpd.
    smtpd: SocketAddr,
    relay_port: u16,
    stopped: bool,
}

impl Postfix {
    /// Writes the instance's configuration and starts it.
    async fn start(env: &Env) -> Postfix {
        let root = tempfile::tempdir().unwrap();
        // The unprivileged Postfix daemons must be able to reach the queue below it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let relay_port = env.relay_addr.port();
        let smtpd = {
            // A free port: Postfix binds it right after (a tiny race, as elsewhere).
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let mut postfix = Postfix {
            root,
            smtpd,
            relay_port,
            stopped: true,
        };
        postfix.write_config(env);

        let etc = postfix.etc().display().to_string();
        let check = run(POSTFIX, &["-c", &etc, "check"]).await;
        assert!(
            check.success,
            "postfix check failed:\n{}\n{}",
            check.text,
            postfix.maillog()
        );
        // From here on the guard stops whatever got started, even if `start` fails.
        postfix.stopped = false;
        let start = run(POSTFIX, &["-c", &etc, "start"]).await;
        assert!(
            start.success,
            "postfix start failed:\n{}\n{}",
            start.text,
            postfix.maillog()
        );
        postfix
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn etc(&self) -> PathBuf {
        self.path("etc")
    }

    fn write_config(&self, env: &Env) {
        let etc = self.etc();
        std::fs::create_dir(&etc).unwrap();
        std::fs::create_dir(self.path("queue")).unwrap();
        // data/ is left to `postfix check`, which creates it owned by mail_owner.
        let nexthop = format!("[127.0.0.1]:{}", self.relay_port);
        let private = |name: &str, contents: &str| {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(etc.join(name))
                .unwrap();
            file.write_all(contents.as_bytes()).unwrap();
        };
        // texthash: read as is, no postmap. Keys are the relayhost exactly as written.
        private(
            "sasl_passwd",
            &format!("{nexthop} {}:{}\n", SCANNER.0, SCANNER.1),
        );
        // "secure" verifies the relay's certificate against the test CA; the certificate
        // names localhost (and the IP, which Postfix does not match), hence match=.
        private("tls_policy", &format!("{nexthop} secure match=localhost\n"));
        std::fs::write(etc.join("ca.pem"), &env.pki.ca_cert_pem).unwrap();

        let root = self.root.path().display();
        let main_cf = format!(
            "# A throwaway Postfix for the relay's tests: loopback only, relays everything.\n\
             compatibility_level = 3.6\n\
             config_directory = {root}/etc\n\
             queue_directory = {root}/queue\n\
             data_directory = {root}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = {POSTFIX_HOSTNAME}\n\
             mydomain = test\n\
             myorigin = $myhostname\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mydestination =\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             alias_database =\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_banner = $myhostname ESMTP\n\
             relayhost = {nexthop}\n\
             smtp_sasl_auth_enable = yes\n\
             smtp_sasl_password_maps = texthash:{root}/etc/sasl_passwd\n\
             smtp_sasl_security_options = noanonymous\n\
             smtp_sasl_mechanism_filter = plain, login\n\
             smtp_tls_security_level = secure\n\
             smtp_tls_policy_maps = texthash:{root}/etc/tls_policy\n\
             smtp_tls_CAfile = {root}/etc/ca.pem\n\
             smtp_tls_loglevel = 1\n\
             # Verbose for the relay's address: the log shows the SMTP dialogue.\n\
             debug_peer_list = 127.0.0.1\n\
             debug_peer_level = 1\n\
             maillog_file = {root}/maillog\n\
             maillog_file_prefixes = {root}\n"
        );
        std::fs::write(etc.join("main.cf"), main_cf).unwrap();

        // The system's master.cf (all the standard services, postlog included) with the
        // smtpd moved to our port and nothing chrooted (the chroot would lack files).
        let system = std::fs::read_to_string(MASTER_CF).unwrap();
        let mut master_cf = String::new();
        let mut smtpd_seen = false;
        for line in system.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let service_line = !line.starts_with(char::is_whitespace)
                && !line.starts_with('#')
                && fields.len() >= 8;
            if !service_line {
                writeln!(master_cf, "{line}").unwrap();
                continue;
            }
            let mut fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            if fields[0] == "smtp" && fields[1] == "inet" {
                fields[0] = self.smtpd.to_string();
                smtpd_seen = true;
            }
            fields[4] = "n".to_string();
            writeln!(master_cf, "{}", fields.join(" ")).unwrap();
        }
        assert!(smtpd_seen, "no 'smtp inet' service in {MASTER_CF}");
        std::fs::write(etc.join("master.cf"), master_cf).unwrap();
    }

    /// The instance's log so far.
    fn maillog(&self) -> String {
        std::fs::read_to_string(self.path("maillog")).unwrap_or_default()
    }

    /// `postqueue -p`: the queue listing ("Mail queue is empty" when it is).
    async fn queue(&self) -> String {
        let etc = self.etc().display().to_string();
        run(POSTQUEUE, &["-c", &etc, "-p"]).await.text
    }

    /// `postqueue -f`: attempt delivery of everything queued now.
    async fn flush(&self) {
        let etc = self.etc().display().to_string();
        run(POSTQUEUE, &["-c", &etc, "-f"]).await;
    }

    /// Waits for the delivery status line (`to=<rcpt>, relay=..., status=...`) of `rcpt`;
    /// returns it and the whole log. Halfway through the wait it flushes the queue once;
    /// on timeout it fails with the log and the queue.
    async fn wait_for_status(&self, rcpt: &str) -> (String, String) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let to = format!(": to=<{rcpt}>, ");
        let mut flushed = false;
        loop {
            let log = self.maillog();
            let line = log
                .lines()
                .find(|line| line.contains(&to) && line.contains(", status="));
            if let Some(line) = line {
                return (line.to_string(), log);
            }
            if !flushed && Instant::now() + DELIVERY_TIMEOUT / 2 > deadline {
                self.flush().await;
                flushed = true;
            }
            if Instant::now() > deadline {
                panic!(
                    "Postfix logged no delivery status for <{rcpt}> within {DELIVERY_TIMEOUT:?}\n\
                     --- maillog ---\n{log}\n--- queue ---\n{}",
                    self.queue().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lines of the SMTP dialogue with the relay in the log (debug_peer_list), without
    /// the log prefix: "> CMD" for what Postfix sent, "< REPLY" for what it read.
    fn dialogue(&self, log: &str) -> Vec<String> {
        let peer = format!(" 127.0.0.1[127.0.0.1]:{}: ", self.relay_port);
        log.lines()
            .filter(|line| line.contains(" postfix/smtp["))
            .filter_map(|line| {
                let (_, after) = line.split_once("]: ")?;
                let (direction, rest) = after.split_once(&peer)?;
                matches!(direction, ">" | "<").then(|| format!("{direction} {rest}"))
            })
            .collect()
    }

    /// Waits until the queue is empty (nothing deferred, nothing retried).
    async fn wait_for_empty_queue(&self) {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let queue = self.queue().await;
            if queue.contains("Mail queue is empty") {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "Postfix queue not empty after {DELIVERY_TIMEOUT:?}:\n{queue}\n\
                     --- maillog ---\n{}",
                    self.maillog()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The master's pid from the instance's pid file, if it names a running master.
    fn master_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.path("queue/pid/master.pid")).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // "pid (comm) state ...": a zombie (Z) or dead (X) process is gone.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        });
        let is_master = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "master");
        (alive && is_master).then_some(pid)
    }

    /// Stops the instance and waits for its master to exit; kills the master if
    /// `postfix stop` did not work.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // POSTFIX_TRACE=1 cargo test --test postfix -- --nocapture: see Postfix's log.
        if std::env::var_os("POSTFIX_TRACE").is_some() {
            eprintln!(
                "=== maillog of {}\n{}",
                self.root.path().display(),
                self.maillog()
            );
        }
        let etc = self.etc();
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(&etc)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(pid) = self.master_pid() {
            if Instant::now() > deadline {
                eprintln!("postfix stop left master {pid} running: killing it");
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Ran {
    success: bool,
    /// stdout and stderr.
    text: String,
}

/// Runs a Postfix command to completion with a timeout, off the runtime's threads. Its
/// output goes to a file: `postfix start` leaves a daemon behind that could hold a pipe.
async fn run(program: &str, args: &[&str]) -> Ran {
    let program = program.to_string();
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = tempfile::tempfile().unwrap();
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output.try_clone().unwrap())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{program} {args:?} did not finish within {COMMAND_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::io::{Read, Seek};
        let mut output = output;
        output.rewind().unwrap();
        let mut text = String::new();
        output.read_to_string(&mut text).unwrap();
        Ran {
            success: status.success(),
            text: format!("{program} {args:?}: {status}\n{text}"),
        }
    })
    .await
    .unwrap()
}

/// A message in wire form (CRLF, dot-stuffed, ending in CRLF) with 8-bit UTF-8 text and
/// lines that start with dots.
fn wire_message(from: &str, to: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Relay Test <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: Tue, 25 Nov 2025 10:00:00 +0100\r\n\
         Message-ID: <{subject}.1732525200@client.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         Grüße aus Köln, ça va? 日本語 📨.\r\n\
         ..this line starts with a dot\r\n\
         ...and this one with two\r\n\
         \r\n\
         -- \r\n\
         The relay tests\r\n"
    )
    .into_bytes()
}

/// Submits one message to Postfix's smtpd (no AUTH: 127.0.0.0/8 is in mynetworks);
/// returns the final reply's text.
async fn submit(postfix: &Postfix, from: &str, to: &str, wire: &[u8]) -> String {
    let mut client = Client::connect(postfix.smtpd).await;
    assert_eq!(client.greeting.code, 220, "{}", client.greeting);
    client.ehlo().await;
    let reply = client.send_mail(from, &[to], wire).await;
    assert_eq!(
        reply.code, 250,
        "Postfix did not queue the message: {reply}"
    );
    client.quit().await;
    reply.to_string()
}

fn describe(delivered: &[Delivered]) -> String {
    delivered
        .iter()
        .map(|m| {
            format!(
                "auth_user={} from=<{}> to={:?} params={:?}\n{}\n",
                m.auth_user,
                m.mail_from,
                m.rcpt_to,
                m.mail_params,
                String::from_utf8_lossy(&m.data)
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_relays_through_us_with_sasl_plain() {
    if !require_postfix() {
        return;
    }
    let started = Instant::now();
    let env = Env::start().await;
    let mut postfix = Postfix::start(&env).await;
    let rcpt = "someone@example.net";
    let wire = wire_message(SUPPORT_EMAIL, rcpt, "postfix-relayhost");
    submit(&postfix, SUPPORT_EMAIL, rcpt, &wire).await;

    if !env.gmail.wait_for_messages(1, DELIVERY_TIMEOUT / 2).await {
        postfix.flush().await;
        assert!(
            env.gmail.wait_for_messages(1, DELIVERY_TIMEOUT / 2).await,
            "nothing arrived upstream\n--- maillog ---\n{}\n--- queue ---\n{}",
            postfix.maillog(),
            postfix.queue().await
        );
    }
    let (sent, log) = postfix.wait_for_status(rcpt).await;
    postfix.wait_for_empty_queue().await;
    let delivered = env.gmail.messages();
    if std::env::var_os("POSTFIX_TRACE").is_some() {
        eprintln!("=== upstream received\n{}", describe(&delivered));
    }
    assert_eq!(
        delivered.len(),
        1,
        "expected exactly one message upstream:\n{}",
        describe(&delivered)
    );
    let message = &delivered[0];
    assert_eq!(
        message.auth_user, SUPPORT_EMAIL,
        "XOAUTH2 user= must be the asset's mailbox"
    );
    assert_eq!(message.mail_from, SUPPORT_EMAIL);
    assert_eq!(message.rcpt_to, [rcpt]);

    // Our Received header first, then Postfix's, then the message exactly as submitted.
    let (ours, rest) = split_received(&message.data);
    assert!(
        ours.contains(&format!("from {POSTFIX_HOSTNAME} ([127.0.0.1])")),
        "{ours}"
    );
    // Postfix logged in (A) over STARTTLS (S).
    assert!(
        ours.contains("by relay.test (smtp-oauth-relay) with ESMTPSA id "),
        "{ours}"
    );
    let (theirs, body) = split_received(&rest);
    assert!(
        theirs.contains(&format!("by {POSTFIX_HOSTNAME} (Postfix) with ESMTP id ")),
        "{theirs}"
    );
    assert!(theirs.contains(&format!("for <{rcpt}>")), "{theirs}");
    let expected = unstuffed(&wire);
    assert!(
        body == expected,
        "message changed on the way:\n--- sent ---\n{}\n--- received ---\n{}",
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(&body)
    );

    // Postfix's side: the certificate verified against the test CA, SASL used, sent.
    let tls_line = format!(
        "Verified TLS connection established to 127.0.0.1[127.0.0.1]:{}",
        postfix.relay_port
    );
    assert!(log.contains(&tls_line), "{log}");
    assert!(
        sent.contains(&format!(
            "relay=127.0.0.1[127.0.0.1]:{}",
            postfix.relay_port
        )),
        "{sent}"
    );
    assert!(sent.contains("status=sent"), "{sent}");
    assert!(sent.contains("(250 "), "{sent}");
    assert!(!log.contains("warning: SASL"), "{log}");
    // The dialogue: STARTTLS first, then AUTH PLAIN (which Postfix prefers), accepted.
    let dialogue = postfix.dialogue(&log);
    let all = dialogue.join("\n");
    let position = |prefix: &str| {
        let found = dialogue.iter().position(|line| line.starts_with(prefix));
        found.unwrap_or_else(|| panic!("no {prefix:?} in the dialogue:\n{all}"))
    };
    let auth = position("> AUTH ");
    assert!(position("> STARTTLS") < auth, "{all}");
    assert!(dialogue[auth].starts_with("> AUTH PLAIN "), "{all}");
    assert!(dialogue[auth + 1].starts_with("< 235 "), "{all}");
    let mail = &dialogue[position("> MAIL FROM:")];
    assert!(
        mail.starts_with(&format!("> MAIL FROM:<{SUPPORT_EMAIL}> ")),
        "{all}"
    );
    postfix.stop();
    assert!(postfix.master_pid().is_none());
    eprintln!("postfix relayhost test took {:?}", started.elapsed());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_bounces_a_sender_we_refuse() {
    if !require_postfix() {
        return;
    }
    let started = Instant::now();
    let env = Env::start().await;
    let mut postfix = Postfix::start(&env).await;
    let stranger = "stranger@elsewhere.net";
    let rcpt = "someone@example.net";
    let wire = wire_message(stranger, rcpt, "postfix-refused-sender");
    submit(&postfix, stranger, rcpt, &wire).await;

    // The relay refuses the sender at MAIL FROM with a 5xx: Postfix gives up at once
    // (no deferral, no retry) and bounces.
    let (bounced, log) = postfix.wait_for_status(rcpt).await;
    assert!(bounced.contains("status=bounced"), "{bounced}");
    assert!(
        bounced.contains(&format!(
            "said: 550 5.7.1 <{stranger}>: Sender address rejected"
        )),
        "{bounced}"
    );
    assert!(
        bounced.contains("(in reply to MAIL FROM command)"),
        "{bounced}"
    );
    assert!(!log.contains("status=deferred"), "{log}");

    // Postfix's bounce (null sender) goes back to the stranger through us too: the relay
    // sends null-sender mail as the user's only asset (scanner has just "support").
    let (dsn_sent, log) = postfix.wait_for_status(stranger).await;
    postfix.wait_for_empty_queue().await;
    let delivered = env.gmail.messages();
    if std::env::var_os("POSTFIX_TRACE").is_some() {
        eprintln!("=== upstream received\n{}", describe(&delivered));
    }
    assert!(
        delivered.iter().all(|m| m.mail_from != stranger),
        "the refused message went upstream:\n{}",
        describe(&delivered)
    );
    assert_eq!(
        delivered.len(),
        1,
        "expected only Postfix's bounce upstream:\n{}\n--- maillog ---\n{log}",
        describe(&delivered)
    );
    let dsn = &delivered[0];
    assert_eq!(dsn.auth_user, SUPPORT_EMAIL);
    assert_eq!(dsn.mail_from, "");
    assert_eq!(dsn.rcpt_to, [stranger]);
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Undelivered Mail Returned to Sender"),
        "{text}"
    );
    assert!(text.contains("550 5.7.1"), "{text}");
    assert!(text.contains("Subject: postfix-refused-sender"), "{text}");
    assert!(dsn_sent.contains("status=sent"), "{dsn_sent}");
    assert!(!log.contains("status=deferred"), "{log}");
    postfix.stop();
    assert!(postfix.master_pid().is_none());
    eprintln!("postfix bounce test took {:?}", started.elapsed());
    env.stop().await;
}
