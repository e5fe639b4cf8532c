//! The tower [`SessionLayer`]: loads the request's session before the handler, hands the handler
//! a [`SessionHandle`] (a request extension), and after the handler saves the session only if it
//! changed, sets the cookie with the store's clone list, or deletes it on invalidation.
//!
//! Conflicts: the save is a compare-and-set on the version the request loaded. When it loses, the
//! layer reloads the session; if every attribute the handler *read* is unchanged in the fresh copy
//! (only ownership moved, or someone wrote attributes this handler never looked at), re-applying
//! this handler's writes cannot lose anyone's update, so it does that (bounded). Otherwise the
//! handler computed its writes from data that is gone: the response is replaced by a loud
//! `409 Conflict` and a warning, never a silent overwrite.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::SET_COOKIE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};

use super::{id, now_ms, Changes, Session, SessionStore, StoreError};
use crate::affinity;
use crate::config::IdFormat;

/// How the layer finds and writes the session id.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// This member's clone id (owner of the sessions it creates).
    pub clone_id: String,
    pub format: IdFormat,
    pub separator: u8,
    pub cookie_name: String,
    /// `;jsessionid=` path parameter name; `None` to ignore the URL.
    pub url_parameter: Option<String>,
    pub max_inactive: Duration,
    pub cookie_path: String,
    /// Adds `Secure` to the cookie.
    pub secure_cookie: bool,
    /// Re-applications of a handler's writes after a conflict, at most.
    pub max_conflict_retries: u32,
}

impl SessionConfig {
    /// WebSphere form, `JSESSIONID`, `;jsessionid=`, 30 minutes.
    pub fn new(clone_id: &str) -> SessionConfig {
        SessionConfig {
            clone_id: clone_id.to_owned(),
            format: IdFormat::WebSphere,
            separator: b':',
            cookie_name: "JSESSIONID".into(),
            url_parameter: Some("jsessionid".into()),
            max_inactive: Duration::from_secs(30 * 60),
            cookie_path: "/".into(),
            secure_cookie: false,
            max_conflict_retries: 3,
        }
    }
}

/// The response body: the handler's, or the layer's own short error text.
pub type LayerBody<B> = Either<B, Full<Bytes>>;

#[derive(Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn SessionStore>,
    config: SessionConfig,
}

impl SessionLayer {
    pub fn new(store: Arc<dyn SessionStore>, config: SessionConfig) -> SessionLayer {
        SessionLayer {
            shared: Arc::new(Shared { store, config }),
        }
    }
}

impl<S> tower::Layer<S> for SessionLayer {
    type Service = SessionService<S>;
    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SessionService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The handler's view of its session. Cheap to clone; every clone is the same session.
#[derive(Clone)]
pub struct SessionHandle {
    state: Arc<Mutex<HandleState>>,
}

struct HandleState {
    /// The session as loaded, or as created by the first write.
    session: Option<Session>,
    /// The version loaded from the store; `None` for a session this request created.
    loaded_version: Option<u64>,
    /// The attribute values the handler read, as it saw them (for the conflict rule).
    read: BTreeMap<String, Option<Bytes>>,
    changes: Changes,
    invalidated: bool,
    clone_id: String,
    max_inactive: Duration,
    /// A new id could not be made (no OS randomness): the layer answers 503.
    id_error: bool,
}

impl SessionHandle {
    fn lock(&self) -> MutexGuard<'_, HandleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of attribute `name`, with this request's own writes applied.
    pub fn get(&self, name: &str) -> Option<Bytes> {
        let mut state = self.lock();
        if state.changes.removed.iter().any(|n| n == name) {
            return None;
        }
        if let Some(v) = state.changes.set.get(name) {
            return Some(v.clone());
        }
        let value = state
            .session
            .as_ref()
            .and_then(|s| s.attributes.get(name).cloned());
        state
            .read
            .entry(name.to_owned())
            .or_insert_with(|| value.clone());
        value
    }

    /// Sets attribute `name`; creates the session if the request has none.
    pub fn set(&self, name: &str, value: impl Into<Bytes>) {
        let mut state = self.lock();
        if !state.ensure_session() {
            return;
        }
        state.changes.removed.retain(|n| n != name);
        state.changes.set.insert(name.to_owned(), value.into());
    }

