//! The REST API (HTTPS, port 8443). Every handler validates with the model's types, checks the
//! caller, and goes through [`Member`] for the store; every failure is an [`ApiError`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use keel_model::{
    ClusterStatus, ErrorBody, Health, Image, ImageCreate, JoinRequest, JoinResponse, LoginRequest,
    LoginResponse, Node, RemoveNodeRequest, Setting, SettingKey, SettingValue, ValidationError, Vm,
    VmCreate, VmGroup, VmGroupCreate, WatchEvent, WatchOp,
};
use keel_store::{ChangeOp, Record, Request, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::{OpenApi, ToSchema};
use warp::http::StatusCode;
use warp::reply::Response as HttpResponse;
use warp::{Filter, Rejection, Reply};

use crate::auth::{self, Claims, UserRecord};
use crate::compute;
use crate::daemon::Daemon;
use crate::error::ApiError;
use crate::images;
use crate::member::{decode, kinds, node_of, Member};
use crate::tls::ConnInfo;

/// Largest request body the API accepts.
pub const MAX_BODY: u64 = 1024 * 1024;
/// Largest image upload chunk.
pub const MAX_CHUNK: u64 = 64 * 1024 * 1024;

pub(crate) type Ctx = Arc<Daemon>;
pub(crate) type ApiResult = Result<HttpResponse, ApiError>;

/// A list of resources.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    /// The resources, sorted by name.
    pub items: Vec<T>,
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Stream changes after this revision (default: only new changes).
    pub since: Option<u64>,
}

/// Query of `DELETE /api/v1/settings/{key}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Only delete if the setting is at this version.
    pub version: Option<u64>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Keel API", description = "Keel's REST API. Generated from the Rust types; do not edit."),
    paths(
        health, login, cluster_status, cluster_join, cluster_remove, list_nodes, get_node, list_settings,
        get_setting, put_setting, delete_setting, events, create_image, list_images, get_image, delete_image,
        image_progress, upload_image, create_vm, list_vms, get_vm, delete_vm, vm_action, create_group, list_groups,
        delete_group, node_action
    ),
    components(schemas(ErrorBody, List<Node>, List<Setting>, List<Image>, List<Vm>, List<VmGroup>)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The OpenAPI document, generated from the types.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // Feature modules own their routes and document them in their own `ApiDoc`.
    doc.merge(crate::console::ApiDoc::openapi());
    doc.merge(crate::lifecycle::ApiDoc::openapi());
    doc.merge(crate::storage::ApiDoc::openapi());
    doc.merge(crate::hotplug::ApiDoc::openapi());
    doc.merge(crate::upgrade::routes::ApiDoc::openapi());
    doc
}

pub(crate) fn ok<T: Serialize>(v: &T) -> ApiResult {
    Ok(warp::reply::json(v).into_response())
}

pub(crate) fn member(ctx: &Ctx) -> Result<Arc<Member>, ApiError> {
    ctx.member.get().cloned().ok_or_else(|| {
        let reason = ctx
            .phase
            .read()
            .map(|p| p.reason.clone())
            .unwrap_or_default();
        ApiError::NotReady(format!(
            "this node is not a cluster member yet ({reason}); retry shortly"
        ))
    })
}

pub(crate) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad(
            "the request body is empty; send a JSON object",
            None,
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = (path != "." && !path.is_empty()).then_some(path);
        let message = match &field {
            Some(f) => format!("{f}: {inner}"),
            None => format!("the body is not valid: {inner}"),
        };
        ApiError::bad(message, field)
    })
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) async fn authenticate(
    ctx: &Ctx,
    header: Option<String>,
) -> Result<(Arc<Member>, Claims), ApiError> {
    let m = member(ctx)?;
    let token = header
        .as_deref()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .ok_or_else(|| {
            ApiError::Unauthenticated(
                "send 'Authorization: Bearer TOKEN'; get a token from POST /api/v1/auth/login"
                    .into(),
            )
        })?;
    let key = m.token_key()?;
    let claims = auth::validate(&key, token.trim(), now_unix())
        .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
    Ok((m, claims))
}

fn setting_of(rec: &Record) -> Result<Setting, ApiError> {
    Ok(Setting {
        key: SettingKey::new(rec.name.clone())?,
        value: rec
            .value
            .get("value")
            .cloned()
            .unwrap_or(serde_json::Value::Null),
        version: rec.version,
    })
}

