//! Session ids and the clone ids inside them — the one codec the proxy (to route) and the
//! session layer (to mint cookies) share.
//!
//! WebSphere form: `<cache id: 4 chars><id><sep><clone>[<sep><clone>…]`, e.g. `0000AbC:c1:c3`.
//! Tomcat form: `<id>.<route>`. Everything here borrows from the request: no allocation on the
//! request path.

use std::ops::ControlFlow;

use http::HeaderMap;

use crate::config::{Affinity, IdFormat};

/// Longer session id values are treated as sessionless (WebSphere's `SessionIdentifierMaxLength`).
pub const MAX_SESSION_ID_LEN: usize = 1024;

/// A session id value split into its parts, borrowing from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId<'a> {
    /// WebSphere cache id (4 chars); empty in the Tomcat form.
    pub cache_id: &'a str,
    /// The session id proper.
    pub id: &'a str,
    /// What follows the first separator: the clone ids joined by the separator.
    clone_list: &'a str,
    separator: u8,
}

impl<'a> SessionId<'a> {
    /// The clone ids in preference order (owner first). Empty segments are skipped.
    pub fn clones(&self) -> impl Iterator<Item = &'a str> + 'a {
        let _ = (self.clone_list, self.separator);
        std::iter::empty()
    }
}

/// Parses one session id value. `None` for anything malformed: empty, over
/// [`MAX_SESSION_ID_LEN`], non-ASCII or control characters, no id part.
pub fn parse(value: &str, format: IdFormat, separator: u8) -> Option<SessionId<'_>> {
    let _ = (value, format, separator);
    None
}

/// Builds a session id value: `cache_id` is used only in the WebSphere form; the Tomcat form
/// carries only the first clone id (its route).
pub fn encode(format: IdFormat, separator: u8, cache_id: &str, id: &str, clones: &[&str]) -> String {
    let _ = (format, separator, cache_id, id, clones);
    String::new()
}

/// The value of the path parameter `;name=` in a request path, e.g. `/a;jsessionid=X?q` → `X`.
pub fn path_parameter<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let _ = (path, name);
    None
}

/// Every value of the cookie `name` across all `Cookie` headers, in header order.
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let _ = (headers, name);
    std::iter::empty()
}

/// Calls `f` with each clone id the request carries, in preference order: the URL path
/// parameter's value first, then each configured cookie name, each occurrence in header order,
/// each value's clone ids owner first. Malformed values are skipped. Stops when `f` breaks.
pub fn for_each_clone<'a>(
    affinity: &'a Affinity,
    path: &'a str,
    headers: &'a HeaderMap,
    mut f: impl FnMut(&'a str) -> ControlFlow<()>,
) {
    let _ = (affinity, path, headers, &mut f);
}
