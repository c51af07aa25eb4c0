#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/: real DHCP and TFTP
packets, built here from the RFCs rather than with girder's own encoder.

    python3 fuzz/seeds.py

The files are committed; rerun this after changing it.
"""

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
