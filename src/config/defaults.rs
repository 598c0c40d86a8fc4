//! Every default the config falls back to, each next to the reason it has this value
//! (an RFC minimum, what Gmail or Postfix does, what a sidecar needs). An operator who
//! wonders why a limit is what it is should find the answer here.

use std::time::Duration;

use super::types::{Limits, PoolSettings, Timeouts, UpstreamDialogue};

/// Beside the config's usual place, owned by the relay (systemd's StateDirectory, a volume).
pub(super) const DEFAULT_TOKEN_STORE: &str = "state/tokens.json";

/// A few warm connections per mailbox carry a burst of one-message clients; Gmail
/// allows many more concurrent sessions than that.
const DEFAULT_POOL_SIZE: usize = 4;
/// Gmail drops idle SMTP sessions after a few minutes; we let go well before.
const DEFAULT_POOL_IDLE: u64 = 60;

/// Loopback only: the relay holds mailbox credentials, so exposing it is a decision the
/// operator makes explicitly.
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:2525";
/// Gmail's own advertised SIZE; anything larger would be refused upstream anyway.
const DEFAULT_MAX_MESSAGE_SIZE: u64 = 35_882_577;
/// Gmail's per-message recipient limit; RFC 5321 §4.5.3.1.8 requires at least 100.
const DEFAULT_MAX_RECIPIENTS: usize = 100;
/// RFC 5321 says 512 octets, plus room for ESMTP parameters; Postfix allows 2048 as well.
const DEFAULT_MAX_COMMAND_LINE: usize = 2048;
/// RFC 5321 §4.5.3.1.6: 1000 octets including CRLF.
const DEFAULT_MAX_DATA_LINE: usize = 1000;
/// RFC 4954 §4: AUTH lines up to 12288 octets.
const DEFAULT_MAX_AUTH_LINE: usize = 12288;
/// A sidecar serves a handful of local programs; this caps memory and file descriptors.
const DEFAULT_MAX_CONNECTIONS: usize = 100;
/// Postfix's smtpd_hard_error_limit default is 20.
const DEFAULT_MAX_ERRORS: usize = 20;
/// Postfix's smtpd_junk_command_limit.
const DEFAULT_MAX_JUNK_COMMANDS: usize = 100;
/// Messages per connection, 0 = unlimited. Postfix's smtpd has no such limit, and a
/// relayhost client (Postfix, a scanner's queue) that reuses its connection for thousands of
/// messages would only get needless 421 deferrals from one. The relay's own connections to
/// the provider are rotated internally, never visible to the client, and a looping client
/// is still bounded by `max_errors`, `max_junk_commands` and the provider's sending quota.
const DEFAULT_MAX_TRANSACTIONS: usize = 0;
/// argon2id password checks at once, each with its own 19 MiB working memory: two keep
/// both cores of a small host busy during a burst of logins while the burst's memory peak
/// stays at ~38 MiB over the base (later logins wait their turn, tens of ms each).
const DEFAULT_MAX_PASSWORD_CHECKS: usize = 2;
/// One misbehaving host cannot take every slot from the others.
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 20;
/// Enough for a user mistyping a password a few times; far too few to guess one.
const DEFAULT_AUTH_MAX_FAILURES: u32 = 10;
/// Ten minutes: ten guesses per lockout make guessing hopeless, and a user who locked
/// himself out is back before the help desk answers.
const DEFAULT_AUTH_LOCKOUT: u64 = 600;
/// A few MB at most per failed-login table (an entry takes about 100-150 bytes), far more
/// than the distinct hosts and names a site sees in an hour. Public: `throttle` names it as
/// its own default.
pub const DEFAULT_AUTH_THROTTLE_ENTRIES: usize = 50_000;
/// msmtpd waits 1 s after a failed AUTH; we grow from there to 5 s.
const DEFAULT_AUTH_FAILURE_DELAY_MS: u64 = 1000;
/// RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for a command.
const DEFAULT_COMMAND_TIMEOUT: u64 = 300;
/// A client that sends the end of an overlong line does so at once; one that does not
/// within seconds is feeding us an endless line.
const DEFAULT_LINE_END_TIMEOUT: u64 = 10;
/// RFC 5321 §4.5.3.2.6: 3 minutes per data block.
const DEFAULT_DATA_BLOCK_TIMEOUT: u64 = 180;
/// 30 minutes moves Gmail's largest message at 20 KB/s: slower than that is an attack
/// or a link that will not finish anyway.
const DEFAULT_DATA_TOTAL_TIMEOUT: u64 = 1800;
/// TCP and TLS to the provider take well under a second; 30 s rides out a few lost
/// packets without leaving the client waiting on a provider that is unreachable.
const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: u64 = 30;
/// Gmail answers commands in well under a second; a minute means it is not going to.
const DEFAULT_UPSTREAM_COMMAND_TIMEOUT: u64 = 60;
/// Postfix's before-queue proxy waits 100 s for the next hop, so its own client (with the
/// RFC's 10 minute minimum) never gives up before we do.
const DEFAULT_UPSTREAM_FINAL_REPLY_TIMEOUT: u64 = 100;
/// Seconds, not minutes: a session waits on it during MAIL FROM.
const DEFAULT_TOKEN_REQUEST_TIMEOUT: u64 = 15;
/// Kubernetes' default terminationGracePeriodSeconds is also 30 s: sessions in flight get
/// as long as the orchestrator would wait before killing the process anyway.
const DEFAULT_SHUTDOWN_GRACE: u64 = 30;
/// Long enough that a burst of sessions cannot hammer a failing endpoint, short enough that
/// recovery is noticed at once.
const DEFAULT_TOKEN_RETRY: u64 = 5;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_command_line: DEFAULT_MAX_COMMAND_LINE,
            max_data_line: DEFAULT_MAX_DATA_LINE,
            max_auth_line: DEFAULT_MAX_AUTH_LINE,
            max_errors: DEFAULT_MAX_ERRORS,
            max_junk_commands: DEFAULT_MAX_JUNK_COMMANDS,
            max_transactions: DEFAULT_MAX_TRANSACTIONS,
            max_password_checks: DEFAULT_MAX_PASSWORD_CHECKS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            auth_max_failures: DEFAULT_AUTH_MAX_FAILURES,
            auth_lockout: Duration::from_secs(DEFAULT_AUTH_LOCKOUT),
            auth_failure_delay: Duration::from_millis(DEFAULT_AUTH_FAILURE_DELAY_MS),
            auth_throttle_entries: DEFAULT_AUTH_THROTTLE_ENTRIES,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(DEFAULT_COMMAND_TIMEOUT),
            // Postfix bounds writes with the same smtpd_timeout as reads.
            client_write: Duration::from_secs(DEFAULT_COMMAND_TIMEOUT),
            line_end: Duration::from_secs(DEFAULT_LINE_END_TIMEOUT),
            data_block: Duration::from_secs(DEFAULT_DATA_BLOCK_TIMEOUT),
            data_total: Duration::from_secs(DEFAULT_DATA_TOTAL_TIMEOUT),
            upstream_connect: Duration::from_secs(DEFAULT_UPSTREAM_CONNECT_TIMEOUT),
            upstream_command: Duration::from_secs(DEFAULT_UPSTREAM_COMMAND_TIMEOUT),
            upstream_final_reply: Duration::from_secs(DEFAULT_UPSTREAM_FINAL_REPLY_TIMEOUT),
            token_request: Duration::from_secs(DEFAULT_TOKEN_REQUEST_TIMEOUT),
            token_retry: Duration::from_secs(DEFAULT_TOKEN_RETRY),
            shutdown_grace: Duration::from_secs(DEFAULT_SHUTDOWN_GRACE),
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            enabled: true,
            size: DEFAULT_POOL_SIZE,
            idle_timeout: Duration::from_secs(DEFAULT_POOL_IDLE),
        }
    }
}

impl Default for UpstreamDialogue {
    /// Both on: Gmail and Microsoft 365 offer PIPELINING and CHUNKING, and each saves a
    /// round trip per message (tens of milliseconds towards a provider). Used only when the
    /// provider's EHLO offers them.
    fn default() -> Self {
        UpstreamDialogue {
            pipelining: true,
            chunking: true,
        }
    }
}
