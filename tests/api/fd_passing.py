#!/usr/bin/env python3
"""Tap devices handed to the VMM as file descriptors over its API socket (SCM_RIGHTS), the way
Cloud Hypervisor's clients (libvirt, Kata) pass them, so the VMM needs no privilege to create
taps. An independent client: Python's socket.send_fds and a raw HTTP/1.1 request.

    fd_passing.py VMM_BINARY NET_RX_GUEST WORKDIR

Run as root inside a network namespace of the caller's (the taps are created here). Checks:
- vm.add-net with a tap descriptor between vm.create and vm.boot; the guest's NIC then
  receives frames sent into that tap (the net_rx guest prints "rx N" for each);
- refusals, each closing what was passed (the VMM's descriptor count does not grow): a
  descriptor that is not a tap, a tap without IFF_VNET_HDR, two for one NIC, fds named but
  none sent, descriptors sent with a request that takes none;
- a migration whose destination got its NIC through `net_fds` on vm.receive-migration: the
  guest receives frames on the destination's tap after the move.
Every process it starts is stopped (by PID) before it exits.
"""

import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
MAC = "52:54:00:00:00:0a"
MAC_BYTES = bytes.fromhex(MAC.replace(":", ""))


def fail(msg):
    print(f"fd_passing: FAIL: {msg}", flush=True)
    raise SystemExit(1)


def open_tap(name, flags=IFF_TAP | IFF_NO_PI | IFF_VNET_HDR):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    return fd


def call(sock_path, method, endpoint, body=None, fds=()):
    """One request on a new connection, with `fds` passed alongside its bytes."""
    data = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n").encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(sock_path)
    if fds:
        socket.send_fds(s, [head + data], list(fds))
    else:
        s.sendall(head + data)
    raw = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        raw += chunk
    s.close()
    head, _, body_bytes = raw.partition(b"\r\n\r\n")
    status = int(head.split(b"\r\n")[0].split(b" ")[1])
    return status, (json.loads(body_bytes) if body_bytes else None)