fn node_with_role(m: &Member, rec: &Record) -> Result<Node, ApiError> {
    let mut n = node_of(rec)?;
    n.status.role = m.role_of(n.status.id);
    Ok(n)
}

/// Health of this node; no authentication.
#[utoipa::path(get, path = "/api/v1/health", responses((status = 200, body = Health)))]
async fn health(ctx: Ctx) -> ApiResult {
    let phase = ctx
        .phase
        .read()
        .map(|p| p.phase)
        .unwrap_or(keel_model::NodePhase::Setup);
    ok(&Health {
        node: ctx.name.clone(),
        phase,
        cluster: ctx.cluster.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Log in; returns a bearer token.
#[utoipa::path(post, path = "/api/v1/auth/login", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn login(ctx: Ctx, conn: Option<ConnInfo>, body: Bytes) -> ApiResult {
    let req: LoginRequest = parse(&body)?;
    let m = member(&ctx)?;
    let ip = conn
        .map(|c| c.remote.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    ctx.limiter
        .check(ip, Instant::now())
        .map_err(ApiError::RateLimited)?;
    let user: Option<UserRecord> = match m.get(kinds::USERS, &req.username)? {
        Some(rec) => Some(decode(&rec)?),
        None if m
            .get(kinds::CLUSTER, crate::member::cluster_records::INFO)?
            .is_none() =>
        {
            return Err(ApiError::NotReady(
                "the cluster is still bootstrapping; retry in a moment".into(),
            ));
        }
        None => None,
    };
    let password = req.password.clone();
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // argon2 takes ~19 MiB per check: one at a time bounds memory under a login storm.
    let _permit = ctx
        .hash_slots
        .acquire()
        .await
        .map_err(|_| ApiError::Internal("shutting down".into()))?;
    let good = tokio::task::spawn_blocking(move || match hash {
        Some(h) => auth::verify_password(&password, &h),
        None => {
            // Spend the same time for unknown users, so timing does not reveal them.
            let _ = auth::hash_password(&password);
            false
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("password check: {e}")))?;
    let Some(user) = user.filter(|_| good) else {
        ctx.limiter.failed(ip, Instant::now());
        warn!(username = %req.username, %ip, "login failed");
        return Err(ApiError::Unauthenticated(
            "wrong username or password".into(),
        ));
    };
    ctx.limiter.succeeded(ip);
    let exp = now_unix() + auth::TOKEN_TTL.as_secs();
    let token = auth::issue(
        &m.token_key()?,
        &Claims {
            sub: req.username.clone(),
            role: user.role,
            exp,
        },
    )
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    info!(username = %req.username, "login");
    ok(&LoginResponse {
        token,
        expires: crate::rfc3339(exp),
    })
}

/// The cluster: leader, term and members.
#[utoipa::path(get, path = "/api/v1/cluster", security(("bearer" = [])),
    responses((status = 200, body = ClusterStatus), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn cluster_status(ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    ok(&m.status()?)
}

/// A node asks to join (authenticated by the join secret, not a token).
#[utoipa::path(post, path = "/api/v1/cluster/join", request_body = JoinRequest,
    responses((status = 200, body = JoinResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn cluster_join(ctx: Ctx, body: Bytes) -> ApiResult {
    let req: JoinRequest = parse(&body)?;
    let m = member(&ctx)?;
    if m.is_leader() {
        return ok(&m.admit(&req).await?);
    }
    let (_, leader) = m
        .leader()
        .ok_or_else(|| ApiError::NoQuorum("no leader right now; retry".into()))?;
    match m.peers.join(&leader, &req).await {
        Ok(Ok(resp)) => ok(&resp),
        Ok(Err(e)) => Err(wire(e)),
        Err(e) => Err(ApiError::NoQuorum(format!(
            "the leader is unreachable: {e}"
        ))),
    }
}

fn wire(e: crate::peer::WireError) -> ApiError {
    use crate::peer::WireError as W;
    match e {
        W::NotLeader { .. } => ApiError::NoQuorum("the leader changed; retry".into()),
        W::NoQuorum(m) => ApiError::NoQuorum(m),
        W::Refused {
            status: 403,
            message,
            ..
        } => ApiError::Forbidden(message),
        W::Refused {
            status: 404,
            message,
            ..
        } => ApiError::NotFound(message),
        W::Refused {
            status: 409,
            message,
            ..
        } => ApiError::Conflict {
            code: "already_exists",
            message,
        },
        W::Refused {
            status: 503,
            message,
            ..
        } => ApiError::NotReady(message),
        W::Refused { message, .. } => ApiError::bad(message, None),
        W::Internal(m) => ApiError::Internal(m),
    }
}

/// Removes a node from the cluster (leader side).
pub async fn remove_node_local(m: &Member, name: &str) -> Result<(), ApiError> {
    let rec = m
        .get(kinds::NODES, name)?
        .ok_or_else(|| ApiError::NotFound(format!("node {name} does not exist")))?;
    let node = node_of(&rec)?;
    if node.status.id == m.identity.id {
        return Err(ApiError::Conflict {
            code: "version_conflict",
            message: format!("{name} is the current leader; stop it (or remove it from another node after a new leader is elected)"),
        });
    }
    // The record goes first: the leader's membership loop converges Raft to the records, so
    // it could otherwise re-add the node between the two steps.
    m.write_ok(Request::Delete {
        kind: kinds::NODES.into(),
        name: name.into(),
        expected_version: None,
    })
    .await?;
    // A membership change in progress (e.g. a promotion still in its joint phase) is
    // transient: retry it for a while rather than fail a removal already recorded.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match m.store.remove_node(node.status.id).await {
            Ok(()) => break,
            Err(keel_store::StoreError::Membership { .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(crate::member::store_err(e)),
        }
    }
    info!(node = %name, "node removed from the cluster");
    Ok(())
}

/// Removes a node from the cluster.
#[utoipa::path(post, path = "/api/v1/cluster/remove", request_body = RemoveNodeRequest, security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cluster_remove(ctx: Ctx, authz: Option<String>, body: Bytes) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: RemoveNodeRequest = parse(&body)?;
    if m.is_leader() {
        remove_node_local(&m, req.name.as_str()).await?;
    } else {
        let (_, leader) = m
            .leader()
            .ok_or_else(|| ApiError::NoQuorum("no leader right now; retry".into()))?;
        let r: Result<(), crate::peer::WireError> = m
            .peers
            .call(
                &leader.peer,
                "/internal/remove",
                &req,
                Duration::from_secs(30),
            )
            .await
            .map_err(|e| ApiError::NoQuorum(format!("the leader is unreachable: {e}")))?;
        r.map_err(wire)?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every node.
#[utoipa::path(get, path = "/api/v1/nodes", security(("bearer" = [])),
    responses((status = 200, body = List<Node>), (status = 401, body = ErrorBody)))]
async fn list_nodes(ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let items = m
        .list(kinds::NODES)?
        .iter()
        .map(|r| node_with_role(&m, r))
        .collect::<Result<Vec<_>, _>>()?;
    ok(&List { items })
}

/// One node: hardware, versions, liveness.
#[utoipa::path(get, path = "/api/v1/nodes/{name}", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody)))]
async fn get_node(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let rec = m
        .get(kinds::NODES, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("node {name} does not exist")))?;
    ok(&node_with_role(&m, &rec)?)
}

/// Every cluster-wide setting.
#[utoipa::path(get, path = "/api/v1/settings", security(("bearer" = [])),
    responses((status = 200, body = List<Setting>), (status = 401, body = ErrorBody)))]
async fn list_settings(ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let items = m
        .list(kinds::SETTINGS)?
        .iter()
        .map(setting_of)
        .collect::<Result<Vec<_>, _>>()?;
    ok(&List { items })
}

/// A check of a setting's value: `Ok` for keys the checking module does not own.
type SettingCheck = fn(&str, &serde_json::Value) -> Result<(), ValidationError>;

/// Per-key checks of a setting's value before a PUT stores it (400 with the field, nothing
/// written). A module that reads settings adds its check here.
const SETTING_CHECKS: &[SettingCheck] = &[crate::hostconf::validate_setting];

fn key_of(raw: &str) -> Result<SettingKey, ApiError> {
    SettingKey::new(raw).map_err(|e| ApiError::Invalid(ValidationError::new("key", e.message)))
}

/// One setting.
#[utoipa::path(get, path = "/api/v1/settings/{key}", security(("bearer" = [])), params(("key" = String, Path)),
    responses((status = 200, body = Setting), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_setting(raw: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let key = key_of(&raw)?;
    m.linearizable().await?;
    let rec = m
        .get(kinds::SETTINGS, key.as_str())?
        .ok_or_else(|| ApiError::NotFound(format!("setting {key} does not exist")))?;
    ok(&setting_of(&rec)?)
}

/// Creates or replaces a setting; `version` (or `If-Match`) makes it a compare-and-set.
#[utoipa::path(put, path = "/api/v1/settings/{key}", security(("bearer" = [])), params(("key" = String, Path)),
    request_body = SettingValue,
    responses((status = 200, body = Setting), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn put_setting(
    raw: String,
    ctx: Ctx,
    authz: Option<String>,
    if_match: Option<String>,
    body: Bytes,
) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let key = key_of(&raw)?;
    let req: SettingValue = parse(&body)?;
    req.validate()?;
    for check in SETTING_CHECKS {
        check(key.as_str(), &req.value)?;
    }
    let header_version = match if_match {
        Some(v) => Some(v.trim_matches('"').parse::<u64>().map_err(|_| {
            ApiError::bad(
                format!("If-Match {v:?} is not a version number"),
                Some("If-Match".into()),
            )
        })?),
        None => None,
    };
    let expected_version = req.version.or(header_version);
    let res = m
        .write_ok(Request::Put {
            kind: kinds::SETTINGS.into(),
            name: key.to_string(),
            value: serde_json::json!({ "value": req.value }),
            expected_version,
        })
        .await?;
    match res {
        Response::Written(rec) => ok(&setting_of(&rec)?),
        other => Err(ApiError::Internal(format!(
            "unexpected store answer {other:?}"
        ))),
    }
}

/// Deletes a setting.
#[utoipa::path(delete, path = "/api/v1/settings/{key}", security(("bearer" = [])),
    params(("key" = String, Path), DeleteQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_setting(raw: String, q: DeleteQuery, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let key = key_of(&raw)?;
    m.write_ok(Request::Delete {
        kind: kinds::SETTINGS.into(),
        name: key.to_string(),
        expected_version: q.version,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Streams changes (server-sent events) after revision `since`.
#[utoipa::path(get, path = "/api/v1/events", security(("bearer" = [])), params(EventsQuery),
    responses((status = 200, description = "text/event-stream of WatchEvent", body = WatchEvent),
              (status = 410, body = ErrorBody)))]
async fn events(q: EventsQuery, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let since = q.since.unwrap_or_else(|| m.store.revision());
    let stream = m.store.watch(since).map_err(crate::member::store_err)?;
    let m2 = m.clone();
    let events = stream.filter_map(move |c| {
        let visible = c.kind == kinds::SETTINGS || c.kind == kinds::NODES;
        let ev = visible.then(|| {
            let object = c.record.as_ref().and_then(|r| {
                if r.kind == kinds::SETTINGS {
                    setting_of(r)
                        .ok()
                        .and_then(|s| serde_json::to_value(s).ok())
                } else {
                    node_with_role(&m2, r)
                        .ok()
                        .and_then(|n| serde_json::to_value(n).ok())
                }
            });
            let op = match c.op {
                ChangeOp::Create => WatchOp::Create,
                ChangeOp::Update => WatchOp::Update,
                ChangeOp::Delete => WatchOp::Delete,
            };
            let ev = WatchEvent {
                revision: c.revision,
                kind: c.kind.clone(),
                name: c.name.clone(),
                op,
                object,
            };
            warp::sse::Event::default()
                .id(c.revision.to_string())
                .event("change")
                .json_data(&ev)
        });
        async move { ev.map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))) }
    });
    Ok(warp::sse::reply(
        warp::sse::keep_alive()
            .interval(Duration::from_secs(15))
            .stream(events),
    )
    .into_response())
}

pub(crate) fn host(ctx: &Ctx) -> Result<Arc<crate::host::Host>, ApiError> {
    ctx.host.get().cloned().ok_or_else(|| {
        ApiError::NotReady("this node is not a cluster member yet; retry shortly".into())
    })
}

/// Creates an image; upload its bytes to `/api/v1/images/{name}/content`.
#[utoipa::path(post, path = "/api/v1/images", security(("bearer" = [])), request_body = ImageCreate,
    responses((status = 201, body = Image), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_image(ctx: Ctx, authz: Option<String>, body: Bytes) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: ImageCreate = parse(&body)?;
    let image = images::create(&m, req).await?;
    Ok(warp::reply::with_status(warp::reply::json(&image), StatusCode::CREATED).into_response())
}

/// Every image.
#[utoipa::path(get, path = "/api/v1/images", security(("bearer" = [])),
    responses((status = 200, body = List<Image>), (status = 401, body = ErrorBody)))]
async fn list_images(ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let items = m
        .list(images::KIND)?
        .iter()
        .map(images::image_of)
        .collect::<Result<Vec<_>, _>>()?;
    ok(&List { items })
}

fn image_rec(m: &Member, name: &str) -> Result<Record, ApiError> {
    m.get(images::KIND, name)?
        .ok_or_else(|| ApiError::NotFound(format!("image {name} does not exist")))
}

/// One image.
#[utoipa::path(get, path = "/api/v1/images/{name}", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
async fn get_image(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    ok(&images::image_of(&image_rec(&m, &name)?)?)
}

/// Deletes an image (refused with 409 `in_use` while a VM boots from it or attaches it, or a
/// volume is backed by it).
#[utoipa::path(delete, path = "/api/v1/images/{name}", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_image(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let users = images::users(&m, &name)?;
    if !users.is_empty() {
        return Err(ApiError::Conflict {
            code: "in_use",
            message: format!(
                "image {name} is in use by {}: delete those (or, for VMs, their disks) first",
                users.join(", ")
            ),
        });
    }
    m.write_ok(Request::Delete {
        kind: images::KIND.into(),
        name: name.clone(),
        expected_version: None,
    })
    .await?;
    if let Ok(h) = host(&ctx) {
        let _ = std::fs::remove_file(h.pool.image(&name));
        let _ = std::fs::remove_file(h.pool.upload(&name));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Upload progress of an image on this node (resume from `received`).
#[utoipa::path(get, path = "/api/v1/images/{name}/content", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = images::UploadProgress), (status = 404, body = ErrorBody)))]
async fn image_progress(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let h = host(&ctx)?;
    m.linearizable().await?;
    ok(&images::progress(
        &h,
        &images::image_of(&image_rec(&m, &name)?)?,
    ))
}

/// Uploads (a chunk of) an image's bytes; `Content-Range: bytes START-END/TOTAL` for chunks.
#[utoipa::path(put, path = "/api/v1/images/{name}/content", security(("bearer" = [])), params(("name" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = images::UploadProgress), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn upload_image(
    name: String,
    ctx: Ctx,
    authz: Option<String>,
    range: Option<String>,
    body: Bytes,
) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let h = host(&ctx)?;
    ok(&images::receive(&m, &h, &name, range, body).await?)
}