    /// Removes attribute `name` (nothing happens without a session).
    pub fn remove(&self, name: &str) {
        let mut state = self.lock();
        if state.session.is_none() {
            return;
        }
        state.changes.set.remove(name);
        if !state.changes.removed.iter().any(|n| n == name) {
            state.changes.removed.push(name.to_owned());
        }
    }

    /// Ends the session: removed from the store (every copy) and the cookie deleted.
    pub fn invalidate(&self) {
        self.lock().invalidated = true;
    }

    /// The session id, if the request has a session (loaded or created by a write).
    pub fn id(&self) -> Option<String> {
        self.lock().session.as_ref().map(|s| s.id.clone())
    }

    /// `true` when this request created the session.
    pub fn is_new(&self) -> bool {
        let state = self.lock();
        state.session.is_some() && state.loaded_version.is_none()
    }
}

impl HandleState {
    fn ensure_session(&mut self) -> bool {
        if self.session.is_some() {
            return true;
        }
        match id::generate() {
            Ok(new_id) => {
                self.session = Some(Session::new(new_id, &self.clone_id, self.max_inactive));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "no OS randomness: cannot create a session");
                self.id_error = true;
                false
            }
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for SessionService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<LayerBody<ResBody>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let config = &shared.config;
            let incoming = incoming_ids(config, &request);
            let mut loaded = None;
            for value in &incoming {
                match load_with_retry(&shared, value).await {
                    Ok(Some(session)) => {
                        loaded = Some((value.clone(), session));
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => return Ok(store_failure(&e)),
                }
            }
            let incoming_value = loaded.as_ref().map(|(v, _)| v.clone());
            let handle = SessionHandle {
                state: Arc::new(Mutex::new(HandleState {
                    loaded_version: loaded.as_ref().map(|(_, s)| s.version),
                    session: loaded.map(|(_, s)| s),
                    read: BTreeMap::new(),
                    changes: Changes::default(),
                    invalidated: false,
                    clone_id: config.clone_id.clone(),
                    max_inactive: config.max_inactive,
                    id_error: false,
                })),
            };
            request.extensions_mut().insert(handle.clone());
            let response = inner.call(request).await?;
            Ok(finish(&shared, handle, incoming_value, response).await)
        })
    }
}

/// The well-formed session id values the request carries: path parameter first, then each
/// cookie of the configured name. Values are the whole cookie values (id and clone ids).
fn incoming_ids<B>(config: &SessionConfig, request: &Request<B>) -> Vec<String> {
    let mut out = Vec::new();
    let path = request.uri().path_and_query().map_or("", |p| p.as_str());
    let from_url = config
        .url_parameter
        .as_deref()
        .and_then(|name| affinity::path_parameter(path, name));
    for value in from_url.into_iter().chain(affinity::cookie_values(
        request.headers(),
        &config.cookie_name,
    )) {
        let well_formed = affinity::parse(value, config.format, config.separator)
            .is_some_and(|parsed| id::is_well_formed(parsed.id));
        if well_formed && !out.iter().any(|v| v == value) {
            out.push(value.to_owned());
        }
    }
    out
}

/// Loads the session a cookie value names. A conflict while loading (two members taking the same
/// session over at once) is retried: nothing was written for this request yet.
async fn load_with_retry(shared: &Shared, value: &str) -> Result<Option<Session>, StoreError> {
    let config = &shared.config;
    let Some(parsed) = affinity::parse(value, config.format, config.separator) else {
        return Ok(None);
    };
    let clones: Vec<&str> = parsed.clones().collect();
    let mut attempt = 0;
    loop {
        match shared.store.load(parsed.id, &clones).await {
            Err(StoreError::Conflict { .. }) if attempt < config.max_conflict_retries => {
                attempt += 1;
                backoff(attempt).await;
            }
            other => return other,
        }
    }
}

async fn backoff(attempt: u32) {
    let jitter = fastrand::u64(0..20);
    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt) + jitter)).await;
}

