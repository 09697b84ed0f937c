//! Why saving or restoring KVM state (a vCPU's registers, the VM's clock and irqchip) failed:
//! the ioctl that failed with KVM's error as the source, or the MSR KVM would not take.

#[derive(Debug, thiserror::Error)]
pub(crate) enum KvmStateError {
    #[error("{0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// KVM_GET_MSRS and KVM_SET_MSRS stop at the first MSR they cannot handle.
    #[error("{call} handled {done} of {total} MSRs; MSR {index:#x} was refused")]
    Msrs {
        call: &'static str,
        done: usize,
        total: usize,
        index: u32,
    },
    /// A table (MSRs, CPUID entries) longer than KVM's ioctl buffers hold.
    #[error("the {0} has more entries than KVM takes")]
    TooLong(&'static str),
}

/// `map_err` for a KVM ioctl: names the call.
pub(crate) fn ioctl(call: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmStateError {
    move |e| KvmStateError::Ioctl(call, e)
}
