//! Frames reach a migrating guest once each, in order: a guest with a minimal virtio-net
//! driver prints the sequence number of every frame it receives, while the test sends a
//! steady stream (one frame every 2 ms) into its tap, before, during and after a migration to
//! a VMM on another tap (both on this host; a NIC's grant needs the MAC, not the tap's name).
//! Once the migration is done the stream moves to the new tap. Frames sent to the old tap
//! while the guest is paused are lost, as on a network; nothing may arrive twice, out of
//! order, or in a buffer the driver owns: the numbers the guest printed on the two hosts,
//! joined, rise strictly, with one gap at most (the frames lost at the switchover). Needs
//! root (taps).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_tests::{
    destination, free_port, guest, migrate_to_port, require_kvm, require_root, vmm_cli, Incoming,
    RuntimeDir, VmProcess,
};

const T: Duration = Duration::from_secs(120);
const MAC: &str = "52:54:00:00:00:09";
const MAC_BYTES: [u8; 6] = [0x52, 0x54, 0, 0, 0, 9];

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip runs");
    assert!(st.success(), "ip {args:?} failed");
}

/// A raw socket that sends Ethernet frames out of (that is, into the VMM's side of) a tap.
struct FrameSender {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl FrameSender {
    fn on(tap: &str) -> Self {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(tap).unwrap();
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        assert!(ifindex > 0, "no interface {tap}");
        // SAFETY: a plain socket(2) call; the descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            raw >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a descriptor we just created and own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        FrameSender { fd, ifindex }
    }

    fn send(&self, seq: u32) {
        use std::os::fd::AsRawFd;
        let mut frame = [0u8; 60];
        frame[..6].copy_from_slice(&MAC_BYTES);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]);
        frame[14..18].copy_from_slice(&seq.to_le_bytes());
        // SAFETY: sockaddr_ll is plain data; zeroed is valid before the fields are set.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&MAC_BYTES);
        // SAFETY: sendto with a live buffer and a sockaddr_ll of the stated size.
        unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
    }
}

/// The sequence numbers in console bytes ("rx N" lines; a line the migration cut short, its
/// rest printed by the next host, counts once the bytes are joined).
fn received_in(raw: &[u8]) -> Vec<u32> {
    String::from_utf8_lossy(raw)
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim().strip_prefix("rx ")?.parse().ok())
        .collect()
}

fn received(vm: &VmProcess) -> Vec<u32> {
    received_in(&vm.raw.lock().unwrap())
}

#[test]
fn frames_reach_a_migrating_guest_once_each_and_in_order() {
    let test = "frames_reach_a_migrating_guest_once_each_and_in_order";
    if !require_kvm(test) || !require_root(test) {
        return;
    }
    let (a, b) = (RuntimeDir::new("netrx-1"), RuntimeDir::new("netrx-2"));
    let id = std::process::id() % 100_000;
    let (tap_a, tap_b) = (format!("vmnr{id}a"), format!("vmnr{id}b"));
    let g = guest("net_rx");
    let src = VmProcess::start_raw(
        &a.0,
        &[
            "--name",
            "nr",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "64M",
            "--net",
            &format!("tap={tap_a},mac={MAC}"),
        ],
    );
    let deadline = Instant::now() + T;
    while !String::from_utf8_lossy(&src.raw.lock().unwrap()).contains("net ready") {
        assert!(
            Instant::now() < deadline,
            "the guest's driver did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ip(&["link", "set", &tap_a, "up"]);

    // The stream: one frame every 2 ms, to whichever tap `target` names.
    let target = Arc::new(Mutex::new(FrameSender::on(&tap_a)));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU32::new(0));
    let sender = {
        let (target, stop, sent) = (target.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut seq = 1u32;
            while !stop.load(Ordering::SeqCst) {
                target.lock().unwrap().send(seq);
                sent.store(seq, Ordering::SeqCst);
                seq += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let deadline = Instant::now() + T;
    while received(&src).len() < 200 {
        assert!(
            Instant::now() < deadline,
            "the guest receives nothing: {:?}",
            String::from_utf8_lossy(&src.raw.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let port = free_port();
    let net_b = format!("tap={tap_b},mac={MAC}");
    let dst = destination(
        &b.0,
        "nr",
        port,
        Incoming {
            extra: &["--net", &net_b],
            raw: true,
            ..Incoming::default()
        },
    );
    let (st, out, err) = migrate_to_port(&a.0, "nr", port);
    assert!(st.success(), "{out}{err}");
    ip(&["link", "set", &tap_b, "up"]);
    *target.lock().unwrap() = FrameSender::on(&tap_b);
    let src_console = src.raw.clone();
    let (st, err) = src.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");

    let deadline = Instant::now() + T;
    while received(&dst).len() < 200 {
        assert!(
            Instant::now() < deadline,
            "the guest receives nothing at the destination: {:?}",
            String::from_utf8_lossy(&dst.raw.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    let (st, _, err) = vmm_cli(&b.0, &["stop", "nr"], T);
    assert!(st.success(), "{err}");
    let dst_console = dst.raw.clone();
    let (st, err) = dst.wait_exit(T);
    assert_eq!(st.code(), Some(0), "{err}");
    // A frame the device wrote before the pause may be read by the guest only after it, at
    // the destination (and a line may be cut in two): so the joined bytes, not each host's,
    // are what must be whole.
    let (src_raw, dst_raw) = (
        src_console.lock().unwrap().clone(),
        dst_console.lock().unwrap().clone(),
    );
    let joined = received_in(&[src_raw.as_slice(), dst_raw.as_slice()].concat());
    let (on_source, on_destination) = (received_in(&src_raw), received_in(&dst_raw));
    let gaps: Vec<(u32, u32)> = joined
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        joined.windows(2).all(|w| w[1] > w[0]),
        "a frame arrived twice or out of order: {gaps:?}"
    );
    assert!(
        gaps.len() <= 1,
        "frames went missing other than at the switchover: {gaps:?}"
    );
    eprintln!(
        "{} frames sent; the guest got {} at the source and {} at the destination, in order, none twice; lost at the switchover (sent to the old tap while the guest was paused): {gaps:?}",
        sent.load(Ordering::SeqCst),
        on_source.len(),
        on_destination.len(),
    );
}
