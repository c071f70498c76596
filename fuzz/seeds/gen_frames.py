#!/usr/bin/env python3
"""Writes the binary seeds of frame_decoder and arp_conflict (run from fuzz/).

Frames are built by hand from the wire format in peer/frame.rs
(len u32 BE | version u16 BE | postcard(Message)) and the postcard layout of
triad_core::Message (from: u8, epoch: varint u64, body: varint variant index
then fields). Check them after a change with
TRIAD_FUZZ_DEBUG=1 cargo fuzz run -s none frame_decoder seeds/frame_decoder/*
which prints what each seed decodes to.
"""
import struct

VERSION = 1


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pos(epoch, seq):
    return varint(epoch) + varint(seq)


def msg(frm, epoch, variant, fields=b""):
    return bytes([frm]) + varint(epoch) + varint(variant) + fields


def frame(payload, version=VERSION, extra_len=0):
    body = struct.pack(">H", version) + payload
    return struct.pack(">I", len(body) + extra_len) + body


HEARTBEAT = msg(1, 7, 0, varint(99))
VOTE = msg(2, 2**64 - 1, 5, pos(3, 4) + b"\x01")
TIMEOUT_NOW = msg(3, 0, 7)
ALL = [
    HEARTBEAT,
    msg(2, 7, 1, varint(99)),                    # HeartbeatAck
    msg(3, 6, 2, pos(6, 300) + b"\x00"),         # Ping
    msg(2, 8, 3, pos(6, 300)),                   # PreVote
    msg(1, 8, 4, b"\x01"),                       # PreVoteReply
    VOTE,
    msg(3, 8, 6, b"\x00"),                       # VoteReply
    TIMEOUT_NOW,
]

seeds = {
    # First byte: chunking selector (0x00 whole, 0x40 bytewise, 0x80 <=7, 0xc0 <=64).
    "frame_decoder/three_frames": b"\x00" + b"".join(frame(m) for m in [HEARTBEAT, VOTE, TIMEOUT_NOW]),
    "frame_decoder/every_kind_bytewise": b"\x40" + b"".join(frame(m) for m in ALL),
    "frame_decoder/bad_then_good": b"\x85"
    + frame(HEARTBEAT, version=VERSION + 1)               # other version
    + struct.pack(">IH", 4, VERSION) + b"\xff\xff"        # payload not postcard
    + struct.pack(">I", 1) + b"\x09"                      # too short for version
    + frame(TIMEOUT_NOW + b"\x00")                        # trailing byte
    + frame(VOTE),
    "frame_decoder/oversized": b"\xc3" + struct.pack(">I", 65537) + frame(HEARTBEAT),
}

VIP = bytes([192, 0, 2, 10])
OTHER_IP = bytes([192, 0, 2, 11])
OURS = bytes([0x02, 0, 0, 0, 0, 0x01])
THEIRS = bytes([0x02, 0, 0, 0, 0, 0x02])


def arp(mac, op, spa, tpa):
    eth = b"\xff" * 6 + mac + b"\x08\x06"
    return eth + struct.pack(">HHBBH", 1, 0x0800, 6, 4, op) + mac + spa + b"\x00" * 6 + tpa


# arp_conflict input: vip (4) ++ own_mac (6) ++ Ethernet frame.
seeds["arp_conflict/foreign_garp"] = VIP + OURS + arp(THEIRS, 1, VIP, VIP)
seeds["arp_conflict/foreign_reply"] = VIP + OURS + arp(THEIRS, 2, VIP, bytes([192, 0, 2, 1]))
seeds["arp_conflict/own_garp"] = VIP + OURS + arp(OURS, 1, VIP, VIP)
seeds["arp_conflict/who_has_vip"] = VIP + OURS + arp(THEIRS, 1, OTHER_IP, VIP)

for name, data in seeds.items():
    with open(f"seeds/{name}", "wb") as f:
        f.write(data)