def expect(sock_path, method, endpoint, status, body=None, fds=(), contains=None):
    got, answer = call(sock_path, method, endpoint, body, fds)
    if got != status:
        fail(f"{method} {endpoint}: expected {status}, got {got}: {answer}")
    if contains is not None and contains not in json.dumps(answer):
        fail(f"{method} {endpoint}: {contains!r} is not in the answer {answer}")
    return answer


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_until(what, pred, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    fail(f"timed out waiting for {what}")


def received(path):
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return set()
    return {int(n) for n in re.findall(r"^rx (\d+)\r?$", text, re.M)}


def send_frames(tap, seqs):
    subprocess.run(["ip", "link", "set", tap, "up"], check=True)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((tap, 0))
    for seq in seqs:
        frame = MAC_BYTES + bytes([2, 0, 0, 0, 0, 0x77]) + b"\x88\xb5" + struct.pack("<I", seq)
        s.send(frame.ljust(60, b"\0"))
        time.sleep(0.002)
    s.close()


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("fd_passing: terminated"))
    vmm, guest, work = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(work, mode=0o700, exist_ok=True)
    procs = []

    def start_vmm(name):
        sock = os.path.join(work, f"{name}.sock")
        log_path = os.path.join(work, f"{name}.log")
        log = open(log_path, "w")
        p = subprocess.Popen([vmm, "--runtime-dir", work, "--api-socket", sock],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        wait_until(f"{name}'s API socket", lambda: os.path.exists(sock) and call(sock, "GET", "vmm.ping")[0] == 200)
        return sock, log_path, p

    try:
        src, _, src_proc = start_vmm("src")
        console = os.path.join(work, "src.console")
        expect(src, "PUT", "vm.create", 204, {
            "cpus": {"boot_vcpus": 1}, "memory": {"size": 64 << 20},
            "payload": {"kernel": guest}, "serial": {"mode": "File", "file": console}})

        # Refusals: each closes what came with it.
        before = open_fds(src_proc.pid)
        null = os.open("/dev/null", os.O_RDONLY)
        expect(src, "PUT", "vm.add-net", 400, {"mac": MAC}, [null], contains="not an attached tap")
        plain = open_tap("fdtapx", IFF_TAP | IFF_NO_PI)
        expect(src, "PUT", "vm.add-net", 400, {"mac": MAC}, [plain], contains="IFF_VNET_HDR")
        os.close(plain)
        t1, t2 = open_tap("fdtapy"), open_tap("fdtapz")
        expect(src, "PUT", "vm.add-net", 400, {"mac": MAC}, [t1, t2], contains="exactly one")
        os.close(t1)
        os.close(t2)
        expect(src, "PUT", "vm.add-net", 400, {"mac": MAC, "fds": [3]}, contains="none came with the request")
        expect(src, "GET", "vm.info", 400, None, [null], contains="takes no file descriptors")
        os.close(null)
        # The server closes each connection just after its answer's last byte: wait for the
        # count to come back, and fail if it stays above. (It may end below: a descriptor open
        # when `before` was read, such as an earlier request's connection, can close since.)
        end = time.time() + 5
        while (after := open_fds(src_proc.pid)) > before and time.time() < end:
            time.sleep(0.05)
        if after > before:
            fail(f"refused requests leaked descriptors in the VMM: {before} open before, {after} after")

        # The tap by descriptor; our copy closed, so only the VMM holds it.
        tap = open_tap("fdtap0")
        added = expect(src, "PUT", "vm.add-net", 200, {"mac": MAC}, [tap])
        os.close(tap)
        if added.get("id") != "net0":
            fail(f"vm.add-net answered {added}")
        info = expect(src, "GET", "vm.info", 200)
        if [n.get("tap") for n in info["config"]["net"]] != ["fdtap0"]:
            fail(f"vm.info does not show the passed tap: {info['config']['net']}")
        expect(src, "PUT", "vm.boot", 204)
        wait_until("the guest's NIC driver", lambda: os.path.exists(console) and b"net ready" in open(console, "rb").read())
        send_frames("fdtap0", range(1, 21))
        wait_until("frames 1-20 in the guest", lambda: set(range(1, 21)) <= received(console))
        print("fd_passing: a tap passed with vm.add-net carries frames to the guest", flush=True)

        # A destination whose NIC is a descriptor granted through net_fds.
        dst, dst_log, dst_proc = start_vmm("dst")
        mig = os.path.join(work, "migration.sock")
        dtap = open_tap("fdtap1")
        expect(dst, "PUT", "vm.receive-migration", 204, {
            "receiver_url": "unix:" + mig, "memory_size": 64 << 20,
            "net": [{"id": "nic0", "mac": MAC}], "net_fds": [{"id": "nic0", "num_fds": 1}]}, [dtap])
        os.close(dtap)
        expect(src, "PUT", "vm.send-migration", 204, {"destination_url": "unix:" + mig})

        def outcome():
            p = expect(src, "GET", "vm.migration-progress", 200)
            return p if p["outcome"] != "active" else None
        p = wait_until("the migration's outcome", outcome, timeout=120)
        if p["outcome"] != "completed":
            fail(f"the migration did not complete: {p}")
        wait_until("the VM running on the destination", lambda: expect(dst, "GET", "vm.info", 200)["state"] == "Running")
        info = expect(dst, "GET", "vm.info", 200)
        if [n.get("tap") for n in info["config"]["net"]] != ["fdtap1"]:
            fail(f"the destination's NIC is not the granted descriptor's tap: {info['config']['net']}")
        send_frames("fdtap1", range(21, 41))
        wait_until("frames 21-40 in the guest on the destination", lambda: set(range(21, 41)) <= received(dst_log))
        print("fd_passing: after the migration, the tap granted by net_fds carries frames", flush=True)
        expect(src, "PUT", "vmm.shutdown", 204)
        expect(dst, "PUT", "vmm.shutdown", 204)
        for p in (src_proc, dst_proc):
            if p.wait(timeout=30) != 0:
                fail(f"a VMM exited with {p.returncode}")
        print("fd_passing: OK", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


if __name__ == "__main__":
    main()
