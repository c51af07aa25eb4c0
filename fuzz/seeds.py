#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/: real DHCP and TFTP
packets, built here from the RFCs rather than with girder's own encoder;
Redfish resources shaped as the DMTF schemas and vendors give them; IPMI
datagrams and command answers laid out as the IPMI 2.0 specification says.

    python3 fuzz/seeds.py

The files are committed; rerun this after changing it.
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
COOKIE = bytes([99, 130, 83, 99])

KNOWN_MAC = bytes.fromhex("525400000001")  # node-a in the dhcp_decide snapshot
DYNAMIC_MAC = bytes.fromhex("525400000002")  # node-b: no static address
STRANGER_MAC = bytes.fromhex("0c42a1b2c3d4")  # unknown: discovery
GUID = bytes([0]) + bytes.fromhex("4c4c4544003510308052b7c04f4e3132")  # option 97: type 0 + UUID


def ip(text):
    return bytes(int(part) for part in text.split("."))


def option(code, value):
    return bytes([code, len(value)]) + value


def dhcp(op, mac, options, xid=0x3903F326, secs=4, flags=0x8000, ciaddr="0.0.0.0", yiaddr="0.0.0.0",
         siaddr="0.0.0.0", giaddr="0.0.0.0", sname=b"", file=b""):
    header = struct.pack("!BBBBIHH", op, 1, 6, 0, xid, secs, flags)
    header += ip(ciaddr) + ip(yiaddr) + ip(siaddr) + ip(giaddr)
    header += mac.ljust(16, b"\0") + sname.ljust(64, b"\0") + file.ljust(128, b"\0")
    body = header + COOKIE + b"".join(option(code, value) for code, value in options) + b"\xff"
    return body.ljust(300, b"\0")  # BOOTP minimum


# Option 55 as a PXE ROM sends it, and as iPXE does.
PXE_PARAMS = bytes([1, 2, 3, 5, 6, 11, 12, 13, 15, 16, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58, 59, 60,
                    66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135])
IPXE_PARAMS = bytes([1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 129, 130, 131, 132, 133, 134, 135, 175, 203])
# Option 175 as iPXE fills it: priority, keep-san, bus-id, HTTP, iSCSI, PXE-ext, version.
IPXE_ENCAP = option(1, b"\x00") + option(8, b"\x01") + option(19, b"\x01") + option(17, b"\x01") \
    + option(16, b"\x01") + option(235, b"\x01\x02\x00")
UNDI_X86 = b"PXEClient:Arch:00000:UNDI:002001"


def discover_pxe_bios():
    return dhcp(1, STRANGER_MAC, [
        (53, b"\x01"), (57, struct.pack("!H", 1260)), (55, PXE_PARAMS), (97, GUID), (94, b"\x01\x02\x01"),
        (93, b"\x00\x00"), (60, UNDI_X86)])


def discover_ipxe():
    """The DISCOVER of the brief: a PXE client that is iPXE already (77, 175)."""
    return dhcp(1, KNOWN_MAC, [
        (53, b"\x01"), (57, struct.pack("!H", 1472)), (93, b"\x00\x00"), (94, b"\x01\x02\x01"), (97, GUID),
        (60, UNDI_X86), (77, b"iPXE"), (55, IPXE_PARAMS), (175, IPXE_ENCAP), (61, b"\x01" + KNOWN_MAC)], xid=0x1A2B3C4D)


def discover_uefi_relayed():
    """A UEFI x64 PXE ROM behind a relay (giaddr, option 82)."""
    agent = option(1, b"Gi0/1:vlan10") + option(2, b"leaf-1")
    return dhcp(1, DYNAMIC_MAC, [
        (53, b"\x01"), (55, PXE_PARAMS), (93, b"\x00\x07"), (94, b"\x01\x03\x10"), (97, GUID),
        (60, b"PXEClient:Arch:00007:UNDI:003016"), (82, agent)], giaddr="10.0.0.1", flags=0, secs=0, xid=0x00C0FFEE)