/// Creates a VM; the leader places it and the chosen node starts it.
#[utoipa::path(post, path = "/api/v1/vms", security(("bearer" = [])), request_body = VmCreate,
    responses((status = 201, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_vm(ctx: Ctx, authz: Option<String>, body: Bytes) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: VmCreate = parse(&body)?;
    let vm = compute::create(&m, req).await?;
    Ok(warp::reply::with_status(warp::reply::json(&vm), StatusCode::CREATED).into_response())
}

/// Every VM.
#[utoipa::path(get, path = "/api/v1/vms", security(("bearer" = [])),
    responses((status = 200, body = List<Vm>), (status = 401, body = ErrorBody)))]
async fn list_vms(ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let items = m
        .list(compute::VMS)?
        .iter()
        .map(compute::vm_of)
        .collect::<Result<Vec<_>, _>>()?;
    ok(&List { items })
}

/// One VM.
#[utoipa::path(get, path = "/api/v1/vms/{name}", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
async fn get_vm(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let rec = m
        .get(compute::VMS, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("VM {name} does not exist")))?;
    ok(&compute::vm_of(&rec)?)
}

/// Query of `DELETE /api/v1/vms/{name}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteVmQuery {
    /// Keep the VM's disks as standalone volumes instead of deleting them.
    #[serde(default)]
    pub keep_disks: bool,
}

