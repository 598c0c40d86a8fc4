//! Recognizing a provider's "you are over your sending limit" among its answers (pure).
//!
//! Such an answer must never bounce mail: Gmail's `550 5.4.5 Daily user sending limit
//! exceeded` is permanent in form but says "not today", and Exchange's
//! `554 5.2.0 … SubmissionQuotaExceededException` likewise. The session turns them into a
//! 4xx and marks the asset, so later messages wait in their clients' queues instead of
//! reaching the provider (each of which would only prolong the block).

use crate::smtp::reply::Reply;
use crate::transport::graph_error::GraphError;
use crate::transport::{ApiFailure, TransportError};

/// How long a mark lasts when the provider does not say: Google blocks "for up to 24
/// hours" after a daily limit; rate limits are per minute.
pub const DAILY_BLOCK_SECS: u64 = 24 * 60 * 60;
pub const RATE_BLOCK_SECS: u64 = 60;

/// A provider's quota refusal: how long the asset should be left alone, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderQuota {
    pub for_secs: u64,
    pub reason: String,
}

/// The quota refusal in an SMTP reply (to MAIL, RCPT or the end of the message), if any.
pub fn smtp_quota(reply: &Reply) -> Option<ProviderQuota> {
    let enhanced = reply.enhanced?;
    let text = reply.lines.join(" ");
    let lower = text.to_ascii_lowercase();
    let code = (enhanced.class, enhanced.subject, enhanced.detail);
    let daily = match (reply.code, code) {
        // Gmail: "Daily user sending limit exceeded" (and the same code for its
        // recipient limits).
        (550, (5, 4, 5)) => true,
        // Exchange Online: "… SubmissionQuotaExceededException …".
        (554, (5, 2, 0)) if lower.contains("quotaexceeded") || lower.contains("quota exceeded") => {
            true
        }
        // 4.5.3 is also "too many recipients in this message", which no waiting fixes:
        // only a reply that speaks of a quota or a limit marks the asset.
        (452, (4, 5, 3)) if ["quota", "limit", "rate"].iter().any(|w| lower.contains(w)) => {
            lower.contains("daily") || lower.contains(" day")
        }
        _ => return None,
    };
    let default = if daily {
        DAILY_BLOCK_SECS
    } else {
        RATE_BLOCK_SECS
    };
    Some(ProviderQuota {
        for_secs: retry_in(&lower).unwrap_or(default),
        reason: crate::oauth::http::provider_text(&reply.to_string()),
    })
}

/// The quota refusal in an API transport's failure, if any.
pub fn transport_quota(error: &TransportError) -> Option<ProviderQuota> {
    match error {
        TransportError::Api(ApiFailure::RateLimited { message, daily, .. }) => {
            Some(ProviderQuota {
                for_secs: if *daily {
                    DAILY_BLOCK_SECS
                } else {
                    RATE_BLOCK_SECS
                },
                reason: crate::oauth::http::provider_text(message),
            })
        }
        TransportError::Graph(GraphError::Throttled {
            status,
            retry_after,
            ..
        }) => Some(ProviderQuota {
            for_secs: retry_after
                .unwrap_or(RATE_BLOCK_SECS)
                .clamp(1, DAILY_BLOCK_SECS),
            reason: format!(
                "Microsoft Graph throttled the mailbox (HTTP {status}{})",
                retry_after
                    .map(|s| format!(", Retry-After {s} s"))
                    .unwrap_or_default()
            ),
        }),
        _ => None,
    }
}

/// "try again in 2 hours", "retry after 30 minutes", "in 45 seconds": the first number
/// followed by a time unit after "in" or "after", at most a day.
fn retry_in(lower: &str) -> Option<u64> {
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(3).find_map(|w| {
        if !matches!(w[0], "in" | "after") {
            return None;
        }
        let n: u64 = w[1].parse().ok()?;
        let unit = match w[2].trim_end_matches('s') {
            "second" | "sec" => 1,
            "minute" | "min" => 60,
            "hour" | "hr" => 3600,
            _ => return None,
        };
        Some(n.saturating_mul(unit).clamp(1, DAILY_BLOCK_SECS))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::EnhancedCode;

    fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> Reply {
        Reply::new(
            code,
            Some(EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2)),
            text,
        )
    }

    #[test]
    fn provider_quota_replies_are_recognized() {
        let gmail = reply(550, (5, 4, 5), "Daily user sending limit exceeded. For more information, go to https://support.google.com/a/answer/166852");
        let quota = smtp_quota(&gmail).map(|q| q.for_secs);
        assert_eq!(quota, Some(DAILY_BLOCK_SECS));
        let exchange = reply(554, (5, 2, 0), "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception");
        assert_eq!(
            smtp_quota(&exchange).map(|q| q.for_secs),
            Some(DAILY_BLOCK_SECS)
        );
        let rate = reply(
            452,
            (4, 5, 3),
            "Sending rate limit exceeded, try again in 5 minutes",
        );
        assert_eq!(smtp_quota(&rate).map(|q| q.for_secs), Some(300));
        let daily = reply(452, (4, 5, 3), "Daily recipient quota exceeded");
        assert_eq!(
            smtp_quota(&daily).map(|q| q.for_secs),
            Some(DAILY_BLOCK_SECS)
        );
    }

    #[test]
    fn other_refusals_are_not_quota() {
        for r in [
            reply(452, (4, 5, 3), "Too many recipients"),
            reply(
                550,
                (5, 1, 1),
                "The email account that you tried to reach does not exist",
            ),
            reply(
                554,
                (5, 2, 0),
                "STOREDRV.Submission.Exception:SendAsDeniedException",
            ),
            reply(250, (2, 0, 0), "OK"),
            Reply::new(550, None, "Daily user sending limit exceeded"),
        ] {
            assert_eq!(smtp_quota(&r), None, "{r}");
        }
    }

    #[test]
    fn retry_times_are_read_and_bounded() {
        assert_eq!(retry_in("please try again in 2 hours"), Some(7200));
        assert_eq!(retry_in("retry after 30 seconds."), Some(30));
        assert_eq!(retry_in("try again in 900 hours"), Some(DAILY_BLOCK_SECS));
        assert_eq!(retry_in("limit exceeded"), None);
        assert_eq!(retry_in("in 5 apples"), None);
    }

    #[test]
    fn api_failures_map_to_marks() {
        let daily = TransportError::Api(ApiFailure::RateLimited {
            api: "Gmail API",
            email: "a@x".into(),
            message: "Daily Limit Exceeded".into(),
            daily: true,
        });
        assert_eq!(
            transport_quota(&daily).map(|q| q.for_secs),
            Some(DAILY_BLOCK_SECS)
        );
        let graph = TransportError::Graph(GraphError::Throttled {
            mailbox: "a@x".into(),
            status: 429,
            retry_after: Some(120),
        });
        assert_eq!(transport_quota(&graph).map(|q| q.for_secs), Some(120));
        let other = TransportError::HeaderBlockTooLarge;
        assert_eq!(transport_quota(&other), None);
    }
}
