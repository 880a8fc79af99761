//! The upgrade API:
//!
//! ```text
//!   POST /api/v1/upgrade-bundles   body: the bundle file (streamed to disk, verified)
//!                                  ─▶ 201 UpgradeBundle {sha256, version, size_bytes, ...}
//!   GET  /api/v1/upgrade-bundles   the bundles this node holds
//!   POST /api/v1/upgrades          UpgradeCreate {bundle, nodes?, allow_downgrade?, tries?}
//!                                  ─▶ 201 Upgrade (the loops in run.rs carry it out)
//!   GET  /api/v1/upgrades, GET /api/v1/upgrades/{name}
//! ```

use bytes::Bytes;
use keel_model::{ErrorBody, Upgrade, UpgradeBundle, UpgradeCreate, UpgradeSpec};
use keel_store::{Request, Response};
use tracing::info;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response as HttpResponse;
use warp::{Filter, Reply};

use super::bundles::{self, Refusal};
use super::run::{node_views, stored, upgrade_of, upgrades};
use super::{initial_status, KIND};
use crate::api::{authenticate, authz, now_unix, parse, with_ctx, Ctx, List};
use crate::error::ApiError;

/// Boot tries allowed for a new slot.
pub const MAX_TRIES: u32 = 10;

type Result<T> = std::result::Result<T, Refusal>;

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        let (status, code, field, _) = e.parts();
        let message = match &e {
            ApiError::Invalid(v) => v.message.clone(),
            other => other.to_string(),
        };
        Refusal {
            status,
            code,
            message,
            field,
        }
    }
}

fn answer(r: Result<HttpResponse>) -> HttpResponse {
    match r {
        Ok(resp) => resp,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(code = e.code, message = %e.message, "upgrade request failed");
            }
            let retry = e.status == StatusCode::SERVICE_UNAVAILABLE;
            let body = ErrorBody::new(e.code, e.message, e.field);
            let mut resp =
                warp::reply::with_status(warp::reply::json(&body), e.status).into_response();
            if retry {
                resp.headers_mut().insert(
                    warp::http::header::RETRY_AFTER,
                    warp::http::HeaderValue::from_static("2"),
                );
            }
            resp
        }
    }
}

fn refuse(status: StatusCode, code: &'static str, message: String, field: &str) -> Refusal {
    Refusal::new(status, code, message, Some(field))
}

/// Uploads an update bundle (the body is the file, `application/octet-stream`): it is
/// written to this node's data partition while hashed, then verified with the node's trusted
/// keys (signature, manifest, every payload hash). A refused bundle leaves nothing behind.
#[utoipa::path(post, path = "/api/v1/upgrade-bundles", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the bundle file (keel-update.bundle)"),
    responses((status = 201, body = UpgradeBundle),
              (status = 400, body = ErrorBody, description = "not_a_bundle, unsigned, untrusted_key, bad_signature, bad_manifest, hash_mismatch, truncated, trailing_data, upload_broken"),
              (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 503, body = ErrorBody, description = "no_trusted_keys: this node has no keys to verify with")))]
async fn upload_bundle<S, B>(ctx: Ctx, authz: Option<String>, body: S) -> Result<HttpResponse>
where
    S: futures::Stream<Item = std::result::Result<B, warp::Error>> + Unpin,
    B: bytes::Buf,
{
    let (m, _) = authenticate(&ctx, authz).await?;
    let b = bundles::receive(&bundles::config(), &m.identity.name, body).await?;
    Ok(warp::reply::with_status(warp::reply::json(&b), StatusCode::CREATED).into_response())
}

/// The update bundles this node holds.
#[utoipa::path(get, path = "/api/v1/upgrade-bundles", security(("bearer" = [])),
    responses((status = 200, body = List<UpgradeBundle>), (status = 401, body = ErrorBody)))]
async fn list_bundles(ctx: Ctx, authz: Option<String>) -> Result<HttpResponse> {
    let (m, _) = authenticate(&ctx, authz).await?;
    let name = m.identity.name.clone();
    let items = tokio::task::spawn_blocking(move || bundles::list(&bundles::config(), &name))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(warp::reply::json(&List { items }).into_response())
}

