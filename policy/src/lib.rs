//! busd-policy: dbus-daemon's XML configuration (`<busconfig>`).
//!
//! Layout:
//! - [`config`]: the typed configuration and its loader (`<include>`, `<includedir>`, merge
//!   rules, file/line errors).
//! - [`limits`]: `<limit>` names and dbus-daemon's defaults.
//!
//! Policy *evaluation* is not here yet: [`config::Config::check_policy_supported`] refuses a
//! configuration whose policy would deny anything, so nothing is silently ignored.

pub mod config;
pub mod limits;

pub use config::{Config, Error, PolicyContext, PolicyRule, ServiceDir};
pub use limits::Limits;