/// Deletes a VM and its disks (asynchronously: its node destroys the domain first); with
/// `keep_disks=true` its disks stay as standalone volumes.
#[utoipa::path(delete, path = "/api/v1/vms/{name}", security(("bearer" = [])),
    params(("name" = String, Path), DeleteVmQuery),
    responses((status = 202, body = Vm), (status = 204), (status = 404, body = ErrorBody)))]
async fn delete_vm(
    name: String,
    query: DeleteVmQuery,
    ctx: Ctx,
    authz: Option<String>,
) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let rec = m
        .get(compute::VMS, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("VM {name} does not exist")))?;
    if query.keep_disks {
        crate::storage::keep_disks(&m, &name).await?;
    }
    if compute::vm_of(&rec)?.status.node.is_none() {
        m.write_ok(Request::Delete {
            kind: compute::VMS.into(),
            name,
            expected_version: Some(rec.version),
        })
        .await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let now = crate::now_rfc3339();
    let vm = compute::update(&m, &name, |v| {
        if v.metadata.deletion_requested.is_none() {
            v.metadata.deletion_requested = Some(now.clone());
        }
    })
    .await?;
    Ok(warp::reply::with_status(warp::reply::json(&vm), StatusCode::ACCEPTED).into_response())
}

/// Starts, stops, forces off, reboots, pauses or resumes a VM (sets its desired power state,
/// or asks for a one-shot action; its node converges). See also `POST /api/v1/vms/{name}/migrate`.
#[utoipa::path(post, path = "/api/v1/vms/{name}/{action}", security(("bearer" = [])),
    params(("name" = String, Path), ("action" = String, Path, description = "start | stop | force-stop | reboot | pause | resume")),
    responses((status = 202, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
async fn vm_action(name: String, action: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    if matches!(action.as_str(), "start" | "resume") {
        if let Some(rec) = m.get(compute::VMS, &name)? {
            crate::storage::check_startable(&compute::vm_of(&rec)?)?;
        }
    }
    let vm = crate::lifecycle::power_action(&m, &name, &action).await?;
    Ok(warp::reply::with_status(warp::reply::json(&vm), StatusCode::ACCEPTED).into_response())
}

/// Creates a VM group (affinity or anti-affinity, hard or soft).
#[utoipa::path(post, path = "/api/v1/vm-groups", security(("bearer" = [])), request_body = VmGroupCreate,
    responses((status = 201, body = VmGroup), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_group(ctx: Ctx, authz: Option<String>, body: Bytes) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: VmGroupCreate = parse(&body)?;
    req.validate()?;
    let name = req.metadata.name.to_string();
    let g = VmGroup {
        metadata: req.metadata.into_metadata(),
        spec: req.spec,
        status: Default::default(),
    };
    match m
        .write_ok(Request::Create {
            kind: compute::GROUPS.into(),
            name,
            value: crate::member::encode(&g)?,
            idempotency_key: None,
        })
        .await?
    {
        Response::Written(rec) => Ok(warp::reply::with_status(
            warp::reply::json(&compute::group_of(&rec)?),
            StatusCode::CREATED,
        )
        .into_response()),
        other => Err(ApiError::Internal(format!(
            "unexpected store answer {other:?}"
        ))),
    }
}

/// Every VM group.
#[utoipa::path(get, path = "/api/v1/vm-groups", security(("bearer" = [])),
    responses((status = 200, body = List<VmGroup>), (status = 401, body = ErrorBody)))]
