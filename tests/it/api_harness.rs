//! The API harness moved into the shared one, as `crate::helpers::api`; this name stays for test
//! files written against it. New files import `crate::helpers::api::*`.

pub use crate::helpers::api::*;
