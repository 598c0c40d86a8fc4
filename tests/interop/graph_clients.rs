//! Real clients (swaks, curl, Python's smtplib) through a Microsoft Graph asset (issue 13):
//! what Graph receives is the client's message byte for byte after the relay's Received
//! header, and a 10 MiB message keeps its 6 MiB attachment through the draft path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Output, Stdio};
use std::time::Duration;

use crate::common::graph::*;
use crate::common::*;

async fn run(program: &str, args: &[&str]) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
    tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish in time"))
        .unwrap()
}

#[track_caller]
fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The delivered MIME after the relay's Bcc (if any) and Received header.
fn after_received(mime: &[u8]) -> Vec<u8> {
    split_graph_mime(mime).2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_and_curl_deliver_byte_exact_through_graph() {
    let swaks = crate::installed_or_skip("swaks", crate::on_path("swaks"));
    let curl = crate::installed_or_skip("curl", crate::on_path("curl"));
    let g = graph_env(GraphOptions::default()).await;
    let message = graph_message("real-clients");
    let file = g.env.path("message.eml");
    std::fs::write(&file, unstuffed(&message)).unwrap();
    let port = g.env.relay_addr.port().to_string();
    let server = format!("127.0.0.1:{port}");
    let mut expected = 0;
    if swaks {
        let output = run(
            "swaks",
            &[
                "--server",
                &server,
                "--auth",
                "PLAIN",
                "--auth-user",
                ADMIN.0,
                "--auth-password",
                ADMIN.1,
                "--from",
                GRAPH_EMAIL,
                "--to",
                "ops@example.net",
                "--data",
                &format!("@{}", file.display()),
            ],
        )
        .await;
        assert_success("swaks", &output);
        expected += 1;
        let delivered = g.graph.delivered();
        // swaks sends the file and one more CRLF before the final dot.
        let mut sent = unstuffed(&message);
        sent.extend_from_slice(b"\r\n");
        assert_eq!(after_received(&delivered[expected - 1].mime), sent);
    }
    if curl {
        let output = run(
            "curl",
            &[
                "--silent",
                "--show-error",
                "--url",
                &format!("smtp://{server}"),
                "--mail-from",
                GRAPH_EMAIL,
                "--mail-rcpt",
                "ops@example.net",
                "--user",
                &format!("{}:{}", ADMIN.0, ADMIN.1),
                "--upload-file",
                file.to_str().unwrap(),
            ],
        )
        .await;
        assert_success("curl", &output);
        expected += 1;
        let delivered = g.graph.delivered();
        assert_eq!(
            after_received(&delivered[expected - 1].mime),
            unstuffed(&message)
        );
    }
    assert_eq!(g.graph.delivered().len(), expected);
    g.env.stop().await;
}

/// smtplib: send `path` from GRAPH_EMAIL to the given recipients; prints the final code.
const SMTPLIB: &str = r#"
import smtplib, sys
port, user, password, sender, path = sys.argv[1:6]
rcpts = sys.argv[6:]
with open(path, "rb") as f:
    msg = f.read()
s = smtplib.SMTP("127.0.0.1", int(port), local_hostname="client.test", timeout=120)
s.ehlo()
s.login(user, password)
try:
    s.sendmail(sender, rcpts, msg)
    print("SENT")
except smtplib.SMTPDataError as err:
    print("REFUSED", err.smtp_code, err.smtp_error.decode())
s.quit()
"#;

async fn smtplib(g: &GraphEnv, path: &std::path::Path, rcpts: &[&str]) -> String {
    let script = g.env.path("send.py");
    std::fs::write(&script, SMTPLIB).unwrap();
    let port = g.env.relay_addr.port().to_string();
    let mut args = vec![
        script.to_str().unwrap(),
        &port,
        ADMIN.0,
        ADMIN.1,
        GRAPH_EMAIL,
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(rcpts);
    let output = run("python3", &args).await;
    assert_success("smtplib", &output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_sends_small_and_10_mib_messages_through_graph() {
    if !crate::installed_or_skip("python3", crate::on_path("python3")) {
        return;
    }
    let g = graph_env(GraphOptions {
        large: true,
        ..GraphOptions::default()
    })
    .await;
    // Small, with an envelope-only recipient that becomes Bcc.
    let small = g.env.path("small.eml");
    std::fs::write(&small, unstuffed(&graph_message("smtplib"))).unwrap();
    let out = smtplib(&g, &small, &["ops@example.net", "audit@example.org"]).await;
    assert!(out.contains("SENT"), "{out}");
    let delivered = g.graph.delivered();
    let (bcc, _, rest) = split_graph_mime(&delivered[0].mime);
    assert!(bcc.contains("audit@example.org"), "{bcc}");
    assert!(rest == unstuffed(&graph_message("smtplib")));
    assert!(delivered[0]
        .recipients
        .contains(&"audit@example.org".to_string()));

    // 10 MiB with a 6 MiB attachment: the draft path, the attachment intact.
    let pdf = attachment(6 * 1024 * 1024);
    let big = g.env.path("big.eml");
    std::fs::write(&big, big_message(&pdf, 10 * 1024 * 1024)).unwrap();
    let out = smtplib(&g, &big, &["ops@example.net"]).await;
    assert!(out.contains("SENT"), "{out}");
    let delivered = g.graph.delivered();
    assert_eq!(delivered.len(), 2);
    assert!(
        delivered[1].attachments[0].bytes == pdf,
        "attachment bytes identical"
    );
    g.env.stop().await;
}