async fn list_groups(ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let items = m
        .list(compute::GROUPS)?
        .iter()
        .map(compute::group_of)
        .collect::<Result<Vec<_>, _>>()?;
    ok(&List { items })
}

/// Deletes a VM group.
#[utoipa::path(delete, path = "/api/v1/vm-groups/{name}", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_group(name: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.write_ok(Request::Delete {
        kind: compute::GROUPS.into(),
        name,
        expected_version: None,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Cordons (no new VMs are placed there) or uncordons a node, or puts it into maintenance
/// (cordoned, every VM moved away; `status.maintenance` tells how far) or out of it
/// (`maintenance-exit`, or `uncordon`).
#[utoipa::path(post, path = "/api/v1/nodes/{name}/{action}", security(("bearer" = [])),
    params(("name" = String, Path), ("action" = String, Path, description = "cordon | uncordon | maintenance | maintenance-exit")),
    responses((status = 200, body = Node), (status = 404, body = ErrorBody)))]
async fn node_action(name: String, action: String, ctx: Ctx, authz: Option<String>) -> ApiResult {
    let (m, _) = authenticate(&ctx, authz).await?;
    crate::lifecycle::node_action(&m, &name, &action).await?;
    let rec = m
        .get(kinds::NODES, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("node {name} does not exist")))?;
    ok(&node_with_role(&m, &rec)?)
}

