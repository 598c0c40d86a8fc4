//! What the relay knows that nobody else may: [`secret::Secret`] (a value that never
//! prints), the encrypted token [`store`] (refresh tokens, compare-and-swap writes), and
//! Google [`service_account`] keys (signed JWT assertions, no consent needed).

pub mod secret;
pub mod service_account;
pub mod store;
pub mod store_format;
