//! Criterion benchmarks of the relay's pure protocol code (issue 6): the command parser, the
//! DATA scanner's throughput on 1 KB / 100 KB / 1 MB / 10 MB messages, and the reply parser.
//!
//! Run with `cargo bench --bench parsers` (add `-- --quick` for a short run).
#![allow(clippy::expect_used, clippy::unwrap_used)] // benchmark setup: a failure should abort loudly

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use smtp_oauth_relay::smtp::command::parse_command;
use smtp_oauth_relay::smtp::data::{BareLineEndings, DataLimits, DataScanner};
use smtp_oauth_relay::smtp::reply::{parse_reply, ReplyParse};

/// What the relay reads per socket read (session/conn.rs READ_CHUNK); the scanner is fed this much
/// at a time, as in production.
const CHUNK: usize = 64 * 1024;

/// A message in DATA wire form: headers, 76-character body lines, then the `.` terminator.
/// `size` counts the content before the terminator.
fn wire_message(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 8);
    out.extend_from_slice(
        b"From: <bench@example.com>\r\nTo: <someone@example.org>\r\nSubject: parser bench\r\n\r\n",
    );
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut line = 0usize;
    while out.len() < size {
        let room = size - out.len();
        let len = room.saturating_sub(2).min(76);
        for i in 0..len {
            out.push(alphabet[(line + i) % alphabet.len()]);
        }
        out.extend_from_slice(b"\r\n");
        line += 1;
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn commands(c: &mut Criterion) {
    let lines: [(&str, &[u8]); 6] = [
        ("ehlo", b"EHLO printer.office.example.com"),
        (
            "auth_plain",
            b"AUTH PLAIN AHNjYW5uZXIAc2Nhbm5lci1wYXNzd29yZC0x",
        ),
        (
            "mail_from_params",
            b"MAIL FROM:<scanner@example.com> SIZE=123456 BODY=8BITMIME",
        ),
        ("rcpt_to", b"RCPT TO:<someone@example.org>"),
        ("data", b"DATA"),
        ("unknown_verb", b"XYZZY plugh"),
    ];
    let mut group = c.benchmark_group("parse_command");
    group.throughput(Throughput::Elements(1));
    for (name, line) in lines {
        group.bench_with_input(BenchmarkId::from_parameter(name), line, |b, line| {
            b.iter(|| parse_command(black_box(line)))
        });
    }
    group.finish();
}

fn data_scanner(c: &mut Criterion) {
    let limits = DataLimits {
        max_line_len: 1000,
        bare_line_endings: BareLineEndings::Normalize,
    };
    let mut group = c.benchmark_group("data_scanner");
    for (name, size) in [
        ("1KB", 1024usize),
        ("100KB", 100 * 1024),
        // Issue 11's target: >= 5 GB/s on a 1 MB message of ordinary 76-character lines.
        ("1MB", 1024 * 1024),
        ("10MB", 10 * 1024 * 1024),
    ] {
        let message = wire_message(size);
        group.throughput(Throughput::Bytes(message.len() as u64));
        if size >= 10 * 1024 * 1024 {
            group.sample_size(20);
            group.measurement_time(Duration::from_secs(8));
        }
        let mut out = Vec::with_capacity(CHUNK + 1024);
        group.bench_with_input(BenchmarkId::from_parameter(name), &message, |b, message| {
            b.iter(|| {
                let mut scanner = DataScanner::new(limits);
                let mut forwarded = 0usize;
                for chunk in message.chunks(CHUNK) {
                    out.clear();
                    let scan = scanner.feed(black_box(chunk), &mut out);
                    forwarded += out.len();
                    if scan.finished {
                        break;
                    }
                }
                assert!(scanner.is_finished(), "terminator not found");
                forwarded
            })
        });
    }
    group.finish();
}

fn replies(c: &mut Criterion) {
    let ehlo = b"250-smtp.gmail.com at your service, [127.0.0.1]\r\n\
250-SIZE 35882577\r\n\
250-8BITMIME\r\n\
250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH\r\n\
250-ENHANCEDSTATUSCODES\r\n\
250-PIPELINING\r\n\
250-CHUNKING\r\n\
250 SMTPUTF8\r\n";
    let cases: [(&str, &[u8]); 4] = [
        (
            "mail_ok",
            b"250 2.1.0 OK 5b1f17b1804b1-2a0ec1fa2c1si12sb.87 - gsmtp\r\n",
        ),
        (
            "data_final",
            b"250 2.0.0 OK  1700000000 5b1f17b1804b1-2a0ec1fa2c1si12sb.87 - gsmtp\r\n",
        ),
        (
            "rcpt_rejected_multiline",
            b"550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n\
550-5.1.1 double-checking the recipient's email address for typos or\r\n\
550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp\r\n",
        ),
        ("ehlo_8_lines", ehlo),
    ];
    let mut group = c.benchmark_group("parse_reply");
    group.throughput(Throughput::Elements(1));
    for (name, wire) in cases {
        group.bench_with_input(BenchmarkId::from_parameter(name), wire, |b, wire| {
            b.iter(|| match parse_reply(black_box(wire), 4096, 100) {
                Ok(ReplyParse::Complete { reply, .. }) => reply.code,
                other => panic!("benchmark input did not parse: {other:?}"),
            })
        });
    }
    group.finish();
}

criterion_group!(benches, commands, data_scanner, replies);
criterion_main!(benches);
