//! Storage: pools, volumes, disk QoS and resize, snapshots, clones and templates.

use warp::filters::BoxedFilter;
use warp::reply::Response as HttpResponse;
use warp::Filter;

use crate::api::Ctx;

/// This module's part of the OpenAPI document (merged by [`crate::api::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi()]
pub struct ApiDoc;

/// This module's routes (tried before the generic `vms/{name}/{action}` route).
pub fn routes(_ctx: Ctx) -> BoxedFilter<(HttpResponse,)> {
    warp::any()
        .and_then(|| async { Err::<HttpResponse, _>(warp::reject::not_found()) })
        .boxed()
}
