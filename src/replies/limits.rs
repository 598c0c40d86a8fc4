//! The texts of the sending-limit replies (issue 16), kept beside the table in
//! `replies.rs` so that file stays readable: each names the asset, the limit and when it
//! frees up.

/// "Sending account "a" is at its limit of 5 messages in 24 hours until …".
pub(super) fn text(hit: &crate::limits::LimitHit) -> String {
    use crate::limits::Limit;
    let asset = &hit.asset;
    let until = crate::limits::format_time(hit.frees_at);
    match &hit.limit {
        Limit::DailyMessages(n) => format!(
            "Sending account \"{asset}\" is at its limit of {n} messages in 24 hours until {until}; try again later"
        ),
        Limit::DailyRecipients(n) => format!(
            "Sending account \"{asset}\" is at its limit of {n} recipients in 24 hours until {until}; try again later"
        ),
        Limit::MessagesPerMinute(n) => format!(
            "Sending account \"{asset}\" is at its limit of {n} messages a minute until {until}; try again later"
        ),
        Limit::Provider(_) => format!(
            "Sending account \"{asset}\" is over its provider's sending limit until {until}; message not sent, try again later"
        ),
    }
}

pub(super) fn busy_text(asset: &str, limit: usize) -> String {
    format!("Sending account \"{asset}\" has all its {limit} provider connections in use; try again later")
}
