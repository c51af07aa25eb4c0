//! Any body through the Redfish model and inventory: whatever a BMC sends,
//! reading it never panics (every field is optional and parsed on its own).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hardware = girder::bmc::redfish::read_untrusted(data);
    // What was read is consistent: no negative sizes or counts.
    assert!(hardware.memory_mebibytes.is_none_or(|m| m >= 0), "{hardware:?}");
    for disk in &hardware.storage {
        assert!(disk.size_bytes.is_none_or(|b| b >= 0), "{hardware:?}");
    }
});
