#!/usr/bin/env python3
"""Calls every endpoint of docs/api.yaml against running VMMs and checks each answer against the
document: the status code must be one it lists for that operation, and a JSON body must match
the schema it gives for that status. Two empty VMMs (`vmm --api-socket`) go through the whole
life the API allows: create, boot, pause, resume, a migration from one to the other over a
Unix socket with its progress, reboot, shutdown, boot, delete, vmm.shutdown; plus the errors
(404 without a VM, 405 in the wrong state or with the wrong method, 400 on bad bodies).

    check_api.py VMM_BINARY GUEST_KERNEL WORKDIR

Uses Debian's python3-yaml and python3-jsonschema. Exits non-zero on the first mismatch; every
process it starts is stopped (by PID) before it exits.
"""

import copy
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DOC_PATH = os.path.join(HERE, "..", "..", "docs", "api.yaml")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def openapi_to_jsonschema(node):
    """OpenAPI 3.0's `nullable` is not JSON Schema: turn it into a type list."""
    if isinstance(node, dict):
        out = {k: openapi_to_jsonschema(v) for k, v in node.items() if k not in ("nullable", "example")}
        if node.get("nullable") and "type" in node:
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [openapi_to_jsonschema(v) for v in node]
    return node


class Checker:
    def __init__(self, doc):
        self.doc = doc
        self.components = openapi_to_jsonschema(doc["components"])
        self.exercised = set()
        self.calls = 0

    def resolve(self, node):
        while "$ref" in node:
            parts = node["$ref"].lstrip("#/").split("/")
            node = self.doc
            for p in parts:
                node = node[p]
        return node

    def call(self, sock, method, endpoint, body=None, expect=None):
        path = "/" + endpoint
        op = self.doc["paths"].get(path, {}).get(method.lower())
        conn = UnixHTTPConnection(sock)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, "/api/v1" + path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        status = resp.status
        self.calls += 1
        parsed = json.loads(raw) if raw else None
        where = f"{method} {endpoint} -> {status} {raw[:300]!r}"
        if expect is not None and status != expect:
            fail(f"expected {expect}: {where}")
        if op is None:
            # Not a documented operation: only the generic errors may answer.
            if status not in (404, 405):
                fail(f"undocumented operation answered {status}: {where}")
            self.check_error_body(parsed, where)
            return status, parsed
        self.exercised.add((path, method.lower()))
        responses = op["responses"]
        if str(status) not in responses:
            fail(f"status {status} is not documented for this operation: {where}")
        spec = self.resolve(responses[str(status)])
        content = spec.get("content")
        if content is None:
            if raw:
                fail(f"documented without a body, answered one: {where}")
        else:
            schema = content["application/json"]["schema"]
            root = {"components": self.components}
            root.update(openapi_to_jsonschema(copy.deepcopy(schema)))
            try:
                jsonschema.Draft7Validator(root).validate(parsed)
            except jsonschema.ValidationError as e:
                fail(f"body does not match the document ({e.message} at {list(e.absolute_path)}): {where}")
        return status, parsed

    def check_error_body(self, parsed, where):
        if not isinstance(parsed, list) or not parsed or not all(isinstance(m, str) and m for m in parsed):
            fail(f"an error without an error body: {where}")


def fail(msg):
    print(f"check_api: FAIL: {msg}", flush=True)
    raise SystemExit(1)


