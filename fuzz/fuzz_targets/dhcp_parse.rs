//! Any datagram through the DHCP parser: it never panics, and whatever it
//! accepts encodes and parses back to the same message.

#![no_main]

use girder::pxe::dhcp::packet::BOOTREQUEST;
use girder::pxe::dhcp::{parse, parse_request};
use girder_fuzz::{dhcp_read_everything, dhcp_round_trip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    let request = parse_request(data);
    match &parsed {
        Ok(message) => {
            // parse_request is parse restricted to BOOTREQUEST.
            assert_eq!(request.is_ok(), message.op == BOOTREQUEST);
            if let Ok(request) = &request {
                assert_eq!(request, message);
            }
            dhcp_read_everything(message);
            dhcp_round_trip(message);
        }
        Err(error) => assert_eq!(request.as_ref().err(), Some(error)),
    }
});