async fn finish<B>(
    shared: &Shared,
    handle: SessionHandle,
    incoming_value: Option<String>,
    response: Response<B>,
) -> Response<LayerBody<B>> {
    let config = &shared.config;
    let state = {
        let mut guard = handle.lock();
        std::mem::replace(
            &mut *guard,
            HandleState {
                session: None,
                loaded_version: None,
                read: BTreeMap::new(),
                changes: Changes::default(),
                invalidated: false,
                clone_id: String::new(),
                max_inactive: Duration::ZERO,
                id_error: false,
            },
        )
    };
    let mut response = response.map(Either::Left);
    if state.id_error {
        return store_failure(&StoreError::Unavailable(
            "no OS randomness for a session id",
        ));
    }
    let Some(mut session) = state.session else {
        return response;
    };
    if state.invalidated {
        if state.loaded_version.is_some() {
            if let Err(e) = shared.store.remove(&session.id).await {
                return store_failure(&e);
            }
        }
        if incoming_value.is_some() {
            append_cookie(&mut response, &expired_cookie(config));
        }
        return response;
    }
    let now = now_ms();
    if state.changes.is_empty() {
        if let Err(e) = shared.store.touch(&session.id, now).await {
            tracing::debug!(error = %e, "session touch failed");
        }
    } else {
        let mut expected = state.loaded_version;
        let mut attempt = 0;
        loop {
            let mut next = session.clone();
            next.version = expected.map_or(1, |v| v + 1);
            next.last_access_ms = now;
            state.changes.apply(&mut next.attributes);
            match shared.store.save(&next, expected, &state.changes).await {
                Ok(()) => {
                    session = next;
                    break;
                }
                Err(StoreError::Conflict { .. })
                    if attempt < config.max_conflict_retries && expected.is_some() =>
                {
                    attempt += 1;
                    match reload_if_reads_unchanged(shared, &session, &state.read).await {
                        Ok(Some(fresh)) => {
                            expected = Some(fresh.version);
                            session = fresh;
                        }
                        Ok(None) => return conflict(&session.id),
                        Err(e) => return store_failure(&e),
                    }
                }
                Err(StoreError::Conflict { .. }) => return conflict(&session.id),
                Err(e) => return store_failure(&e),
            }
        }
    }
    let value = id::cookie_value(
        config.format,
        config.separator,
        &session.id,
        &shared.store.clone_list(&session),
    );
    if incoming_value.as_deref() != Some(value.as_str()) {
        append_cookie(&mut response, &session_cookie(config, &value));
    }
    response
}

/// The fresh copy of `session` if every attribute the handler read still has the value it saw;
/// `None` when one changed (re-applying would lose that write).
async fn reload_if_reads_unchanged(
    shared: &Shared,
    session: &Session,
    read: &BTreeMap<String, Option<Bytes>>,
) -> Result<Option<Session>, StoreError> {
    let clones = shared.store.clone_list(session);
    let clones: Vec<&str> = clones.iter().map(String::as_str).collect();
    let Some(fresh) = shared.store.load(&session.id, &clones).await? else {
        return Ok(None);
    };
    let unchanged = read
        .iter()
        .all(|(name, seen)| fresh.attributes.get(name) == seen.as_ref());
    Ok(unchanged.then_some(fresh))
}

fn session_cookie(config: &SessionConfig, value: &str) -> String {
    let secure = if config.secure_cookie { "; Secure" } else { "" };
    format!(
        "{}={}; Path={}; HttpOnly; SameSite=Lax{}",
        config.cookie_name, value, config.cookie_path, secure
    )
}

fn expired_cookie(config: &SessionConfig) -> String {
    format!(
        "{}=; Path={}; Max-Age=0; HttpOnly; SameSite=Lax",
        config.cookie_name, config.cookie_path
    )
}

fn append_cookie<B>(response: &mut Response<B>, cookie: &str) {
    match HeaderValue::from_str(cookie) {
        Ok(value) => {
            response.headers_mut().append(SET_COOKIE, value);
        }
        Err(_) => tracing::error!("session cookie is not a valid header value (check cookie_path)"),
    }
}

fn conflict<B>(id: &str) -> Response<LayerBody<B>> {
    tracing::warn!(
        session = %&id[..id.len().min(8)],
        "session written concurrently by another request; this request's writes were NOT saved (409)"
    );
    plain(
        StatusCode::CONFLICT,
        "409 Conflict: the session changed concurrently; your changes were not saved. Retry.\n",
    )
}

/// A store error as a response: a conflict is a loud 409, anything else a 503.
fn store_failure<B>(error: &StoreError) -> Response<LayerBody<B>> {
    if let StoreError::Conflict { id, .. } = error {
        return conflict(id);
    }
    tracing::warn!(%error, "session store failed; answering 503");
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "503 Service Unavailable: session store unavailable\n",
    )
}

fn plain<B>(status: StatusCode, text: &'static str) -> Response<LayerBody<B>> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
