//! The serial console's host side: the terminal (stdin into the UART, raw mode, Ctrl-A x), the
//! bounded output buffer and its writer thread, the PTY and Unix socket consoles, and `vmm
//! console`'s client.
//! It may call only `config`-level plumbing and the `devices` crate: what it reports upward
//! (the user quit) goes through a [`devices::Interrupt`] its caller hands it.

pub(crate) mod client;
pub(crate) mod output;
pub mod pty;
pub(crate) mod socket;
pub(crate) mod terminal;