pub(crate) fn with_ctx(ctx: Ctx) -> impl Filter<Extract = (Ctx,), Error = Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

pub(crate) fn authz() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
}

pub(crate) fn body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::content_length_limit(MAX_BODY).and(warp::body::bytes())
}

pub(crate) fn reply(r: ApiResult) -> HttpResponse {
    match r {
        Ok(resp) => resp,
        Err(e) => {
            if e.parts().0.is_server_error() {
                warn!(error = %e, "request failed");
            }
            e.into_response()
        }
    }
}

/// Turns warp's own rejections (no route, wrong method, bad query, body too large) into the
/// API's error body.
async fn recover(r: Rejection) -> Result<HttpResponse, Infallible> {
    // warp merges the rejections of every route tried; the specific causes come first, the
    // method mismatch (which other routes on the same path add) last.
    let e = if r.is_not_found() {
        ApiError::NotFound("no such API route; see /api/v1/openapi.json".into())
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::TooLarge(MAX_BODY)
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::bad(
            "the request has no body; send a JSON object with a Content-Length",
            None,
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        ApiError::bad(format!("the query string is not valid: {e}"), None)
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        ApiError::bad(e.to_string(), None)
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else {
        ApiError::bad(format!("the request is not valid: {r:?}"), None)
    };
    Ok(e.into_response())
}

/// All API routes.
pub fn routes(ctx: Ctx) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let v1 = warp::path("api").and(warp::path("v1"));
    let health_r = v1
        .and(warp::path!("health"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .then(health)
        .map(reply);
    let login_r = v1
        .and(warp::path!("auth" / "login"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(warp::ext::optional::<ConnInfo>())
        .and(body())
        .then(login)
        .map(reply)
        .boxed();
    let cluster_r = v1
        .and(warp::path!("cluster"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(cluster_status)
        .map(reply)
        .boxed();
    let join_r = v1
        .and(warp::path!("cluster" / "join"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(body())
        .then(cluster_join)
        .map(reply)
        .boxed();
    let remove_r = v1
        .and(warp::path!("cluster" / "remove"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(body())
        .then(cluster_remove)
        .map(reply)
        .boxed();
    let nodes_r = v1
        .and(warp::path!("nodes"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(list_nodes)
        .map(reply)
        .boxed();
    let node_r = v1
        .and(warp::path!("nodes" / String))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(get_node)
        .map(reply)
        .boxed();
    let settings_r = v1
        .and(warp::path!("settings"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(list_settings)
        .map(reply)
        .boxed();
    let setting_get = v1
        .and(warp::path!("settings" / String))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(get_setting)
        .map(reply)
        .boxed();
    let setting_put = v1
        .and(warp::path!("settings" / String))
        .and(warp::put())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(warp::header::optional::<String>("if-match"))
        .and(body())
        .then(put_setting)
        .map(reply)
        .boxed();
    let setting_delete = v1
        .and(warp::path!("settings" / String))
        .and(warp::delete())
        .and(warp::query::<DeleteQuery>())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(delete_setting)
        .map(reply)
        .boxed();
    let events_r = v1
        .and(warp::path!("events"))
        .and(warp::get())
        .and(warp::query::<EventsQuery>())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(events)
        .map(reply)
        .boxed();
    let images_post = v1
        .and(warp::path!("images"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(body())
        .then(create_image)
        .map(reply)
        .boxed();
    let images_get = v1
        .and(warp::path!("images"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(list_images)
        .map(reply)
        .boxed();
    let image_get = v1
        .and(warp::path!("images" / String))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(get_image)
        .map(reply)
        .boxed();
    let image_delete = v1
        .and(warp::path!("images" / String))
        .and(warp::delete())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(delete_image)
        .map(reply)
        .boxed();
    let image_progress_r = v1
        .and(warp::path!("images" / String / "content"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(image_progress)
        .map(reply)
        .boxed();
    let image_upload = v1
        .and(warp::path!("images" / String / "content"))
        .and(warp::put())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(warp::header::optional::<String>("content-range"))
        .and(warp::body::content_length_limit(MAX_CHUNK).and(warp::body::bytes()))
        .then(upload_image)
        .map(reply)
        .boxed();
    let images_r = images_post
        .or(images_get)
        .unify()
        .or(image_get)
        .unify()
        .or(image_delete)
        .unify()
        .or(image_progress_r)
        .unify()
        .or(image_upload)
        .unify()
        .boxed();
    let vms_post = v1
        .and(warp::path!("vms"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(body())
        .then(create_vm)
        .map(reply)
        .boxed();
    let vms_get = v1
        .and(warp::path!("vms"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(list_vms)
        .map(reply)
        .boxed();
    let vm_get = v1
        .and(warp::path!("vms" / String))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(get_vm)
        .map(reply)
        .boxed();
    let vm_delete = v1
        .and(warp::path!("vms" / String))
        .and(warp::delete())
        .and(warp::query::<DeleteVmQuery>())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(delete_vm)
        .map(reply)
        .boxed();
    let vm_action_r = v1
        .and(warp::path!("vms" / String / String))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(vm_action)
        .map(reply)
        .boxed();
    let groups_post = v1
        .and(warp::path!("vm-groups"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(body())
        .then(create_group)
        .map(reply)
        .boxed();
    let groups_get = v1
        .and(warp::path!("vm-groups"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(list_groups)
        .map(reply)
        .boxed();
    let group_delete = v1
        .and(warp::path!("vm-groups" / String))
        .and(warp::delete())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(delete_group)
        .map(reply)
        .boxed();
    let node_action_r = v1
        .and(warp::path!("nodes" / String / String))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(node_action)
        .map(reply)
        .boxed();
    let vms_r = vms_post
        .or(vms_get)
        .unify()
        .or(vm_get)
        .unify()
        .or(vm_delete)
        .unify()
        .or(vm_action_r)
        .unify()
        .or(groups_post)
        .unify()
        .or(groups_get)
        .unify()
        .or(group_delete)
        .unify()
        .or(node_action_r)
        .unify()
        .boxed();
    let openapi_r = v1
        .and(warp::path!("openapi.json"))
        .and(warp::get())
        .map(|| warp::reply::json(&openapi()).into_response())
        .boxed();
    health_r
        .or(login_r)
        .unify()
        .or(cluster_r)
        .unify()
        .or(join_r)
        .unify()
        .or(remove_r)
        .unify()
        .or(nodes_r)
        .unify()
        .or(node_r)
        .unify()
        .or(settings_r)
        .unify()
        .or(setting_get)
        .unify()
        .or(setting_put)
        .unify()
        .or(setting_delete)
        .unify()
        .or(events_r)
        .unify()
        .or(openapi_r)
        .unify()
        // Feature modules come before the generic `vms/{name}/{action}` route.
        .or(crate::console::routes(ctx.clone()))
        .unify()
        .or(crate::lifecycle::routes(ctx.clone()))
        .unify()
        .or(crate::storage::routes(ctx.clone()))
        .unify()
        .or(crate::hotplug::routes(ctx.clone()))
        .unify()
        .or(crate::upgrade::routes::routes(ctx.clone()))
        .unify()
        .or(images_r)
        .unify()
        .or(vms_r)
        .unify()
        .recover(recover)
        .unify()
        .with(warp::trace(|info| {
            tracing::info_span!(
                "request",
                id = %uuid::Uuid::new_v4().simple(),
                method = %info.method(),
                path = %info.path(),
            )
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> String {
        let mut s = serde_json::to_string_pretty(&openapi()).unwrap();
        s.push('\n');
        s
    }

    /// H4: the document is generated from the types, checked in, and any drift fails the build.
    /// Regenerate with `make openapi` (KEEL_BLESS=1).
    #[test]
    fn openapi_document_is_checked_in() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let generated = document();
        if std::env::var("KEEL_BLESS").as_deref() == Ok("1") {
            std::fs::write(path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is stale: run `make openapi` and commit it"
        );
    }

    /// Every operation declares its responses, error responses use the error schema, and
    /// operation ids are unique.
    #[test]
    fn every_route_has_responses_and_errors() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let mut ids = std::collections::BTreeSet::new();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 10);
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap().to_string();
                assert!(ids.insert(id.clone()), "duplicate operation id {id}");
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    !responses.is_empty(),
                    "{method} {path} declares no responses"
                );
                for (status, r) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        let schema = &r["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
                if path != "/api/v1/health"
                    && path != "/api/v1/auth/login"
                    && path != "/api/v1/cluster/join"
                {
                    assert!(
                        op["security"].is_array(),
                        "{method} {path} is not marked as authenticated"
                    );
                }
            }
        }
    }
}