/// The spec of a new upgrade, checked against the bundle and the nodes.
pub fn plan_spec(
    req: &UpgradeCreate,
    bundle: &UpgradeBundle,
    nodes: &std::collections::BTreeMap<String, super::NodeView>,
) -> Result<UpgradeSpec> {
    let tries = req.tries.unwrap_or(3);
    if tries == 0 || tries > MAX_TRIES {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("tries must be 1 to {MAX_TRIES} (boot tries of the new slot), not {tries}"),
            "tries",
        ));
    }
    let names: Vec<String> = match &req.nodes {
        None => nodes.keys().cloned().collect(),
        Some(list) => {
            if list.is_empty() {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_field",
                    "nodes is empty; leave it out to upgrade every node".into(),
                    "nodes",
                ));
            }
            for (i, n) in list.iter().enumerate() {
                if !nodes.contains_key(n) {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_field",
                        format!(
                            "node {n:?} is not a member of this cluster (members: {})",
                            nodes.keys().cloned().collect::<Vec<_>>().join(", ")
                        ),
                        &format!("nodes[{i}]"),
                    ));
                }
                if list[..i].contains(n) {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "invalid_field",
                        format!("node {n} is listed twice"),
                        &format!("nodes[{i}]"),
                    ));
                }
            }
            list.clone()
        }
    };
    if !req.allow_downgrade {
        for n in &names {
            let running = nodes
                .get(n)
                .map(|v| v.image_version.clone())
                .unwrap_or_default();
            if !running.is_empty()
                && keel_update::version::compare(&bundle.version, &running).is_lt()
            {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    "downgrade",
                    format!(
                        "the bundle's version {} is older than {running} on {n}; set allow_downgrade to install it anyway",
                        bundle.version
                    ),
                    "allow_downgrade",
                ));
            }
        }
    }
    Ok(UpgradeSpec {
        version: bundle.version.clone(),
        sha256: bundle.sha256.clone(),
        size_bytes: bundle.size_bytes,
        allow_downgrade: req.allow_downgrade,
        tries,
        nodes: names,
        source: bundle.node.clone(),
    })
}

/// Starts a rolling upgrade to a bundle uploaded to this node before: one node at a time,
/// drained (maintenance), its inactive slot written, rebooted, blessed once healthy. Only one
/// upgrade runs at a time.
#[utoipa::path(post, path = "/api/v1/upgrades", request_body = UpgradeCreate, security(("bearer" = [])),
    responses((status = 201, body = Upgrade),
              (status = 400, body = ErrorBody, description = "bad_request, invalid_field (bundle, nodes[i], tries)"),
              (status = 404, body = ErrorBody, description = "not_found: no bundle with that sha256 on this node (field bundle)"),
              (status = 409, body = ErrorBody, description = "upgrade_running, downgrade (field allow_downgrade)")))]
async fn create_upgrade(ctx: Ctx, authz: Option<String>, body: Bytes) -> Result<HttpResponse> {
    let (m, _) = authenticate(&ctx, authz).await?;
    let req: UpgradeCreate = parse(&body)?;
    if !bundles::is_sha256(&req.bundle) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "bundle must be the bundle's sha256 (64 lowercase hex digits), as POST /api/v1/upgrade-bundles returned it".into(),
            "bundle",
        ));
    }
    let cfg = bundles::config();
    if !bundles::path_of(&cfg.dir, &req.bundle).exists() {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no bundle {} was uploaded to this node ({}); upload it with POST /api/v1/upgrade-bundles to the same node first",
                req.bundle, m.identity.name
            ),
            "bundle",
        ));
    }
    let (sha, me) = (req.bundle.clone(), m.identity.name.clone());
    let bundle =
        tokio::task::spawn_blocking(move || bundles::describe(&cfg.dir, &cfg.keys, &sha, &me))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| {
                let mut r = bundles::refusal_of(&e);
                r.field = Some("bundle".into());
                r
            })?;
    m.linearizable().await?;
    if let Some(running) = upgrades(&m)?
        .into_iter()
        .find(|u| !u.status.phase.is_final())
    {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "upgrade_running",
            format!(
                "upgrade {} is not finished ({}); wait for it (keel upgrade status {})",
                running.metadata.name, running.status.message, running.metadata.name
            ),
            None,
        ));
    }
    let views = node_views(&m)?;
    let spec = plan_spec(&req, &bundle, &views)?;
    let status = initial_status(&spec, &views);
    let now = now_unix();
    for attempt in 0..5u32 {
        let name = if attempt == 0 {
            format!("upgrade-{now}")
        } else {
            format!("upgrade-{now}-{attempt}")
        };
        let u = Upgrade {
            metadata: keel_model::Metadata {
                name: name.clone(),
                ..Default::default()
            },
            spec: spec.clone(),
            status: status.clone(),
        };
        match m
            .write(Request::Create {
                kind: KIND.into(),
                name: name.clone(),
                value: crate::member::encode(&stored(&u))?,
                idempotency_key: None,
            })
            .await?
        {
            Response::Written(rec) => {
                info!(upgrade = %name, version = %spec.version, nodes = ?spec.nodes, "upgrade created");
                return Ok(warp::reply::with_status(
                    warp::reply::json(&upgrade_of(&rec)?),
                    StatusCode::CREATED,
                )
                .into_response());
            }
            Response::Failed(keel_store::ApplyFailure::AlreadyExists { .. }) => continue,
            Response::Failed(f) => return Err(crate::member::apply_err(f).into()),
            other => {
                return Err(ApiError::Internal(format!("unexpected store answer {other:?}")).into())
            }
        }
    }
    Err(ApiError::Internal("could not find a free upgrade name".into()).into())
}

/// Every upgrade, oldest first.
#[utoipa::path(get, path = "/api/v1/upgrades", security(("bearer" = [])),
    responses((status = 200, body = List<Upgrade>), (status = 401, body = ErrorBody)))]
