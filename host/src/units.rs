//! Byte sizes for people; the implementation lives in the protocol crate, where the planner's
//! explanations use it too.

pub use modelhost_protocol::units::{format_bytes, parse_size};
