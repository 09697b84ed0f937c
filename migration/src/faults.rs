//! Named failure points at every step of the protocol, for the fault tests (`make test` runs
//! a matrix of faults at them). They exist only in a build with the `failpoints` feature
//! (the debug build the tests use); elsewhere [`reached`] is empty and inlined away.
//!
//! A test configures them with the `fail` crate's `FAILPOINTS` variable, e.g.
//! `FAILPOINTS=source.commit_sent=sleep(3000)`: the process announces
//! `vmm: fault point NAME reached` on stderr when it gets there, then runs the action, so a
//! test can kill a process, silence the network or send a stop at exactly that step.

/// Every point, in protocol order (source and destination interleaved as they happen).
pub const POINTS: &[&str] = &[
    "source.config_sent",
    "destination.config_received",
    "source.round_acknowledged",
    "source.paused",
    "source.state_sent",
    "destination.state_received",
    "destination.state_restored",
    "source.before_commit",
    "source.commit_sent",
    "destination.commit_received",
    "destination.disks_acquired",
    "destination.resumed",
    "source.resumed_received",
];

/// Marks a step of the protocol (see the module doc).
#[cfg(feature = "failpoints")]
pub fn reached(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "fault point {name} is not listed");
    if fail::list().iter().any(|(n, _)| n == name) {
        eprintln!("vmm: fault point {name} reached");
    }
    fail::eval(name, |_| ());
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn reached(_name: &'static str) {}

/// Reads `FAILPOINTS` once at the start of a process (a build with the `failpoints` feature).
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
