#!/usr/bin/env bash
# Writes the message and frame seeds (fuzz/seeds/{message,frame}) from real traffic: a
# busd session bus driven by dbus-send, gdbus, busctl and dbus-python, recorded by
# `dbus-monitor --binary` and cut into one file per message. Frames are those messages
# behind a fast-path routing header (docs/fastpath-protocol.md) from member 1 to the daemon.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd .. && pwd)
cargo build --quiet --manifest-path "$root/Cargo.toml" -p busd
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

"$root/target/debug/busd" --session --nofork --address="unix:path=$work/bus" &
for _ in $(seq 50); do [ -S "$work/bus" ] && break; sleep 0.1; done
export DBUS_SESSION_BUS_ADDRESS="unix:path=$work/bus"
dbus-monitor --session --binary >"$work/capture" &
sleep 0.5

dbus-send --session --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.ListNames >/dev/null
dbus-send --session --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetNameOwner string:org.freedesktop.DBus >/dev/null
dbus-send --session --type=signal /org/example org.example.Seeds.Hello string:hi int32:7 'array:string:a,b' 'dict:string:int32:k,1' variant:uint64:9 >/dev/null || true
dbus-send --session --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NoSuchMethod >/dev/null 2>&1 || true
gdbus introspect --session --dest org.freedesktop.DBus --object-path / >/dev/null
gdbus call --session --dest org.freedesktop.DBus --object-path / --method org.freedesktop.DBus.GetConnectionCredentials org.freedesktop.DBus >/dev/null || true
busctl --user --address="$DBUS_SESSION_BUS_ADDRESS" list >/dev/null 2>&1 || busctl --address="$DBUS_SESSION_BUS_ADDRESS" list >/dev/null || true
/usr/bin/python3 - <<'PY'
import dbus
bus = dbus.SessionBus()
bus.request_name("org.example.Seeds")
bus.add_match_string("type='signal',interface='org.example.Seeds',member='Tick',arg0='x',path_namespace='/org'")
bus.add_match_string("type='signal',sender='org.freedesktop.DBus',arg0namespace='org.example'")
d = bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
d.GetId(dbus_interface="org.freedesktop.DBus")
d.Get("org.freedesktop.DBus", "Features", dbus_interface="org.freedesktop.DBus.Properties")
bus.release_name("org.example.Seeds")
PY
sleep 0.5
kill %2 2>/dev/null || true
wait %2 2>/dev/null || true

rm -rf seeds/message/capture-* seeds/frame/capture-*
mkdir -p seeds/message seeds/frame
/usr/bin/python3 - "$work/capture" <<'PY'
import hashlib, struct, sys
data = open(sys.argv[1], "rb").read()
def fnv(b):
    h = 0x811c9dc5
    for c in b:
        h = ((h ^ c) * 0x01000193) & 0xffffffff
    return h
seen = set()
off = 0
while off + 16 <= len(data):
    e = "<" if data[off:off+1] == b"l" else ">"
    body, = struct.unpack(e + "I", data[off+4:off+8])
    fields, = struct.unpack(e + "I", data[off+12:off+16])
    total = ((16 + fields + 7) & ~7) + body
    msg = data[off:off+total]
    off += total
    name = hashlib.sha1(msg).hexdigest()[:16]
    if name in seen:
        continue
    seen.add(name)
    open(f"seeds/message/capture-{name}", "wb").write(msg)
    # Routing header: magic, version|type|flags|routing, sender 1, to the daemon, no hashes
    # (the daemon does not check them), an empty bloom.
    head = struct.pack(">IIII", 0x42555344, (1 << 24) | (msg[1] << 16) | (msg[2] << 8), 1, 0xffffffff)
    head += bytes(96 - len(head))
    open(f"seeds/frame/capture-{name}", "wb").write(head + msg)
print(f"{len(seen)} messages")
PY