def discover_http_boot():
    return dhcp(1, STRANGER_MAC, [
        (53, b"\x01"), (55, bytes([1, 3, 6, 15, 43, 60, 66, 67])), (93, b"\x00\x10"), (94, b"\x01\x03\x10"),
        (97, GUID), (60, b"HTTPClient:Arch:00016:UNDI:003016")], xid=0x77777777)


def request_selecting():
    """DHCPREQUEST after the offer: requested address and server identifier."""
    return dhcp(1, STRANGER_MAC, [
        (53, b"\x03"), (57, struct.pack("!H", 1260)), (55, PXE_PARAMS), (97, GUID), (94, b"\x01\x02\x01"),
        (93, b"\x00\x00"), (60, UNDI_X86), (50, ip("10.0.0.200")), (54, ip("10.0.0.2"))])


def request_known():
    return dhcp(1, KNOWN_MAC, [
        (53, b"\x03"), (50, ip("10.0.0.10")), (54, ip("10.0.0.2")), (61, b"\x01" + KNOWN_MAC), (12, b"node-a"),
        (55, bytes([1, 3, 6, 12, 15, 28, 42, 51, 54, 58, 59, 119]))], xid=0x0BADF00D, flags=0)


def request_proxy_port():
    """To the ProxyDHCP port (4011): a client that already has its address."""
    return dhcp(1, KNOWN_MAC, [
        (53, b"\x03"), (55, PXE_PARAMS), (93, b"\x00\x07"), (97, GUID), (60, b"PXEClient:Arch:00007:UNDI:003016"),
        (43, bytes([71, 4, 0x80, 0, 0, 0, 255]))], ciaddr="192.168.50.23", flags=0)


def release():
    return dhcp(1, DYNAMIC_MAC, [(53, b"\x07"), (54, ip("10.0.0.2"))], ciaddr="10.0.0.100", flags=0)


def decline():
    return dhcp(1, DYNAMIC_MAC, [(53, b"\x04"), (50, ip("10.0.0.101")), (54, ip("10.0.0.2"))], flags=0)


def inform():
    return dhcp(1, STRANGER_MAC, [(53, b"\x08"), (55, bytes([1, 3, 6, 15]))], ciaddr="10.0.0.150", flags=0)


def overloaded():
    """Option 52 = 3: `file` and then `sname` carry options too."""
    file = option(93, b"\x00\x00") + option(60, UNDI_X86) + b"\xff"
    sname = option(97, GUID) + b"\xff"
    return dhcp(1, STRANGER_MAC, [(53, b"\x01"), (52, b"\x03"), (55, PXE_PARAMS)], sname=sname, file=file)


def offer_reply():
    """A BOOTREPLY, as girder sends it (parse takes both directions)."""
    return dhcp(2, STRANGER_MAC, [
        (53, b"\x02"), (54, ip("10.0.0.2")), (51, struct.pack("!I", 600)), (58, struct.pack("!I", 300)),
        (59, struct.pack("!I", 525)), (1, ip("255.255.255.0")), (3, ip("10.0.0.1")), (6, ip("10.0.0.53")),
        (15, b"lab.example"), (26, struct.pack("!H", 9000)), (28, ip("10.0.0.255")), (66, b"10.0.0.2"),
        (67, b"undionly.kpxe"), (97, GUID)], yiaddr="10.0.0.200", siaddr="10.0.0.2", file=b"undionly.kpxe")


def tftp_request(op, filename, mode, options):
    body = struct.pack("!H", op) + filename + b"\0" + mode + b"\0"
    return body + b"".join(name + b"\0" + value + b"\0" for name, value in options)


