//! Any datagram through every IPMI decoder girder has (RMCP, RMCP+ with and
//! without a session, RAKP, command answers, FRU): it never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    girder::bmc::ipmi::decode_untrusted(data);
});
