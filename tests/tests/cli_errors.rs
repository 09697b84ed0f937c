//! Clear errors for bad input, and the PVM-host refusal of stock Linux kernels.

use std::io::Write;
use std::time::Duration;

use vmm_tests::{guest, vmm_cli, RuntimeDir};

const T: Duration = Duration::from_secs(30);

#[test]
fn bad_arguments_are_explained() {
    let dir = RuntimeDir::new("args");
    let g = guest("hello");
    let g = g.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--name", "a/b", "--kernel", g], "invalid VM name"),
        (
            &["run", "--name", "x", "--kernel", g, "--memory", "lots"],
            "invalid size 'lots'",
        ),
        (
            &["run", "--name", "x", "--kernel", g, "--memory", "1M"],
            "too small",
        ),
        (
            &["run", "--name", "x", "--kernel", g, "--vcpus", "0"],
            "--vcpus must be between 1 and 32",
        ),
        (
            &["run", "--name", "x", "--kernel", "/nonexistent/bzImage"],
            "cannot open",
        ),
        (&["pause", "nobody"], "no VM named 'nobody' is running"),
    ];
    for (args, expected) in cases {
        let (st, _, err) = vmm_cli(&dir.0, args, T);
        assert_eq!(st.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err:?}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_file_that_is_no_kernel_is_refused() {
    let dir = RuntimeDir::new("nokernel");
    let path = dir.0.join("junk");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&[0u8; 4096])
        .unwrap();
    let (st, _, err) = vmm_cli(
        &dir.0,
        &[
            "run",
            "--name",
            "junk",
            "--kernel",
            path.to_str().unwrap(),
            "--allow-emulated-kernel",
        ],
        T,
    );
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("neither an ELF image nor a bzImage"), "{err}");
}

/// On a PVM host a stock Linux kernel is refused with an explanation; elsewhere the check
/// does not fire (this fake bzImage then fails to load instead).
#[test]
fn pvm_host_refuses_a_linux_kernel_with_an_explanation() {
    let dir = RuntimeDir::new("pvm");
    let path = dir.0.join("bzImage");
    let mut image = vec![0u8; 8192];
    image[0x1f1] = 1; // setup_sects
    image[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(&path, &image).unwrap();
    let (st, _, err) = vmm_cli(
        &dir.0,
        &["run", "--name", "linux", "--kernel", path.to_str().unwrap()],
        T,
    );
    assert_eq!(st.code(), Some(1), "{err}");
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists() && !vmm_tests::hardware_kvm();
    if pvm {
        assert!(
            err.contains("is PVM") && err.contains("PVM-aware") && err.contains("nested test rig"),
            "{err}"
        );
    } else {
        assert!(!err.contains("is PVM"), "{err}");
    }
}
