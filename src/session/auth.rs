//! The AUTH dialogue (RFC 4954): PLAIN and LOGIN, with their 334 challenges, checked
//! against the local users behind the failed-login throttle.

use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Input;
use super::{Flow, Phase, Session};
use crate::credentials::secret::Secret;
use crate::logsafe::Untrusted;
use crate::replies::Say;
use crate::smtp::sasl::{self, Credentials, SaslError};
use crate::throttle::Verdict;

/// Why an AUTH dialogue ended without credentials.
enum AuthAbort {
    Sasl(SaslError),
    TooLong,
    Disconnect(Option<Say>),
}

impl From<SaslError> for AuthAbort {
    fn from(err: SaslError) -> Self {
        AuthAbort::Sasl(err)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<IO> {
    pub(super) async fn auth(&mut self, mechanism: &str, initial_response: Option<String>) -> Flow {
        if self.client.helo.is_none() {
            return self.reject(Say::SendHeloFirst);
        }
        if self.client.user.is_some() {
            return self.reject(Say::AuthAlreadyDone);
        }
        if matches!(self.phase, Phase::Transaction(_) | Phase::Spooled(_)) {
            return self.reject(Say::AuthInTransaction);
        }
        if !self.auth_allowed() {
            return self.reject(Say::EncryptionRequired);
        }
        let credentials = match mechanism {
            "PLAIN" => self.auth_plain(initial_response).await,
            "LOGIN" => self.auth_login(initial_response).await,
            _ => return self.reject(Say::AuthUnknownMechanism),
        };
        let credentials = match credentials {
            Ok(credentials) => credentials,
            Err(AuthAbort::Sasl(SaslError::Cancelled)) => return self.reject(Say::AuthCancelled),
            Err(AuthAbort::Sasl(SaslError::Malformed)) => return self.reject(Say::AuthBadBase64),
            Err(AuthAbort::TooLong) => return self.reject(Say::AuthLineTooLong),
            Err(AuthAbort::Disconnect(say)) => {
                if let Some(say) = say {
                    self.say(say);
                }
                return Flow::Close;
            }
        };
        let username = credentials.username.clone();
        let ip = self.peer.ip();
        let throttle = &self.relay.auth_throttle;
        // Replicas share lockouts (state/lockouts.rs): attackers round-robin them.
        let shared = self.relay.shared.clone();
        let shared_lock = match &shared {
            Some(shared) => shared.login_locked(ip, &username).await,
            None => false,
        };
        if shared_lock || throttle.check(ip, &username) == Verdict::LockedOut {
            tracing::warn!(mechanism, user = %Untrusted(&username), "login refused: locked out after too many failures");
            self.relay.metrics.limit_hit("auth_lockout");
            return self.reject(Say::AuthLockedOut);
        }
        match self.relay.users.verify(credentials).await {
            Some(user) => {
                throttle.succeeded(ip, &username);
                if let Some(shared) = &shared {
                    shared.login_succeeded(ip, &username).await;
                }
                tracing::Span::current().record("user", user.name.as_str());
                tracing::info!(mechanism, "authenticated");
                self.client.user = Some(user);
                self.say(Say::AuthSucceeded);
                Flow::Continue
            }
            None => {
                let (delay, mut locked_out) = throttle.failed(ip, &username);
                if let Some(shared) = &shared {
                    let limits = &self.relay.config.limits;
                    locked_out |= shared
                        .login_failed(ip, &username, limits.auth_max_failures, limits.auth_lockout)
                        .await;
                }
                if locked_out {
                    tracing::warn!(
                        mechanism,
                        user = %Untrusted(&username),
                        lockout_secs = self.params.auth_lockout.as_secs(),
                        "authentication failed; too many failures, locking out this client and user name"
                    );
                } else {
                    tracing::warn!(mechanism, user = %Untrusted(&username), delay_ms = delay.as_millis() as u64, "authentication failed");
                }
                // Slows guessing down; other sessions are not affected.
                tokio::time::sleep(delay).await;
                self.relay.metrics.auth_failures.inc();
                self.reject(Say::AuthFailed)
            }
        }
    }

    async fn auth_plain(&mut self, initial: Option<String>) -> Result<Credentials, AuthAbort> {
        let response = match initial {
            Some(response) => response,
            None => self.sasl_exchange("").await?,
        };
        let decoded = sasl::decode_response(&response)?;
        Ok(sasl::decode_plain(&decoded)?)
    }

    async fn auth_login(&mut self, initial: Option<String>) -> Result<Credentials, AuthAbort> {
        let username = match initial {
            Some(response) => response,
            // base64("Username:")
            None => self.sasl_exchange("VXNlcm5hbWU6").await?,
        };
        let username = sasl::decode_login_text(sasl::decode_response(&username)?)?;
        // base64("Password:")
        let password = self.sasl_exchange("UGFzc3dvcmQ6").await?;
        let password = sasl::decode_login_text(sasl::decode_response(&password)?)?;
        if username.is_empty() {
            return Err(AuthAbort::Sasl(SaslError::Malformed));
        }
        Ok(Credentials {
            username,
            password: Secret::new(password),
        })
    }

    /// Sends a 334 challenge and reads the client's response line.
    async fn sasl_exchange(&mut self, challenge: &'static str) -> Result<String, AuthAbort> {
        self.say(Say::AuthChallenge { challenge });
        let input = self
            .conn
            .read_line(self.params.max_auth_line, self.params.command_timeout, None)
            .await;
        match input {
            Input::Line(line) => {
                String::from_utf8(line).map_err(|_| AuthAbort::Sasl(SaslError::Malformed))
            }
            Input::TooLong => Err(AuthAbort::TooLong),
            Input::LineNotEnded => Err(AuthAbort::Disconnect(Some(Say::LineNotEnded))),
            Input::TimedOut => Err(AuthAbort::Disconnect(Some(Say::CommandTimeout))),
            Input::Closed | Input::ShutDown => Err(AuthAbort::Disconnect(None)),
        }
    }
}
