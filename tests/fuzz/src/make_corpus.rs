//! Writes the seed corpus (tests/fuzz/corpus/TARGET/seed-*): one well-formed input per shape
//! each target takes, so a short fuzzing pass starts from inputs that reach deep. Run by hand
//! after a format changes: `cargo run --bin make_corpus` in tests/fuzz.

use std::path::Path;

use migration::record::Sealer;
use migration::wire::{FrameKind, FrameWriter, PagesWriter};
use vmm::config::{DiskConfig, NetConfig, VmConfig};
use vmm::migrate::state::{MigrationConfig, MigrationState};

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Frames as records of an insecure (CRC) stream, the way the source writes them.
fn frames(list: &[(FrameKind, &[u8])]) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut out = Vec::new();
    rt.block_on(async {
        let mut w = FrameWriter::new(&mut out, Sealer::new(None));
        for (kind, payload) in list {
            w.send(*kind, payload).await.unwrap();
        }
    });
    out
}

/// A pages payload: pages 5 and 6 with data, 7 zero, 300 with data.
fn pages_payload() -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut out = Vec::new();
    rt.block_on(async {
        let mut w = FrameWriter::new(&mut out, Sealer::new(None));
        let mut p = PagesWriter::begin(&mut w);
        for (page, byte) in [(5u64, 0xa5u8), (6, 0xa5), (7, 0), (300, 0x5a)] {
            p.push_page(&mut w, page, true, |s| {
                s.fill(byte);
                Ok::<_, ()>(())
            })
            .unwrap();
        }
        p.end(&mut w);
        w.finish().await.unwrap();
    });
    // The record: [length: 4][kind: 1][payload][crc: 4].
    out[5..out.len() - 4].to_vec()
}

