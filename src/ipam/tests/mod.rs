//! Tests of the ipam module: one file per submodule, then the properties.

mod conduit;
mod props;
mod v4;
mod v6;

use super::v4::{GroupAddress, Ipv4Cidr, Pool, Range};
use std::net::Ipv4Addr;

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn cidr(text: &str) -> Ipv4Cidr {
    text.parse().unwrap()
}

fn range(name: &str, start: &str, end: &str) -> Range {
    Range { name: name.to_string(), start: ip(start), end: ip(end) }
}

fn pool(network: &str, net: &str, gateway: Option<&str>, ranges: &[(&str, &str, &str)]) -> Pool {
    Pool::new(network, cidr(net), gateway.map(ip), ranges.iter().map(|(n, s, e)| range(n, s, e)).collect()).unwrap()
}

/// admin: 10.0.0.0/24, gateway .1, static range .10 to .99.
fn admin() -> Pool {
    pool("admin", "10.0.0.0/24", Some("10.0.0.1"), &[("nodes", "10.0.0.10", "10.0.0.99")])
}

fn group_address(net: &str, address: &str) -> GroupAddress {
    GroupAddress { cidr: cidr(net), address: ip(address) }
}
