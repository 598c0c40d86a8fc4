#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_oauth_relay::smtp::{parse_reply, Reply, ReplyParse};

fn check_wire(reply: &Reply) {
    let wire = reply.to_wire();
    for line in wire.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= 512, "reply line over 512 octets");
        assert!(line.ends_with(b"\r\n"));
        let body = &line[..line.len() - 2];
        assert!(
            !body.contains(&b'\r') && !body.contains(&b'\n'),
            "line injection"
        );
    }
    match parse_reply(&wire, 512, usize::MAX) {
        Ok(ReplyParse::Complete {
            reply: back,
            consumed,
        }) => {
            assert_eq!(consumed, wire.len());
            assert_eq!(back.code, reply.code);
        }
        other => panic!("our own reply does not parse: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(ReplyParse::Complete { reply, consumed }) = parse_reply(data, 512, 100) else {
        return;
    };
    assert!(consumed > 0 && consumed <= data.len());
    assert!(!reply.lines.is_empty() && reply.lines.len() <= 100);
    assert!((200..600).contains(&reply.code));
    // Whatever an upstream sends, quoting it back to our client stays safe.
    check_wire(&reply);
    check_wire(&Reply::new(451, None, reply.to_string()));
});
