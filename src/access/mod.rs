//! Who is calling and what they may run: bearer tokens verified against trusted issuers,
//! claims mapped to roles and a tenant by the access policy, and the [`Grant`] without which
//! no query runs.

pub mod caller;
pub mod limits;
pub mod policy;
pub mod report;
pub mod token;
pub mod verified;

pub use caller::{AccessError, Caller, Grant, Who};
pub use policy::{AccessPolicy, Place};
pub use token::{KeysStatus, TokenError, TokenVerifier, VerifyOptions};
