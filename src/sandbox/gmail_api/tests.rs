//! The fake's own reading of headers.

use super::*;

#[test]
fn bcc_is_stripped_and_recipients_read() {
    let headers = b"To: A <a@x.org>, b@y.org\r\nBcc: <c@z.org>,\r\n <d@z.org>\r\nCc: Team: e@x.org;\r\nSubject: s\r\n\r\n";
    let (kept, recipients) = strip_bcc(headers);
    assert_eq!(
        kept,
        b"To: A <a@x.org>, b@y.org\r\nCc: Team: e@x.org;\r\nSubject: s\r\n\r\n".to_vec()
    );
    assert_eq!(
        recipients,
        vec!["a@x.org", "b@y.org", "c@z.org", "d@z.org", "e@x.org"]
    );
}