TFTP = {
    "rrq-undionly-options": tftp_request(1, b"undionly.kpxe", b"octet",
                                         [(b"blksize", b"1468"), (b"tsize", b"0"), (b"windowsize", b"8")]),
    "rrq-efi-timeout": tftp_request(1, b"arm64-efi/ipxe.efi", b"octet",
                                    [(b"tsize", b"0"), (b"blksize", b"1408"), (b"timeout", b"3")]),
    "rrq-plain-netascii": tftp_request(1, b"pxelinux.cfg/default", b"netascii", []),
    "wrq": tftp_request(2, b"upload.bin", b"octet", [(b"tsize", b"4096")]),
    "data": struct.pack("!HH", 3, 1) + bytes(range(256)) * 2,
    "ack": struct.pack("!HH", 4, 1),
    "error": struct.pack("!HH", 5, 1) + b"File not found\0",
    "oack": struct.pack("!H", 6) + b"blksize\x001468\x00tsize\x0065536\x00windowsize\x008\x00",
}

DHCP = {
    "discover-pxe-bios": discover_pxe_bios(),
    "discover-ipxe": discover_ipxe(),
    "discover-uefi-relayed": discover_uefi_relayed(),
    "discover-http-boot": discover_http_boot(),
    "request-selecting": request_selecting(),
    "request-known-node": request_known(),
    "request-proxy-port": request_proxy_port(),
    "release": release(),
    "decline": decline(),
    "inform": inform(),
    "discover-overloaded": overloaded(),
}


def write(target, packets):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for name, packet in packets.items():
        with open(os.path.join(directory, name), "wb") as out:
            out.write(packet)


write("dhcp_parse", {**DHCP, "offer-reply": offer_reply()})
write("dhcp_decide", DHCP)
write("tftp_parse", TFTP)


def redfish(value):
    return json.dumps(value, indent=1).encode()


REDFISH = {
    "system": redfish({
        "@odata.id": "/redfish/v1/Systems/1", "Id": "1", "Manufacturer": "Contoso", "Model": "3500",
        "SerialNumber": "437XR1138R2", "UUID": "38947555-7742-3448-3784-823347823834", "PowerState": "On",
        "BiosVersion": "P79 v1.45",
        "Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once",
                 "BootSourceOverrideMode": "UEFI",
                 "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Cd", "Hdd", "BiosSetup"]},
        "ProcessorSummary": {"Count": 2, "CoreCount": 16, "LogicalProcessorCount": 32, "Model": "Xeon"},
        "MemorySummary": {"TotalSystemMemoryGiB": 96},
        "Processors": {"@odata.id": "/redfish/v1/Systems/1/Processors"},
        "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/1"}]},
        "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                                              "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "PushPowerButton"]}},
        "Oem": {"Hpe": {"PostState": "FinishedPost"}},
    }),
    "collection": redfish({"Members@odata.count": 2, "Members": [{"@odata.id": "/redfish/v1/Systems/1"},
                                                                  {"@odata.id": "/redfish/v1/Systems/2"}],
                           "Members@odata.nextLink": "/redfish/v1/Systems?$skip=2"}),
    "processor": redfish({"ProcessorType": "CPU", "Model": "Xeon 7xxx", "TotalCores": 8, "TotalThreads": 16,
                          "InstructionSet": "x86-64", "Status": {"State": "Enabled", "Health": "OK"}}),
    "memory": redfish({"CapacityMiB": 32768, "Status": {"State": "Absent"}}),
    "nic": redfish({"Id": "NIC1", "MACAddress": "52:54:00:00:00:01", "SpeedMbps": 10000, "LinkStatus": "LinkUp"}),
    "drive": redfish({"Id": "Disk0", "Name": "Disk 0", "CapacityBytes": 480103981056, "MediaType": "SSD",
                      "SerialNumber": "S4X1", "Model": "SAMSUNG", "Protocol": "SATA"}),
    "simple-storage": redfish({"Devices": [{"Name": "SATA 0", "CapacityBytes": 10737418240,
                                            "Status": {"State": "Enabled"}}]}),
    "manager": redfish({"FirmwareVersion": "2.78", "Model": "iLO 5"}),
    "action-info": redfish({"Parameters": [{"Name": "ResetType", "AllowableValues": ["On", "ForceOff"]}]}),
    "error": redfish({"error": {"code": "Base.1.8.GeneralError", "message": "failed",
                                "@Message.ExtendedInfo": [{"Message": "The value for BootSourceOverrideTarget is not allowed."}]}}),
    "weak-types": redfish({"PowerState": 1, "UUID": "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", "Boot": [],
                           "MemorySummary": {"TotalSystemMemoryGiB": "96"}, "Members": {"@odata.id": 3}}),
}


