//! tether — a session-aware reverse proxy.
//!
//! How a request flows through the modules:
//!
//! - [`server`] accepts client connections (hyper HTTP/1.1), and drains them on shutdown;
//! - [`proxy`] is the request pipeline: framing checks, route match, then attempts on members
//!   chosen by [`balance`], with the retry rule in `proxy::retry` and header rules in
//!   `proxy::headers`; errors turn into responses in one place (`proxy::error`);
//! - [`affinity`] reads the clone ids out of the session id (cookie or `;jsessionid=`);
//! - [`balance`] keeps per-member state (down until, outstanding requests) in atomics and yields
//!   candidates in order: cookie clones first, then the virtual address, then balanced primaries,
//!   then backups;
//! - [`upstream`] owns the keep-alive connection pools to members, connect timeouts and the
//!   per-member connection limit;
//! - [`config`] turns the TOML file into the validated [`config::Config`] the above run on;
//! - [`cli`] is the `tether` binary's command line.

pub mod affinity;
pub mod balance;
pub mod cli;
pub mod config;
pub mod demo;
pub mod member;
pub mod proxy;
pub mod server;
pub mod session;
pub mod signal;
pub mod upstream;
