//! A client we did not write drives the VMM: the unofficial `cloud-hypervisor-client` crate
//! from crates.io, an OpenAPI client generated from Cloud Hypervisor's own API document, with
//! its own models (they must parse our answers: `VmInfo`'s config and state, `VmmPingResponse`)
//! over hyper and hyperlocal. Through it: ping, create, boot, info, pause, resume, a migration
//! between two empty VMMs (receive on one, send from the other, the VM running on the
//! destination and gone from the source), an error answer, shutdown of the VM and of both
//! VMMs.

use std::path::Path;
use std::time::{Duration, Instant};

use cloud_hypervisor_client::apis::{DefaultApi, Error};
use cloud_hypervisor_client::models::{
    ConsoleConfig, ConsoleMode, CpusConfig, MemoryConfig, PayloadConfig, ReceiveMigrationData,
    SendMigrationData, SerialConfig, VmConfig, VmState,
};
use cloud_hypervisor_client::{socket_based_api_client, SocketBasedApiClient};
use vmm_tests::{guest, require_kvm, RuntimeDir, VmProcess};

const T: Duration = Duration::from_secs(60);

async fn state(client: &SocketBasedApiClient) -> Option<VmState> {
    client.vm_info_get().await.ok().map(|i| i.state)
}

async fn wait_state(client: &SocketBasedApiClient, want: VmState) {
    let deadline = Instant::now() + T;
    while state(client).await != Some(want) {
        assert!(Instant::now() < deadline, "the VM never reached {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn drive(src_sock: &Path, dst_sock: &Path, migration_sock: &Path) {
    let src = socket_based_api_client(src_sock);
    let dst = socket_based_api_client(dst_sock);

    let ping = src.vmm_ping_get().await.expect("vmm.ping");
    assert!(!ping.version.is_empty(), "{ping:?}");
    // No VM yet: the crate reports the error answer with its status.
    match src.vm_info_get().await {
        Err(Error::Api(e)) => assert_eq!(e.code.as_u16(), 404, "{}", e.body),
        other => panic!("vm.info without a VM answered {other:?}"),
    }

    let mut config = VmConfig::new(PayloadConfig {
        kernel: Some(guest("heartbeat").display().to_string()),
        cmdline: Some("console=ttyS0".into()),
        ..PayloadConfig::default()
    });
    config.cpus = Some(CpusConfig::new(1, 1));
    config.memory = Some(MemoryConfig::new(64 << 20));
    config.serial = Some(SerialConfig::new(ConsoleMode::Null));
    config.console = Some(ConsoleConfig::new(ConsoleMode::Off));
    src.create_vm(config).await.expect("vm.create");
    assert_eq!(state(&src).await, Some(VmState::Created));
    src.boot_vm().await.expect("vm.boot");
    let info = src.vm_info_get().await.expect("vm.info");
    assert_eq!(info.state, VmState::Running);
    assert_eq!(info.config.memory.map(|m| m.size), Some(64 << 20));
    assert_eq!(info.config.cpus.map(|c| c.boot_vcpus), Some(1));
    src.pause_vm().await.expect("vm.pause");
    assert_eq!(state(&src).await, Some(VmState::Paused));
    src.resume_vm().await.expect("vm.resume");
    assert_eq!(state(&src).await, Some(VmState::Running));

    // A migration between the two VMMs, over a Unix socket (local: no key needed).
    let url = format!("unix:{}", migration_sock.display());
    dst.vm_receive_migration_put(ReceiveMigrationData::new(url.clone()))
        .await
        .expect("vm.receive-migration");
    src.vm_send_migration_put(SendMigrationData::new(url))
        .await
        .expect("vm.send-migration");
    wait_state(&dst, VmState::Running).await;
    let deadline = Instant::now() + T;
    while state(&src).await.is_some() {
        assert!(Instant::now() < deadline, "the source kept its VM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = dst.vm_info_get().await.expect("vm.info on the destination");
    assert_eq!(moved.config.memory.map(|m| m.size), Some(64 << 20));

    dst.shutdown_vm().await.expect("vm.shutdown");
    wait_state(&dst, VmState::Shutdown).await;
    dst.shutdown_vmm()
        .await
        .expect("vmm.shutdown (destination)");
    src.shutdown_vmm().await.expect("vmm.shutdown (source)");
}

#[test]
fn the_cloud_hypervisor_client_crate_drives_a_vm_and_its_migration() {
    if !require_kvm("the_cloud_hypervisor_client_crate_drives_a_vm_and_its_migration") {
        return;
    }
    let dir = RuntimeDir::new("ch-crate");
    let (src_sock, dst_sock) = (dir.0.join("src.sock"), dir.0.join("dst.sock"));
    let src = VmProcess::empty(&dir.0, &src_sock, &[]);
    let dst = VmProcess::empty(&dir.0, &dst_sock, &[]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(120),
            drive(&src_sock, &dst_sock, &dir.0.join("migration.sock")),
        )
        .await
        .expect("the client's calls finished within 120 s")
    });
    for vm in [src, dst] {
        let (status, err) = vm.wait_exit(T);
        assert!(status.success(), "{status:?}: {err}");
    }
}
