"""frames.py: hand-encoded replication frames for hostile-peer tests.

Encodes just enough protobuf (varints and length-delimited fields) to
build the messages of proto/replication.proto without a protobuf library.
"""
import struct


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def f_int(num, v):
    return varint(num << 3) + varint(v)


def f_bytes(num, b):
    if isinstance(b, str):
        b = b.encode()
    return varint((num << 3) | 2) + varint(len(b)) + b


BODY = {"hello": 1, "welcome": 2, "announce": 3, "state": 4, "writes": 5,
        "sync": 6, "sync_done": 7, "point": 8, "ack": 9, "error": 10}


def frame(kind, body, flags=0, length=None, type_=None):
    payload = f_bytes(BODY[kind], body)
    n = len(payload) if length is None else length
    t = BODY[kind] if type_ is None else type_
    return struct.pack(">IHH", n, t, flags) + payload


def hello(site, protocol=1):
    return frame("hello", f_int(1, protocol) + f_bytes(2, site))


def announce(vm, disks, epoch):
    body = f_bytes(1, vm)
    for name, size in disks:
        body += f_bytes(2, f_bytes(1, name) + f_int(2, size))
    return frame("announce", body + f_int(4, epoch))


def sync_done(vm, base):
    return frame("sync_done", f_bytes(1, vm) + f_int(2, base))


def entry(seq, disk, offset, length, data=b"", zero=False):
    e = f_int(1, seq) + f_int(2, disk) + f_int(3, offset) + f_int(4, length)
    if zero:
        e += f_int(5, 1)
    if data:
        e += f_bytes(6, data)
    return e


def writes(vm, entries):
    body = f_bytes(1, vm)
    for e in entries:
        body += f_bytes(2, e)
    return frame("writes", body)


def point(vm, pid, seq, time_ms=0):
    return frame("point", f_bytes(1, vm) + f_int(2, pid) + f_int(3, seq) +
                 f_int(4, time_ms))