def ipmi_checksum(data):
    return (-sum(data)) & 0xFF


def ipmi_response(netfn, cmd, code, data):
    header = bytes([0x81, netfn << 2])
    body = bytes([0x20, 0x04, cmd, code]) + data
    return header + bytes([ipmi_checksum(header)]) + body + bytes([ipmi_checksum(body)])


def rmcp_v15(payload):
    return bytes([0x06, 0x00, 0xFF, 0x07, 0x00]) + struct.pack("<II", 0, 0) + bytes([len(payload)]) + payload


def rmcp_v20(payload_type, payload, session_id=0):
    return bytes([0x06, 0x00, 0xFF, 0x07, 0x06, payload_type]) + struct.pack("<IIH", session_id, 0, len(payload)) + payload


def fru():
    def area(fixed, fields):
        body = bytes([0x01, 0]) + fixed
        for field in fields:
            body += bytes([0xC0 | len(field)]) + field
        body += bytes([0xC1])
        body += bytes((8 - (len(body) + 1) % 8) % 8)
        body = body[:1] + bytes([(len(body) + 1) // 8]) + body[2:]
        return body + bytes([ipmi_checksum(body)])
    product = area(bytes([0x19]), [b"Girder Labs", b"Sim Server", b"P-1", b"A", b"SIM-0001", b"", b""])
    header = bytes([0x01, 0, 0, 0, 1, 0, 0])
    return header + bytes([ipmi_checksum(header)]) + product


IPMI = {
    "device-id": ipmi_response(0x07, 0x01, 0, bytes([0x20, 0x81, 0x01, 0x23, 0x02, 0xBF]) + struct.pack("<I", 4753)[:3] + struct.pack("<H", 0x0100)),
    "chassis-status": ipmi_response(0x01, 0x01, 0, bytes([0x01, 0x00, 0x00])),
    "boot-flags": ipmi_response(0x01, 0x09, 0, bytes([0x01, 0x05, 0xA0, 0x04, 0x00, 0x00, 0x00])),
    "system-guid": ipmi_response(0x07, 0x37, 0, bytes.fromhex("4c4c4544003252108030b4c04f4e4e32")),
    "completion-error": ipmi_response(0x07, 0x01, 0xC1, b""),
    "v15-auth-capabilities": rmcp_v15(ipmi_response(0x07, 0x38, 0, bytes([0x01, 0x80, 0x14, 0x02, 0, 0, 0, 0]))),
    "open-session-response": rmcp_v20(0x11, bytes([0x01, 0x00, 0x04, 0x00]) + struct.pack("<II", 0xA0A2A3A4, 0x02000001)
                                      + bytes([0x00, 0, 0, 8, 0x01, 0, 0, 0, 0x01, 0, 0, 8, 0x01, 0, 0, 0, 0x02, 0, 0, 8, 0x01, 0, 0, 0])),
    "rakp2": rmcp_v20(0x13, bytes([0x01, 0x00, 0, 0]) + struct.pack("<I", 0xA0A2A3A4) + bytes(range(16)) + bytes(16) + bytes(20)),
    "rakp4": rmcp_v20(0x15, bytes([0x01, 0x00, 0, 0]) + struct.pack("<I", 0xA0A2A3A4) + bytes(12)),
    "asf-pong": bytes([0x06, 0x00, 0xFF, 0x06]) + bytes(12),
    "fru": fru(),
}

write("redfish_read", REDFISH)
write("ipmi_decode", IPMI)