def wait_for_socket(path, proc, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                s.close()
                return
            except OSError:
                pass
        if proc.poll() is not None:
            fail(f"the VMM exited early with {proc.returncode}")
        time.sleep(0.05)
    fail(f"no API socket at {path} after {timeout} s")


def wait_until(what, pred, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    fail(f"timed out waiting for {what}")


def on_sigterm(_signum, _frame):
    raise SystemExit("check_api: terminated")


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    vmm, kernel, work = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(work, mode=0o700, exist_ok=True)
    with open(DOC_PATH) as f:
        doc = yaml.safe_load(f)
    c = Checker(doc)
    procs = []

    def start_vmm(name):
        sock = os.path.join(work, f"{name}.sock")
        events = os.path.join(work, f"{name}.events")
        log = open(os.path.join(work, f"{name}.log"), "w")
        p = subprocess.Popen(
            [vmm, "--runtime-dir", work, "--api-socket", sock, "--event-monitor", f"path={events}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        procs.append(p)
        wait_for_socket(sock, p)
        return sock, events, p

    try:
        src, src_events, src_proc = start_vmm("src")
        dst, dst_events, dst_proc = start_vmm("dst")

        # No VM yet.
        _, ping = c.call(src, "GET", "vmm.ping", expect=200)
        assert "live-migration" in ping["features"], ping
        for m, e in [("GET", "vm.info"), ("PUT", "vm.boot"), ("PUT", "vm.pause"),
                     ("PUT", "vm.resume"), ("PUT", "vm.shutdown"), ("PUT", "vm.reboot"),
                     ("PUT", "vm.delete")]:
            c.call(src, m, e, expect=404)
        c.call(src, "PUT", "vm.send-migration", {"destination_url": "unix:/nowhere"}, expect=404)
        c.call(src, "PUT", "vm.cancel-migration", expect=405)
        _, progress = c.call(src, "GET", "vm.migration-progress", expect=200)
        assert progress["outcome"] == "none", progress
        # Wrong method, unknown path, bad bodies.
        c.call(src, "PUT", "vm.info", expect=405)
        c.call(src, "GET", "vm.create", expect=405)
        c.call(src, "GET", "vm.explode", expect=404)
        c.call(src, "PUT", "vm.create", b"{not json", expect=400)
        c.call(src, "PUT", "vm.create", {"payload": {"kernel": kernel}, "cpus": {"boot_vcpus": 0}}, expect=400)
        c.call(src, "PUT", "vm.create", {"cpus": {"boot_vcpus": 1}}, expect=400)
        c.call(src, "PUT", "vm.receive-migration", {"receiver_url": "ftp:x"}, expect=400)

        # Create and boot; unknown fields are ignored.
        config = {
            "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
            "memory": {"size": 64 << 20, "mergeable": False},
            "payload": {"kernel": kernel},
            "serial": {"mode": "Null"},
            "console": {"mode": "Off"},
            "rng": {"src": "/dev/urandom"},
        }
        c.call(src, "PUT", "vm.add-disk", {"path": os.path.join(work, "extra.img")}, expect=404)
        c.call(src, "PUT", "vm.create", config, expect=204)
        c.call(src, "PUT", "vm.create", config, expect=405)
        # Devices join the config between create and boot (libvirt's way).
        extra = os.path.join(work, "extra.img")
        with open(extra, "wb") as f:
            f.truncate(1 << 20)
        _, added = c.call(src, "PUT", "vm.add-disk", {"path": extra}, expect=200)
        assert added["id"] == "disk0", added
        c.call(src, "PUT", "vm.add-disk", {"path": extra}, expect=400)  # the same image twice
        c.call(src, "PUT", "vm.add-net", {"mac": "52:54:00:00:00:01"}, expect=400)  # no tap
        _, info = c.call(src, "GET", "vm.info", expect=200)
        assert [d["path"] for d in info["config"]["disks"]] == [extra], info
        _, info = c.call(src, "GET", "vm.info", expect=200)
        assert info["state"] == "Created", info
        c.call(src, "PUT", "vm.pause", expect=405)
        c.call(src, "PUT", "vm.boot", expect=204)
        _, info = c.call(src, "GET", "vm.info", expect=200)
        assert info["state"] == "Running" and info["config"]["memory"]["size"] == 64 << 20, info
        c.call(src, "PUT", "vm.boot", expect=405)
        c.call(src, "PUT", "vm.add-disk", {"path": extra}, expect=405)  # no hotplug
        c.call(src, "PUT", "vm.add-net", {"tap": "t0"}, expect=405)
        c.call(src, "PUT", "vm.receive-migration", {"receiver_url": "unix:" + os.path.join(work, "x")}, expect=405)
        c.call(src, "PUT", "vm.resume", expect=405)  # Running -> Running is refused
        c.call(src, "PUT", "vm.pause", expect=204)
        assert c.call(src, "GET", "vm.info")[1]["state"] == "Paused"
        c.call(src, "PUT", "vm.pause", expect=405)  # Paused -> Paused is refused
        c.call(src, "PUT", "vm.resume", expect=204)
        assert c.call(src, "GET", "vm.info")[1]["state"] == "Running"
        c.call(src, "PUT", "vm.cancel-migration", expect=405)
        c.call(src, "PUT", "vm.send-migration", {"destination_url": "tcp:127.0.0.1:1"}, expect=400)
        c.call(src, "PUT", "vm.send-migration", {"destination_url": "unix:/x", "connections": 0}, expect=400)

        # The destination listens; its info says it waits.
        mig = os.path.join(work, "migration.sock")
        # The payload is a grant: what the received VM boots here when it reboots.
        c.call(dst, "PUT", "vm.receive-migration", {"receiver_url": "unix:" + mig, "memory_size": 64 << 20,
                                                    "disks": [{"path": extra}],
                                                    "payload": {"kernel": kernel}}, expect=204)
        _, info = c.call(dst, "GET", "vm.info", expect=200)
        assert info.get("migration", {}).get("role") == "waiting", info
        c.call(dst, "PUT", "vm.pause", expect=405)

        # Migrate, following the progress until the outcome.
        c.call(src, "PUT", "vm.send-migration", {"destination_url": "unix:" + mig, "downtime_ms": 300, "timeout_s": 60, "timeout_strategy": "Cancel"}, expect=204)
        c.call(src, "PUT", "vm.send-migration", {"destination_url": "unix:" + mig}, expect=405)

        def finished():
            _, p = c.call(src, "GET", "vm.migration-progress", expect=200)
            return p if p["outcome"] != "active" else None
        progress = wait_until("the migration's outcome", finished)
        if progress["outcome"] != "completed":
            fail(f"the migration did not complete: {progress}")
        s = progress["summary"]
        assert s["downtime_ms"] > 0 and "pause_ms" in s["downtime_breakdown"], s
        print(f"check_api: migrated in {s['total_seconds']:.2f} s, downtime {s['downtime_ms']:.1f} ms", flush=True)

        # The VM runs on the destination; the source has none left.
        wait_until("the VM running on the destination",
                   lambda: c.call(dst, "GET", "vm.info")[1]["state"] == "Running")
        c.call(src, "GET", "vm.info", expect=404)
        c.call(src, "PUT", "vm.boot", expect=404)
        c.call(src, "PUT", "vmm.shutdown", expect=204)
        if src_proc.wait(timeout=30) != 0:
            fail(f"the source VMM exited with {src_proc.returncode}")

        # The rest of the life on the destination: it boots the kernel granted here.
        _, info = c.call(dst, "GET", "vm.info", expect=200)
        assert info["config"]["payload"].get("kernel") == kernel, info
        c.call(dst, "PUT", "vm.reboot", expect=204)
        wait_until("the VM running after the reboot",
                   lambda: c.call(dst, "GET", "vm.info")[1]["state"] == "Running")
        c.call(dst, "PUT", "vm.shutdown", expect=204)
        _, info = wait_until("the VM shut down",
                             lambda: (lambda r: r if r[1]["state"] == "Shutdown" else None)(c.call(dst, "GET", "vm.info")))
        c.call(dst, "PUT", "vm.resume", expect=405)
        c.call(dst, "PUT", "vm.boot", expect=204)
        c.call(dst, "PUT", "vm.delete", expect=204)
        c.call(dst, "GET", "vm.info", expect=404)

        # A serial console on a Unix socket (Cloud Hypervisor's mode Socket): vm.info names it,
        # it is owner-only, one client at a time, and it goes with the VM.
        serial_sock = os.path.join(work, "serial.sock")
        c.call(dst, "PUT", "vm.create", dict(config, serial={"mode": "Socket"}), expect=400)
        c.call(dst, "PUT", "vm.create", dict(config, serial={"mode": "Socket", "socket": serial_sock}), expect=204)
        _, info = c.call(dst, "GET", "vm.info", expect=200)
        assert info["config"]["serial"] == {"mode": "Socket", "socket": serial_sock}, info
        assert stat.S_IMODE(os.stat(serial_sock).st_mode) == 0o600, oct(os.stat(serial_sock).st_mode)
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        first.connect(serial_sock)
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second.settimeout(10)
        second.connect(serial_sock)
        assert b"attached already" in second.recv(200)
        second.close()
        first.close()
        c.call(dst, "PUT", "vm.delete", expect=204)
        assert not os.path.exists(serial_sock), "the console socket outlived its VM"
        c.call(dst, "PUT", "vmm.shutdown", expect=204)
        if dst_proc.wait(timeout=30) != 0:
            fail(f"the destination VMM exited with {dst_proc.returncode}")

        # Every documented operation was called.
        documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
        missing = documented - c.exercised
        if missing:
            fail(f"documented but never exercised: {sorted(missing)}")

        # The event monitors saw the life of each VM.
        def events(path):
            with open(path) as f:
                return [(e["source"], e["event"]) for e in map(json.loads, f)]
        se, de = events(src_events), events(dst_events)
        for want in [("vmm", "starting"), ("vm", "booted"), ("vm", "paused"), ("vm", "resumed"),
                     ("migration", "started"), ("migration", "round"), ("migration", "finished"),
                     ("vm", "shutdown"), ("vmm", "shutdown")]:
            if want not in se:
                fail(f"the source's event monitor has no {want}: {se}")
        for want in [("receive", "ready"), ("receive", "started"), ("receive", "finished"),
                     ("vm", "rebooting"), ("vm", "shutdown"), ("vm", "booted"), ("vm", "deleted")]:
            if want not in de:
                fail(f"the destination's event monitor has no {want}: {de}")
        print(f"check_api: OK: {c.calls} calls, {len(documented)} documented operations all exercised, "
              f"every answer matches docs/api.yaml", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


if __name__ == "__main__":
    main()
