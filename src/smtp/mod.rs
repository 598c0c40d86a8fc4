//! SMTP protocol pieces that need no I/O: command parsing for the local
//! server side, reply formatting and parsing, the DATA-phase scanner, the
//! EHLO capability reader for the upstream client side, and the canonical
//! form of mail addresses that sender policy is decided on.
//!
//! Everything here is pure and synchronous so it can be unit-, property- and
//! fuzz-tested without sockets.

pub mod address;
pub mod bdat;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod reply;
pub mod sasl;
pub mod unstuff;
pub mod xoauth2;

pub use address::{canonical, mailbox_list, AddressError, CanonicalAddress};
pub use command::{parse_command, Command, CommandError, Param};
pub use data::{dot_stuff, BareLineEndings, DataLimits, DataProblem, DataScanner, Scan};
pub use ehlo::Capabilities;
pub use reply::{parse_reply, EnhancedCode, Reply, ReplyError, ReplyParse};
pub use unstuff::Unstuffer;
