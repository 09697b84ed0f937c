# Two commands on a fresh machine:
#   make run    build everything (Debian packages, vmm, guest kernel, root filesystem) and boot the
#               default microVM: directly on hardware KVM, inside the nested rig on a PVM host
#   make test   the whole test suite (unit, tiny-guest KVM tests, Linux guest in the nested rig)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ROOT := $(CURDIR)
BUILD := $(ROOT)/build
export VMM_CACHE_DIR ?= /var/cache/vmm
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_VMM := $(ROOT)/target/$(STATIC_TARGET)/release/vmm
DEB_PACKAGES := binutils qemu-system-x86 busybox-static cpio e2fsprogs gzip kmod iproute2 \
                linux-source-6.1 bc flex bison make gcc libc6-dev libelf-dev libssl-dev xz-utils \
                openssl util-linux python3-yaml python3-jsonschema curl

.PHONY: all deps build vmm-static artifacts libvirt rig run test lint fuzz fuzz-check soak unit-test kvm-test rig-test bench clean

all: build

deps:
	@resources/apt-install.sh $(DEB_PACKAGES)

build:
	cargo build --release --bin vmm

# A statically linked vmm runs inside the L1 host's initramfs with no libraries to copy.
vmm-static:
	RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target $(STATIC_TARGET) --bin vmm

# Guest kernel and filesystems, cached under $(VMM_CACHE_DIR) by a hash of their inputs and
# linked into build/guest.
artifacts: deps
	@mkdir -p $(BUILD)/guest
	@kdir=$$(resources/build-kernel.sh | tail -n1); fsdir=$$(resources/build-guest-fs.sh | tail -n1); \
	  ln -sfn $$kdir/bzImage $(BUILD)/guest/bzImage; ln -sfn $$kdir/vmlinux $(BUILD)/guest/vmlinux; \
	  ln -sfn $$fsdir/initramfs.cpio.gz $(BUILD)/guest/initramfs.cpio.gz; ln -sfn $$fsdir/rootfs.ext4 $(BUILD)/guest/rootfs.ext4; \
	  echo "guest artifacts: $$(ls $(BUILD)/guest | tr '\n' ' ')"

# libvirt (Debian's source package, ch driver only) for the virsh test, cached under
# $(VMM_CACHE_DIR) by its version and build script, linked at build/libvirt.
libvirt: deps
	@mkdir -p $(BUILD)
	@prefix=$$(resources/build-libvirt.sh | tail -n1); ln -sfn $$prefix $(BUILD)/libvirt; \
	  echo "libvirt: $$prefix"

rig: artifacts vmm-static
	resources/rig/build-l1.sh $(BUILD)/rig $(STATIC_VMM) $(BUILD)/guest $(BUILD)/guest

run: deps build artifacts
	@if [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ]; then \
	  echo "make run: hardware KVM: booting the default microVM directly (Ctrl-A x quits)"; \
	  $(ROOT)/target/release/vmm run --name default --kernel $(BUILD)/guest/bzImage \
	    --initrd $(BUILD)/guest/initramfs.cpio.gz --memory 256M --vcpus 2; \
	else \
	  $(MAKE) --no-print-directory rig; \
	  echo "make run: this host's KVM is PVM (kvm_pvm), which cannot run a stock Linux guest natively;"; \
	  echo "make run: booting the default microVM inside the nested rig (an L1 host under QEMU with its own KVM)."; \
	  echo "make run: type 'reboot -f' in the guest (or Ctrl-A x) to end it; the L1 host then powers off."; \
	  resources/rig/run-l1.sh $(BUILD)/rig console; \
	fi

unit-test:
	cargo test --workspace --exclude vmm-tests

kvm-test:
	cargo test -p vmm-tests --test boot --test lifecycle --test cli_errors --test migration --test migration_faults --test migration_security --test migration_robustness --test migration_netns --test migration_commit --test migration_guest_ends --test migration_stalled_flush --test migration_exactly_once --test migration_cpu_model --test migration_net_rx --test console_stall --test console_pty --test reboot --test api --test api_curl --test api_ch_client --test api_fd_passing --test api_ch_crate --test cloud_hypervisor_cli --test libvirt_ch --test seccomp --test unprivileged --test jail
	# The commit protocol's fault matrix (78 rows, one after another); prints its table.
	cargo test -p vmm-tests --test migration_fault_matrix -- --nocapture
	cargo test -p vmm-tests --test migration_soak -- --nocapture

# 500 migrations back and forth; prints failures and the downtime distribution.
soak:
	cargo build --release --bin vmm
	SOAK_MIGRATIONS=500 VMM_BIN=$(ROOT)/target/release/vmm cargo test --release -p vmm-tests --test migration_soak -- --nocapture

rig-test:
	cargo test -p vmm-tests --test nested_linux -- --nocapture --test-threads=1

lint:
	cargo clippy --workspace --all-targets -- -D warnings
	python3 resources/tools/vmm-rooms.py

# Fuzzing (tests/fuzz): FUZZ_SECONDS per target; `make test` runs a short pass on the corpus.
FUZZ_SECONDS ?= 60
fuzz:
	tests/fuzz/run.sh $(FUZZ_SECONDS)

fuzz-check:
	tests/fuzz/run.sh 3

test: deps artifacts rig libvirt
	@rm -f $(BUILD)/test-skips.txt $(BUILD)/test-retries.txt
	cargo build --workspace --all-targets
	$(MAKE) --no-print-directory lint unit-test fuzz-check kvm-test rig-test
	@tests/skip-summary.sh $(BUILD)/test-skips.txt $(BUILD)/test-retries.txt

clean:
	cargo clean
	rm -rf $(BUILD)

bench: deps artifacts rig
	resources/rig/build-qemu-image.sh $(BUILD)/rig/qemu-tools.ext4
	cargo build --release --bin vmm
	VMM_BIN=$(ROOT)/target/release/vmm cargo run --release -p vmm-tests --bin bench
