//! Assembles the tiny test guests (guests/*.S) into ELF images with GNU as and ld (Debian's
//! binutils), placed in OUT_DIR; the test library finds them through GUEST_DIR.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is binutils installed?): {e}"));
    assert!(status.success(), "{cmd:?} failed");
}

fn main() {
    let out = std::env::var("OUT_DIR").unwrap();
    let guests = Path::new("guests");
    println!("cargo:rerun-if-changed=guests");
    for entry in std::fs::read_dir(guests).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("S") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let obj = format!("{out}/{stem}.o");
        let elf = format!("{out}/{stem}.elf");
        run(Command::new("as")
            .args(["--64", "-I"])
            .arg(guests)
            .arg("-o")
            .arg(&obj)
            .arg(&path));
        run(Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-static",
                "-nostdlib",
                "--no-warn-rwx-segments",
                "-T",
            ])
            .arg(guests.join("guest.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj));
    }
    println!("cargo:rustc-env=GUEST_DIR={out}");
}
