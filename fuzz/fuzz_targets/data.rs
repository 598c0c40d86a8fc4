#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_oauth_relay::smtp::{BareLineEndings, DataLimits, DataScanner};

struct Outcome {
    out: Vec<u8>,
    consumed: usize,
    finished: bool,
    problem: Option<smtp_oauth_relay::smtp::DataProblem>,
    content_len: u64,
}

fn run(limits: DataLimits, chunks: &[&[u8]]) -> Outcome {
    let mut scanner = DataScanner::new(limits);
    let mut out = Vec::new();
    let mut consumed = 0;
    for chunk in chunks {
        let scan = scanner.feed(chunk, &mut out);
        consumed += scan.consumed;
        if scan.finished {
            break;
        }
        assert_eq!(
            scan.consumed,
            chunk.len(),
            "unfinished feed must consume everything"
        );
    }
    Outcome {
        out,
        consumed,
        finished: scanner.is_finished(),
        problem: scanner.problem(),
        content_len: scanner.content_len(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks the limits, byte 1 where to split, the rest is the DATA stream.
    let [config, split, input @ ..] = data else {
        return;
    };
    let limits = DataLimits {
        max_line_len: if config & 0x80 != 0 {
            1000
        } else {
            usize::from(config >> 1)
        },
        bare_line_endings: if config & 1 == 0 {
            BareLineEndings::Normalize
        } else {
            BareLineEndings::Reject
        },
    };

    let whole = run(limits, &[input]);
    let cut = usize::from(*split).min(input.len());
    let (a, b) = input.split_at(cut);
    let halves = run(limits, &[a, b]);
    let bytewise: Vec<&[u8]> = input.chunks(1).collect();
    let bytes = run(limits, &bytewise);
    for other in [&halves, &bytes] {
        assert_eq!(
            other.out, whole.out,
            "output depends on how input was split"
        );
        assert_eq!(other.consumed, whole.consumed);
        assert_eq!(other.finished, whole.finished);
        assert_eq!(other.problem, whole.problem);
        assert_eq!(other.content_len, whole.content_len);
    }

    // No end-of-data can appear in what is forwarded, even to a next hop
    // that accepts bare LF or bare CR line endings.
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(&whole.out);
    for needle in [&b"\r\n.\r\n"[..], b"\n.\n", b"\n.\r", b"\r.\n", b"\r.\r"] {
        assert!(!contains(&framed, needle), "forwarded a terminator");
    }
    // Forwarded bytes are strict CRLF lines.
    for (i, &c) in whole.out.iter().enumerate() {
        if c == b'\r' {
            assert_eq!(whole.out.get(i + 1), Some(&b'\n'));
        }
        if c == b'\n' {
            assert!(i > 0 && whole.out[i - 1] == b'\r');
        }
    }
    // Finished exactly at the first real <CRLF>.<CRLF>.
    let framed_in = [b"\r\n".as_slice(), input].concat();
    match framed_in.windows(5).position(|w| w == b"\r\n.\r\n") {
        Some(p) => assert!(whole.finished && whole.consumed == p + 3),
        None => assert!(!whole.finished && whole.consumed == input.len()),
    }
});