fn cbor<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn le16(mem: &mut [u8], at: usize, v: u16) {
    mem[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// A split-ring descriptor at index `i` of the table at `table`.
fn desc(mem: &mut [u8], table: usize, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let at = table + i * 16;
    mem[at..at + 8].copy_from_slice(&addr.to_le_bytes());
    mem[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
    le16(mem, at + 12, flags);
    le16(mem, at + 14, next);
}

/// One chain (head 0) made available in the ring at `avail`.
fn avail_one(mem: &mut [u8], avail: usize) {
    le16(mem, avail + 2, 1);
    le16(mem, avail + 4, 0);
}

const NEXT: u16 = 1;
const WRITE: u16 = 2;

fn main() {
    let pages = pages_payload();
    put("pages_codec", "seed-runs", &pages);

    let hello = migration::envelope::seal(&migration::protocol::Hello::new()).unwrap();
    put("state_envelope", "seed-hello", &hello);
    let stream = frames(&[
        (FrameKind::Hello, &hello),
        (FrameKind::Pages, &pages),
        (FrameKind::RoundEnd, &0u32.to_le_bytes()),
        (FrameKind::Error, b"the other end gave up"),
    ]);
    put("wire_frames", "seed-stream", &stream);

    let vm = VmConfig {
        name: "web1".into(),
        kernel: "/boot/bzImage".into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        memory_bytes: 256 << 20,
        vcpus: 2,
        disks: vec![DiskConfig {
            path: "/shared/web1.img".into(),
            readonly: false,
            direct: false,
            serial: None,
        }],
        nets: vec![NetConfig {
            tap: "tap0".into(),
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            tap_fd: None,
        }],
        cpu_model: "x86-64-v2".into(),
        nested: false,
    };
    let config = MigrationConfig {
        vm,
        cpu: vmm::vm::cpu::GuestCpu {
            cpuids: vec![vec![kvm_bindings::kvm_cpuid_entry2::default(); 8]; 2],
            tsc_khz: Some(2_000_000),
        },
        disk_sizes: vec![1 << 30],
    };
    put(
        "migration_config",
        "seed-config",
        &migration::envelope::seal(&config).unwrap(),
    );

    let block = MmioTransport::new(
        Box::new(vmm_fuzz::block()),
        vmm_fuzz::memory(&[]),
        vmm_fuzz::interrupt(),
    )
    .snapshot();
    let net = MmioTransport::new(
        Box::new(vmm_fuzz::net(vec![])),
        vmm_fuzz::memory(&[]),
        vmm_fuzz::interrupt(),
    )
    .snapshot();
    let serial = devices::legacy::SerialSnapshot {
        in_buffer: b"ls\n".to_vec(),
        ..Default::default()
    };
    let state = MigrationState {
        vm: vmm::vm::vm_state::VmState {
            pit: Default::default(),
            clock: Default::default(),
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
        },
        vcpus: vec![vmm::vm::vcpu_state::VcpuState {
            cpuid: vec![Default::default(); 4],
            mp_state: Default::default(),
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: vec![Default::default(); 4],
            vcpu_events: Default::default(),
        }],
        serial: serial.clone(),
        transports: vec![block.clone(), net.clone()],
    };
    put(
        "migration_state",
        "seed-state",
        &migration::envelope::seal(&state).unwrap(),
    );
    put("device_state", "seed-serial", &[[0u8].as_slice(), &cbor(&serial)].concat());
    put("device_state", "seed-block", &[[1u8].as_slice(), &cbor(&block)].concat());
    put("device_state", "seed-net", &[[2u8].as_slice(), &cbor(&net)].concat());

    // A whole session as receiver_session reads it: [kind index][length: u16 le][payload].
    let session: Vec<u8> = [
        (FrameKind::Hello, hello.clone()),
        (FrameKind::Config, migration::envelope::seal(&config).unwrap()),
        (FrameKind::Pages, pages.clone()),
        (FrameKind::RoundEnd, 0u32.to_le_bytes().to_vec()),
        (FrameKind::State, migration::envelope::seal(&state).unwrap()),
        (FrameKind::Commit, Vec::new()),
    ]
    .iter()
    .flat_map(|(kind, payload)| {
        let len = u16::try_from(payload.len()).expect("a seed frame under 64 KiB");
        [&[*kind as u8][..], &len.to_le_bytes(), payload].concat()
    })
    .collect();
    put("receiver_session", "seed-session", &session);

    let mut preface = b"VMMMIGR".to_vec();
    preface.extend_from_slice(&[migration::channel::PROTOCOL_VERSION, 1]);
    put("channel_handshake", "seed-psk-preface", &[preface.as_slice(), &[0, 48], &[7u8; 48]].concat());

    for (i, req) in [
        "\0/api/v1/vm.info\n",
        "\x01/api/v1/vm.create\n{\"cpus\":{\"boot_vcpus\":2},\"memory\":{\"size\":268435456},\"payload\":{\"kernel\":\"/k\",\"cmdline\":\"console=ttyS0\"},\"disks\":[{\"path\":\"/d.img\",\"readonly\":true}],\"net\":[{\"tap\":\"tap0\",\"mac\":\"52:54:00:12:34:56\"}],\"serial\":{\"mode\":\"Tty\"},\"console\":{\"mode\":\"Off\"}}",
        "\x01/api/v1/vm.send-migration\n{\"destination_url\":\"tcp:host2:4444\",\"downtime_ms\":300,\"timeout_s\":60,\"timeout_strategy\":\"Cancel\",\"connections\":4,\"auth_key_file\":\"/k\"}",
        "\x01/api/v1/vm.receive-migration\n{\"receiver_url\":\"tcp:0.0.0.0:4444\",\"tls_dir\":\"/t\",\"disks\":[{\"path\":\"/d.img\"}],\"memory_size\":268435456}",
        "\x01/api/v1/vm.cancel-migration\n",
    ]
    .iter()
    .enumerate()
    {
        put("api_request", &format!("seed-{i}"), req.as_bytes());
    }

    // A virtio-blk read of one sector: header at 0x8000, data at 0x9000, status at 0xa000.
    let mut mem = vec![0u8; 0xa100];
    desc(&mut mem, 0, 0, 0x8000, 16, NEXT, 1);
    desc(&mut mem, 0, 1, 0x9000, 512, NEXT | WRITE, 2);
    desc(&mut mem, 0, 2, 0xa000, 1, WRITE, 0);
    avail_one(&mut mem, 0x1000);
    put("virtio_block_chain", "seed-read", &mem);
    mem[0x8000] = 1; // VIRTIO_BLK_T_OUT
    desc(&mut mem, 0, 1, 0x9000, 512, NEXT, 2);
    put("virtio_block_chain", "seed-write", &mem);

    // virtio-net: a 72-byte frame to transmit at 0x8000 (TX queue at 0), and a 2 KiB receive
    // buffer at 0x9000 (RX queue at 0x3000); the frame to receive is the input from 0x8000.
    let mut mem = vec![0u8; 0x8100];
    desc(&mut mem, 0, 0, 0x8000, 72, 0, 0);
    avail_one(&mut mem, 0x1000);
    desc(&mut mem, 0x3000, 0, 0x9000, 2048, WRITE, 0);
    avail_one(&mut mem, 0x4000);
    for (i, b) in mem[0x8000 + 12..0x8000 + 72].iter_mut().enumerate() {
        *b = i as u8;
    }
    put("virtio_net_chain", "seed-tx-rx", &mem);
    // A driver bringing the block transport up (device 2) and notifying its queue, over the
    // 8 KiB of guest memory the target takes first: a one-sector read at desc 0x0, avail
    // 0x400, used 0x800, header 0x1000, data 0x1200, status 0x1400.
    use devices::virtio::mmio::*;
    let mut mem = vec![0u8; 8192];
    desc(&mut mem, 0, 0, 0x1000, 16, NEXT, 1);
    desc(&mut mem, 0, 1, 0x1200, 512, NEXT | WRITE, 2);
    desc(&mut mem, 0, 2, 0x1400, 1, WRITE, 0);
    avail_one(&mut mem, 0x400);
    let mut ops = Vec::new();
    let mut w = |offset: u64, value: u32| {
        ops.push(2u8);
        ops.push(0b101); // a 4-byte write
        ops.extend_from_slice(&(offset as u16).to_le_bytes());
        ops.extend_from_slice(&value.to_le_bytes());
    };
    w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    w(REG_DRIVER_FEATURES_SEL, 1);
    w(REG_DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
    w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    w(REG_QUEUE_SEL, 0);
    w(REG_QUEUE_NUM, 16);
    w(REG_QUEUE_DESC_LOW, 0);
    w(REG_QUEUE_DRIVER_LOW, 0x400);
    w(REG_QUEUE_DEVICE_LOW, 0x800);
    w(REG_QUEUE_READY, 1);
    w(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    w(REG_QUEUE_NOTIFY, 0);
    // And a character to the UART (device 0, port 0, one byte).
    ops.extend_from_slice(&[0, 0b001, 0, 0, b'x', 0, 0, 0]);
    put("device_registers", "seed-block-bringup", &[mem, ops].concat());
    eprintln!("make_corpus: seeds written under {}/corpus", env!("CARGO_MANIFEST_DIR"));
}
