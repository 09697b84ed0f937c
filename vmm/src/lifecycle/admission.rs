//! Which requests the VMM takes in each of its phases: one table, asked before any request is
//! served, by every loop that reads requests (`run.rs` while empty, created, waiting for an
//! incoming VM or exiting; `owner.rs` while a VM runs). A request the table admits is served
//! by that loop (which may still fail doing it: a boot that finds no kernel, a pause KVM
//! refuses); a request it refuses gets the answer here, so the rules of every state read in
//! one place, and test without a VM.
//!
//! ```text
//!   phase       admits
//!   Empty       vmm.shutdown, vm.create, vm.receive-migration          (else 404 no VM)
//!   Created     vmm.shutdown, vm.info/boot/add-net/add-disk/delete     (else 405)
//!   Waiting     vmm.shutdown, vm.info                                  (else 405)
//!   Running     all but pause-when-paused, resume-when-running, create, boot, receive,
//!               hotplug; while migrating also no pause, resume, reboot, delete, 2nd send
//!   Committed   vm.info, vm.pause refused; unconfirmed: resume --force, vmm.shutdown,
//!               vm.shutdown                                            (else 405)
//!   Exiting     vmm.shutdown                                           (else 404 no VM)
//! ```

use crate::api::request::{ApiRequest, ApiResponse};
use crate::api::types::ApiVmState;

/// Where the VMM is, with what the answers name.
pub(crate) enum Phase<'a> {
    /// No VM: an empty VMM, or after `vm.delete` or a migration away.
    Empty,
    /// A VM created (or shut down) and not running: its state as the API shows it, and
    /// whether it has a kernel to boot.
    Created { state: ApiVmState, bootable: bool },
    /// Waiting for (or receiving) VM `name` on `address`.
    Waiting { name: &'a str, address: &'a str },
    /// A VM runs (or is paused); `migrating` while a migration has not committed.
    Running {
        paused: bool,
        migrating: bool,
        bootable: bool,
    },
    /// A migration of VM `name` has committed; `unconfirmed` once the destination's
    /// confirmation is overdue and the operator decides.
    Committed { name: &'a str, unconfirmed: bool },
    /// The VMM is about to exit and answers until its last outcome has been read.
    Exiting,
}

/// `None` when `phase` takes `request`; otherwise the answer refusing it.
pub(crate) fn refusal(phase: &Phase<'_>, request: &ApiRequest) -> Option<ApiResponse> {
    use ApiRequest as R;
    let refuse = |why: String| Some(ApiResponse::not_now(why));
    match phase {
        Phase::Empty => match request {
            R::VmmShutdown | R::VmCreate(_) | R::ReceiveMigration(_) => None,
            R::CancelMigration => refuse("no migration is running".into()),
            _ => Some(ApiResponse::no_vm()),
        },
        Phase::Created { state, bootable } => match request {
            R::VmBoot if !*bootable => refuse(crate::config::NO_KERNEL_GRANTED.into()),
            R::VmmShutdown
            | R::VmInfo
            | R::VmBoot
            | R::VmAddNet(_)
            | R::VmAddDisk(_)
            | R::VmDelete => None,
            R::VmCreate(_) => refuse("a VM exists in this VMM already (vm.delete first)".into()),
            R::ReceiveMigration(_) => {
                refuse("a VM is created in this VMM: it cannot receive another".into())
            }
            R::CancelMigration => refuse("no migration is running".into()),
            _ => refuse(format!("the VM is not running (it is {state:?})")),
        },
        Phase::Waiting { name, address } => match request {
            R::VmmShutdown | R::VmInfo => None,
            _ => refuse(format!(
                "VM '{name}' has not arrived yet: this VMM waits for it on {address}"
            )),
        },
        Phase::Running {
            paused,
            migrating,
            bootable,
        } => match request {
            R::VmAddNet(_) | R::VmAddDisk(_) => refuse(crate::config::NO_HOTPLUG.into()),
            R::VmPause if *migrating => refuse("cannot pause a VM that is migrating".into()),
            R::VmResume { .. } if *migrating => {
                refuse("cannot resume a VM that is migrating".into())
            }
            // Cloud Hypervisor refuses Paused -> Paused and Running -> Running: so do we, so
            // a client learns that its idea of the VM's state was wrong.
            R::VmPause if *paused => refuse("the VM is already paused".into()),
            R::VmResume { .. } if !*paused => refuse("the VM is not paused".into()),
            R::VmReboot | R::VmDelete if *migrating => {
                refuse("a migration is running (vm.cancel-migration first)".into())
            }
            R::VmReboot if !*bootable => refuse(crate::config::NO_KERNEL_GRANTED.into()),
            R::VmCreate(_) => refuse("a VM exists in this VMM already (vm.delete first)".into()),
            R::VmBoot => refuse("the VM is running already".into()),
            R::ReceiveMigration(_) => {
                refuse("a VM runs in this VMM: it cannot receive another".into())
            }
            R::SendMigration(_) if *migrating => refuse("a migration is already running".into()),
            R::CancelMigration if !*migrating => refuse("no migration is running".into()),
            // Answered by the API server itself; here for completeness.
            R::VmmPing | R::MigrationProgress => {
                Some(ApiResponse::error(500, "answered by the API server"))
            }
            _ => None,
        },
        Phase::Committed { name, unconfirmed } => match request {
            R::VmInfo => None,
            R::VmResume { force: true } if *unconfirmed => None,
            R::VmResume { .. } if *unconfirmed => refuse(format!(
                "the migration committed and its outcome is unknown: the guest may run at the destination. Check it there; if it does not run, resume it here with `vmm resume {name} --force` (vm.resume with {{\"force\": true}}), which takes the disks back first and is refused while another process holds them"
            )),
            R::VmmShutdown | R::VmShutdown if *unconfirmed => None,
            // Paused already, as Cloud Hypervisor refuses a Paused -> Paused transition.
            _ => refuse(format!(
                "the migration has committed and waits for the destination's confirmation; if none comes, `vmm resume {name} --force` or `vmm stop {name}` decide"
            )),
        },
        Phase::Exiting => match request {
            R::VmmShutdown => None,
            _ => Some(ApiResponse::no_vm()),
        },
    }
}

