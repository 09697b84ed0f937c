//! The device event loop: one thread running event-manager, waking on the ioeventfds of every
//! virtio queue (the guest's notifications, which KVM turns into eventfd writes without a vCPU
//! exit to userspace) and on device backends such as taps.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::virtio::mmio::MmioTransport;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

/// Data values distinguishing queue eventfds (their index) from backend fds.
const BACKEND_TOKEN: u32 = 1 << 16;

/// Watches one virtio device's queue eventfds and backend fds.
pub(crate) struct VirtioSubscriber {
    transport: Arc<Mutex<MmioTransport>>,
    queue_events: Vec<EventFd>,
    backend_fds: Vec<RawFd>,
}

impl VirtioSubscriber {
    pub(crate) fn new(transport: Arc<Mutex<MmioTransport>>, queue_events: Vec<EventFd>) -> Self {
        let backend_fds = transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .device()
            .backend_fds();
        VirtioSubscriber {
            transport,
            queue_events,
            backend_fds,
        }
    }
}

impl VirtioSubscriber {
    pub(crate) fn transport(&self) -> Arc<Mutex<MmioTransport>> {
        self.transport.clone()
    }
}

impl MutEventSubscriber for VirtioSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                log::error!("event loop: cannot watch queue {i}: {e:?}");
            }
        }
        for (i, fd) in self.backend_fds.iter().enumerate() {
            let events = Events::with_data_raw(
                *fd,
                BACKEND_TOKEN + i as u32,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            );
            if let Err(e) = ops.add(events) {
                log::error!("event loop: cannot watch backend fd {fd}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let token = events.data();
        let mut transport = self.transport.lock().unwrap_or_else(|e| e.into_inner());
        if token >= BACKEND_TOKEN {
            if let Some(fd) = self.backend_fds.get((token - BACKEND_TOKEN) as usize) {
                transport.backend_ready(*fd);
            }
        } else if let Some(evt) = self.queue_events.get(token as usize) {
            // Reading resets the counter; several notifications coalesce into one pass.
            let _ = evt.read();
            transport.notify_queue(token as usize);
        }
    }
}

pub(crate) struct EventLoop {
    stop: Arc<AtomicBool>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// Wakes the loop so it notices the stop flag.
struct Waker(EventFd);

impl MutEventSubscriber for Waker {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.0, EventSet::IN));
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.read();
    }
}

impl EventLoop {
    pub(crate) fn start(subscribers: Vec<VirtioSubscriber>) -> std::io::Result<Self> {
        let mut manager: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        for s in subscribers {
            manager.add_subscriber(Box::new(s));
        }
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        manager.add_subscriber(Box::new(Waker(wake.try_clone()?)));
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || {
                crate::seccomp::confine_or_exit(crate::seccomp::ThreadKind::Devices);
                while !stop_flag.load(Ordering::SeqCst) {
                    if let Err(e) = manager.run() {
                        log::error!("event loop: {e:?}");
                        break;
                    }
                }
            })?;
        Ok(EventLoop {
            stop,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
