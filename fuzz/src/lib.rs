//! Checks shared by the fuzz targets in `fuzz_targets/`.

use girder::pxe::dhcp::packet::Options;
use girder::pxe::dhcp::{Message, encode, parse};

/// What `parse(encode(message))` must give back: the same message, with every
/// option longer than 255 bytes split into its RFC 3396 parts (an empty
/// option stays one empty option).
pub fn dhcp_after_encode(message: &Message) -> Message {
    let mut options = Options::default();
    for (code, value) in message.options.iter() {
        if value.is_empty() {
            options.push(code, value);
        }
        for part in value.chunks(255) {
            options.push(code, part);
        }
    }
    Message { options, ..message.clone() }
}

/// Encodes `message`, parses the bytes again and checks nothing was lost or
/// changed, and that encoding what was parsed gives the same bytes. Returns
/// the encoded bytes.
pub fn dhcp_round_trip(message: &Message) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(message, &mut bytes);
    assert!(bytes.len() >= 300, "encoded message of {} bytes is below the BOOTP minimum", bytes.len());
    let again = match parse(&bytes) {
        Ok(again) => again,
        Err(error) => panic!("an encoded message does not parse again: {error}\nmessage: {message:?}"),
    };
    assert_eq!(again, dhcp_after_encode(message), "the message changed through encode and parse");
    let mut twice = Vec::new();
    encode(&again, &mut twice);
    assert_eq!(twice, bytes, "encoding the re-parsed message gives other bytes");
    bytes
}

/// Every accessor the server uses on a request; none may panic.
pub fn dhcp_read_everything(message: &Message) {
    let _ = message.mac();
    let _ = message.message_type();
    let _ = message.type_label();
    let _ = message.requested_ip();
    let _ = message.server_id();
    let _ = message.parameter_list();
    let _ = message.max_message_size();
    let _ = message.vendor_class();
    let _ = message.client_id();
    let _ = message.user_class_is_ipxe();
    let _ = message.client_arch();
    let _ = message.client_ndi();
    let _ = message.client_machine_id();
    let _ = message.relay_agent_info();
    let _ = message.has_ipxe_encap();
    let _ = message.vendor_specific();
    let _ = message.file_name();
    let _ = girder::pxe::dhcp::boot::is_boot_client(message);
    let _ = girder::pxe::dhcp::boot::client_arch(message);
}