async fn list_upgrades(ctx: Ctx, authz: Option<String>) -> Result<HttpResponse> {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    Ok(warp::reply::json(&List {
        items: upgrades(&m)?,
    })
    .into_response())
}

/// One upgrade: overall phase and message, and every node's phase and message.
#[utoipa::path(get, path = "/api/v1/upgrades/{name}", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = Upgrade), (status = 404, body = ErrorBody)))]
async fn get_upgrade(name: String, ctx: Ctx, authz: Option<String>) -> Result<HttpResponse> {
    let (m, _) = authenticate(&ctx, authz).await?;
    m.linearizable().await?;
    let rec = m
        .get(KIND, &name)?
        .ok_or_else(|| ApiError::NotFound(format!("upgrade {name} does not exist")))?;
    Ok(warp::reply::json(&upgrade_of(&rec)?).into_response())
}

/// This module's part of the OpenAPI document (merged by [`crate::api::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(upload_bundle, list_bundles, create_upgrade, list_upgrades, get_upgrade),
    components(schemas(UpgradeBundle, UpgradeCreate, Upgrade, List<Upgrade>, List<UpgradeBundle>))
)]
pub struct ApiDoc;

/// This module's routes.
pub fn routes(ctx: Ctx) -> BoxedFilter<(HttpResponse,)> {
    let v1 = warp::path("api").and(warp::path("v1"));
    let upload = v1
        .and(warp::path!("upgrade-bundles"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(warp::body::stream())
        .then(upload_bundle)
        .map(answer)
        .boxed();
    let list_b = v1
        .and(warp::path!("upgrade-bundles"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(list_bundles)
        .map(answer)
        .boxed();
    let create = v1
        .and(warp::path!("upgrades"))
        .and(warp::post())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .and(crate::api::body())
        .then(create_upgrade)
        .map(answer)
        .boxed();
    let list_u = v1
        .and(warp::path!("upgrades"))
        .and(warp::get())
        .and(with_ctx(ctx.clone()))
        .and(authz())
        .then(list_upgrades)
        .map(answer)
        .boxed();
    let get_u = v1
        .and(warp::path!("upgrades" / String))
        .and(warp::get())
        .and(with_ctx(ctx))
        .and(authz())
        .then(get_upgrade)
        .map(answer)
        .boxed();
    upload
        .or(list_b)
        .unify()
        .or(create)
        .unify()
        .or(list_u)
        .unify()
        .or(get_u)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::NodeView;
    use std::collections::BTreeMap;

    fn views() -> BTreeMap<String, NodeView> {
        ["node2", "node1", "node3"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    NodeView {
                        ready: true,
                        image_version: "0.1.0-5".into(),
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn bundle(v: &str) -> UpgradeBundle {
        UpgradeBundle {
            sha256: "ab".repeat(32),
            version: v.into(),
            size_bytes: 10,
            key_id: "k".into(),
            node: "node2".into(),
        }
    }

    #[test]
    fn specs_of_requests() {
        let s = plan_spec(&UpgradeCreate::default(), &bundle("0.1.0-6"), &views()).unwrap();
        assert_eq!(s.nodes, vec!["node1", "node2", "node3"], "name order");
        assert_eq!((s.tries, s.source.as_str()), (3, "node2"));

        let req = UpgradeCreate {
            nodes: Some(vec!["node3".into(), "node1".into()]),
            tries: Some(1),
            ..Default::default()
        };
        let s = plan_spec(&req, &bundle("0.1.0-6"), &views()).unwrap();
        assert_eq!(s.nodes, vec!["node3", "node1"], "the order given");

        let bad = |req: UpgradeCreate, v: &str| plan_spec(&req, &bundle(v), &views()).unwrap_err();
        let r = bad(
            UpgradeCreate {
                nodes: Some(vec!["node1".into(), "nodeX".into()]),
                ..Default::default()
            },
            "0.1.0-6",
        );
        assert_eq!(
            (r.code, r.field.as_deref()),
            ("invalid_field", Some("nodes[1]"))
        );
        assert!(r.message.contains("nodeX"), "{}", r.message);
        let r = bad(
            UpgradeCreate {
                nodes: Some(vec!["node1".into(), "node1".into()]),
                ..Default::default()
            },
            "0.1.0-6",
        );
        assert_eq!(r.field.as_deref(), Some("nodes[1]"));
        let r = bad(
            UpgradeCreate {
                nodes: Some(vec![]),
                ..Default::default()
            },
            "0.1.0-6",
        );
        assert_eq!(r.field.as_deref(), Some("nodes"));
        let r = bad(
            UpgradeCreate {
                tries: Some(0),
                ..Default::default()
            },
            "0.1.0-6",
        );
        assert_eq!(r.field.as_deref(), Some("tries"));
        let r = bad(UpgradeCreate::default(), "0.1.0-4");
        assert_eq!((r.status, r.code), (StatusCode::CONFLICT, "downgrade"));
        let req = UpgradeCreate {
            allow_downgrade: true,
            ..Default::default()
        };
        assert!(plan_spec(&req, &bundle("0.1.0-4"), &views()).is_ok());
    }
}