/// The answer of a loop to a request the table admitted but the loop has no arm for (a bug
/// in this VMM, said as such rather than a panic).
pub(crate) fn not_admitted(request: &ApiRequest) -> ApiResponse {
    log::error!("request {request:?} admitted in a phase that does not serve it");
    ApiResponse::error(
        500,
        "this VMM cannot serve the request in its current state",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::request::{parse, Method};

    fn req(method: Method, path: &str, body: &str) -> ApiRequest {
        parse(method, &format!("/api/v1/{path}"), body.as_bytes()).unwrap()
    }

    /// The status each phase answers: None when the request is admitted.
    fn status(phase: &Phase<'_>, r: &ApiRequest) -> Option<u16> {
        refusal(phase, r).map(|a| a.status)
    }

    #[test]
    fn every_phase_admits_what_cloud_hypervisor_admits_and_refuses_the_rest() {
        let get = |p| req(Method::Get, p, "");
        let put = |p| req(Method::Put, p, "");
        let create = req(
            Method::Put,
            "vm.create",
            r#"{"payload":{"kernel":"/k"},"memory":{"size":268435456}}"#,
        );
        let send = req(
            Method::Put,
            "vm.send-migration",
            r#"{"destination_url":"tcp:h:1"}"#,
        );
        let running = |paused, migrating| Phase::Running {
            paused,
            migrating,
            bootable: true,
        };
        // Nothing yet: create or receive; anything about a VM is 404.
        assert_eq!(status(&Phase::Empty, &create), None);
        assert_eq!(status(&Phase::Empty, &get("vm.info")), Some(404));
        assert_eq!(status(&Phase::Empty, &put("vm.boot")), Some(404));
        assert_eq!(
            status(&Phase::Empty, &put("vm.cancel-migration")),
            Some(405)
        );
        // Created: boot it, change it, delete it; not pause it or create another.
        let created = Phase::Created {
            state: ApiVmState::Created,
            bootable: true,
        };
        let unbootable_created = Phase::Created {
            state: ApiVmState::Created,
            bootable: false,
        };
        assert_eq!(status(&unbootable_created, &put("vm.boot")), Some(405));
        assert_eq!(status(&unbootable_created, &put("vm.delete")), None);
        assert_eq!(status(&created, &put("vm.boot")), None);
        assert_eq!(status(&created, &put("vm.delete")), None);
        assert_eq!(status(&created, &create), Some(405));
        assert_eq!(status(&created, &put("vm.pause")), Some(405));
        // Running and paused: the transitions Cloud Hypervisor refuses are refused.
        assert_eq!(status(&running(false, false), &put("vm.pause")), None);
        assert_eq!(status(&running(false, false), &put("vm.resume")), Some(405));
        assert_eq!(status(&running(true, false), &put("vm.pause")), Some(405));
        assert_eq!(status(&running(true, false), &put("vm.resume")), None);
        assert_eq!(status(&running(false, false), &put("vm.boot")), Some(405));
        assert_eq!(status(&running(false, false), &send), None);
        assert_eq!(
            status(&running(false, false), &put("vm.cancel-migration")),
            Some(405)
        );
        // Migrating: no second migration, no pause, resume, reboot or delete; cancel and stop.
        for r in [
            put("vm.pause"),
            put("vm.resume"),
            put("vm.reboot"),
            put("vm.delete"),
        ] {
            assert_eq!(status(&running(false, true), &r), Some(405), "{r:?}");
        }
        assert_eq!(status(&running(false, true), &send), Some(405));
        assert_eq!(
            status(&running(false, true), &put("vm.cancel-migration")),
            None
        );
        assert_eq!(status(&running(false, true), &put("vmm.shutdown")), None);
        // A received VM without a granted kernel does not reboot.
        let unbootable = Phase::Running {
            paused: false,
            migrating: false,
            bootable: false,
        };
        assert_eq!(status(&unbootable, &put("vm.reboot")), Some(405));
        // Committed: nothing but info until the operator decides, once the outcome is unknown.
        let waiting = Phase::Committed {
            name: "web",
            unconfirmed: false,
        };
        let unknown = Phase::Committed {
            name: "web",
            unconfirmed: true,
        };
        let force = req(Method::Put, "vm.resume", r#"{"force":true}"#);
        assert_eq!(status(&waiting, &get("vm.info")), None);
        assert_eq!(status(&waiting, &put("vmm.shutdown")), Some(405));
        assert_eq!(status(&waiting, &force), Some(405));
        assert_eq!(status(&unknown, &force), None);
        assert_eq!(status(&unknown, &put("vm.resume")), Some(405));
        assert_eq!(status(&unknown, &put("vmm.shutdown")), None);
        // Waiting for a VM, and exiting.
        let incoming = Phase::Waiting {
            name: "web",
            address: "tcp:0.0.0.0:4444",
        };
        assert_eq!(status(&incoming, &get("vm.info")), None);
        assert_eq!(status(&incoming, &put("vm.pause")), Some(405));
        assert_eq!(status(&Phase::Exiting, &put("vmm.shutdown")), None);
        assert_eq!(status(&Phase::Exiting, &get("vm.info")), Some(404));
    }
}
