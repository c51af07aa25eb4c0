//! DHCPv4 server (Managed and Proxy modes).
//!
//! - `packet`: the wire format (never panics on input; fuzzed).
//! - `boot`: which iPXE binary or script a booting client gets.
//! - `decide`: the answer to one request, pure but for the lease store.
//! - `leases`: dynamic leases, in memory and in an append-only journal.
//! - `server`: the sockets and the per-packet loop.

pub mod boot;
pub mod decide;
pub mod leases;
pub mod packet;
pub mod server;

#[cfg(test)]
mod tests;

pub use boot::{BootConfig, BootFiles};
pub use packet::{Message, ParseError, encode, parse, parse_request};
pub use server::{DhcpConfig, DhcpError, serve};
