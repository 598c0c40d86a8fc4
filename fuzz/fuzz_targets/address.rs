#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_oauth_relay::smtp::address::{canonical, header_fields, mailbox_list, CanonicalAddress};

/// Bytes that make up addresses and From: fields. Random bytes rarely form an address, so
/// every byte outside this set is mapped into it; bytes already in it (the seed corpus)
/// stay as they are. Quotes, backslashes, parentheses, brackets and the specials reach
/// quoted local parts, comments, literals, routes and groups.
const ALPHABET: &[u8] = b"abcABC019-_.@<>,;:()[]\" \\=?\t\r\n";

/// What every canonical address must satisfy: it is a fixed point of `canonical` (so two
/// spellings that meet in it stay met), it re-parses as a one-mailbox From: field, it has
/// no control characters (safe in a log and a command line), and its domain is
/// ASCII-lowercase.
fn check_address(address: &CanonicalAddress) {
    let text = address.as_str();
    assert_eq!(canonical(text).as_ref(), Ok(address), "not idempotent: {text:?}");
    assert_eq!(
        mailbox_list(text).as_deref(),
        Ok(std::slice::from_ref(address)),
        "does not re-parse as a From: field: {text:?}"
    );
    assert_eq!(
        mailbox_list(&format!("Name <{text}>")).as_deref(),
        Ok(std::slice::from_ref(address)),
        "does not re-parse in angle brackets: {text:?}"
    );
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert_eq!(address.domain(), address.domain().to_ascii_lowercase());
    assert_eq!(
        format!("{}@{}", address.local_part(), address.domain()),
        text
    );
    assert_eq!(address.is_quoted(), address.local_part().starts_with('"'));
}

fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let single = canonical(&text);
    // Pure: the same text always gives the same answer.
    assert_eq!(single, canonical(&text));
    if let Ok(address) = &single {
        check_address(address);
    }
    let list = mailbox_list(&text);
    assert_eq!(list, mailbox_list(&text));
    for address in list.iter().flatten() {
        check_address(address);
    }
    // The same bytes as a header block: From fields come back unfolded.
    for value in header_fields(data, "From") {
        assert!(!value.contains(['\r', '\n']), "{value:?}");
        if let Ok(addresses) = mailbox_list(&value) {
            addresses.iter().for_each(check_address);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mapped: Vec<u8> = data
        .iter()
        .map(|&b| {
            if ALPHABET.contains(&b) {
                b
            } else {
                ALPHABET[usize::from(b) % ALPHABET.len()]
            }
        })
        .collect();
    check(&mapped);
});
