//! Migration between two "hosts": network namespaces joined by a veth pair, the destination
//! addressed by its IP, over mutual TLS (the destination's certificate names that IP).

use std::process::Command;
use std::time::Duration;

use vmm_tests::{guest, make_certs, migrate_retrying, require_kvm, RuntimeDir, VmProcess};

const T: Duration = Duration::from_secs(120);

/// Two network namespaces host1 (10.77.0.1) and host2 (10.77.0.2) on a veth pair; removed on drop.
struct TwoHosts {
    h1: String,
    h2: String,
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl TwoHosts {
    /// Two hosts whose names carry `tag` (tests of one process run at once).
    fn create(tag: &str) -> std::io::Result<Self> {
        let id = format!("{}{tag}", std::process::id());
        let hosts = TwoHosts {
            h1: format!("vmmt-h1-{id}"),
            h2: format!("vmmt-h2-{id}"),
        };
        ip(&["netns", "add", &hosts.h1])?;
        ip(&["netns", "add", &hosts.h2])?;
        let (v1, v2) = (format!("vh1-{id}"), format!("vh2-{id}"));
        ip(&[
            "link", "add", &v1, "netns", &hosts.h1, "type", "veth", "peer", "name", &v2, "netns",
            &hosts.h2,
        ])?;
        for (ns, dev, addr) in [
            (&hosts.h1, &v1, "10.77.0.1/24"),
            (&hosts.h2, &v2, "10.77.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }
}

impl TwoHosts {
    /// The hosts, or None after recording why `test` cannot run here (a failure in CI).
    fn create_or_skip(test: &str, tag: &str) -> Option<Self> {
        match Self::create(tag) {
            Ok(h) => Some(h),
            Err(e) => {
                vmm_tests::skip(
                    test,
                    &format!("cannot create network namespaces ({e}); needs root and iproute2"),
                );
                None
            }
        }
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.h1]);
        let _ = ip(&["netns", "del", &self.h2]);
    }
}

#[test]
fn live_migration_between_two_network_namespaces() {
    if !require_kvm("live_migration_between_two_network_namespaces") {
        return;
    }
    let Some(hosts) =
        TwoHosts::create_or_skip("live_migration_between_two_network_namespaces", "a")
    else {
        return;
    };
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let certs = a.0.join("tls");
    make_certs(&certs, &["10.77.0.2"]);
    let g = guest("dirtier");
    let in_h1 = ["ip", "netns", "exec", hosts.h1.as_str()];
    let in_h2 = ["ip", "netns", "exec", hosts.h2.as_str()];
    let mut src = VmProcess::start_in(
        &in_h1,
        &a.0,
        &[
            "--name",
            "n1",
            "--kernel",
            g.to_str().unwrap(),
            "--memory",
            "128M",
            "--vcpus",
            "2",
        ],
    );
    src.wait_for_each(&["cpu0 pass 16 ok", "cpu1 pass 16 ok"], T);
    let mut dst = VmProcess::start_in(
        &in_h2,
        &b.0,
        &[
            "--name",
            "n1",
            "--incoming",
            "tcp:10.77.0.2:4444",
            "--tls-dir",
            certs.to_str().unwrap(),
        ],
    );
    let (st, out, err) = migrate_retrying(
        &a.0,
        &[
            "migrate",
            "n1",
            "--to",
            "tcp:10.77.0.2:4444",
            "--tls-dir",
            certs.to_str().unwrap(),
        ],
        T,
    );
    assert!(st.success(), "{out}\n{err}");
    assert!(out.contains("n1: migrated to tcp:10.77.0.2:4444"), "{out}");
    assert_eq!(src.wait_exit(T).0.code(), Some(0));
    dst.wait_for_each(&["cpu0 pass", "cpu1 pass"], T);
    let console = dst.console.lock().unwrap().clone();
    assert!(
        !console.iter().any(|l| l.contains("CORRUPT")),
        "{console:?}"
    );
    drop(dst);
    drop(hosts);
}

/// Several `virsh migrate` at once, as the seed guides describe: four VMs leave host1 for
/// host2 at the same time, each over its own secured connection, and all arrive intact.
#[test]
fn four_vms_migrate_at_once_between_two_network_namespaces() {
    if !require_kvm("four_vms_migrate_at_once_between_two_network_namespaces") {
        return;
    }
    let Some(hosts) = TwoHosts::create_or_skip(
        "four_vms_migrate_at_once_between_two_network_namespaces",
        "b",
    ) else {
        return;
    };
    let (a, b) = (RuntimeDir::new("host1"), RuntimeDir::new("host2"));
    let key = vmm_tests::test_key(&a.0);
    let key = key.to_str().unwrap();
    let g = guest("dirtier");
    let in_h1 = ["ip", "netns", "exec", hosts.h1.as_str()];
    let in_h2 = ["ip", "netns", "exec", hosts.h2.as_str()];
    let names: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
    let mut sources: Vec<VmProcess> = names
        .iter()
        .map(|n| {
            VmProcess::start_in(
                &in_h1,
                &a.0,
                &[
                    "--name",
                    n,
                    "--kernel",
                    g.to_str().unwrap(),
                    "--memory",
                    "128M",
                ],
            )
        })
        .collect();
    for s in &mut sources {
        s.wait_for("cpu0 pass 16 ok", T);
    }
    let mut dests: Vec<VmProcess> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let to = format!("tcp:10.77.0.2:{}", 4450 + i);
            let mut d = VmProcess::start_in(
                &in_h2,
                &b.0,
                &["--name", n, "--incoming", &to, "--auth-key-file", key],
            );
            d.wait_for_stderr("waiting for VM", T);
            d
        })
        .collect();
    let migrations: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let to = format!("tcp:10.77.0.2:{}", 4450 + i);
            let dir = a.0.clone();
            let n = n.clone();
            let key = key.to_string();
            std::thread::spawn(move || {
                vmm_tests::vmm_cli(
                    &dir,
                    &[
                        "migrate",
                        &n,
                        "--to",
                        &to,
                        "--auth-key-file",
                        &key,
                        "--json",
                    ],
                    T,
                )
            })
        })
        .collect();
    for (i, m) in migrations.into_iter().enumerate() {
        let (st, out, err) = m.join().unwrap();
        assert!(st.success(), "VM {i}: {out}\n{err}");
    }
    for (s, d) in sources.into_iter().zip(&mut dests) {
        assert_eq!(s.wait_exit(T).0.code(), Some(0));
        d.wait_for("cpu0 pass", T);
        let console = d.console.lock().unwrap().clone();
        assert!(
            !console.iter().any(|l| l.contains("CORRUPT")),
            "{console:?}"
        );
    }
    drop(dests);
    drop(hosts);
}
