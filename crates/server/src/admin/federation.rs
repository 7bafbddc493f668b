//! The admin API of federation: relationships with foreign trust domains
//! (`/v1/federations`) and their stored bundles (`/v1/bundles`).

use super::{AdminError, AdminResult, Caller};
use crate::api::{FederatedBundleView, FederationRequest, FederationView};
use crate::datastore::{Datastore, EndpointProfile, FederatedBundle, FederationRelationship};
use crate::federation::{self, FederationError};
use crate::state::State;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State as AxState};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use wimse_core::TrustDomain;
use wimse_core::bundle::TrustBundle;
use wimse_core::token::unix_now;

/// The federation routes, merged into the admin router.
pub(super) fn routes() -> Router<Arc<State>> {
    // A bundle may be as large as one fetched from an endpoint, and JSON escaping may double
    // it inside a relationship request.
    let body_limit = DefaultBodyLimit::max(2 * federation::MAX_BUNDLE_BYTES + 64 * 1024);
    Router::new()
        .route(
            "/v1/federations",
            post(create_federation).get(list_federations),
        )
        .route(
            "/v1/federations/{trust_domain}",
            get(show_federation)
                .put(update_federation)
                .delete(delete_federation),
        )
        .route(
            "/v1/federations/{trust_domain}/refresh",
            post(refresh_federation),
        )
        .route("/v1/bundles", get(list_bundles))
        .route(
            "/v1/bundles/{trust_domain}",
            get(show_bundle).put(set_bundle).delete(delete_bundle),
        )
        .layer(body_limit)
}

impl From<FederationError> for AdminError {
    fn from(e: FederationError) -> Self {
        match e {
            FederationError::Invalid(_) | FederationError::Bundle { .. } => {
                AdminError::BadRequest(e.to_string())
            }
            // The operator must give a first bundle: the request conflicts with what is stored.
            FederationError::NoEndpointBundle(_) => AdminError::Conflict(e.to_string()),
            FederationError::Config(_) => AdminError::Internal(e.to_string()),
            FederationError::Store(store) => store.into(),
            other => AdminError::Upstream(other.to_string()),
        }
    }
}

/// A trust domain named in a path.
fn trust_domain(name: &str) -> Result<TrustDomain, AdminError> {
    TrustDomain::new(name).map_err(|e| AdminError::BadRequest(format!("trust domain: {e}")))
}

fn federation_view(r: &FederationRelationship, bundle: Option<&TrustBundle>) -> FederationView {
    FederationView {
        trust_domain: r.trust_domain.to_string(),
        bundle_endpoint_url: r.bundle_endpoint_url.clone(),
        profile: r.profile.name().to_owned(),
        endpoint_spiffe_id: match &r.profile {
            EndpointProfile::HttpsWeb => None,
            EndpointProfile::HttpsSpiffe { endpoint_id } => Some(endpoint_id.to_string()),
        },
        created_at: r.created_at,
        last_refresh_at: r.last_refresh_at,
        last_error: r.last_error.clone(),
        bundle_sequence: bundle.map(|b| b.sequence),
    }
}

fn bundle_view(b: &FederatedBundle) -> FederatedBundleView {
    use wimse_core::bundle::KeyUse;
    FederatedBundleView {
        trust_domain: b.bundle.trust_domain().to_string(),
        sequence: b.bundle.sequence,
        x509_authorities: b.bundle.x509_authorities.len(),
        jwt_authorities: b.bundle.authorities(KeyUse::JwtSvid).len(),
        wit_authorities: b.bundle.authorities(KeyUse::WitSvid).len(),
        updated_at: b.updated_at,
        bundle: b.bundle.to_spiffe_json(),
    }
}

/// The view of the relationship with `td` as stored now.
async fn stored_federation(state: &State, td: &TrustDomain) -> Result<FederationView, AdminError> {
    let relationship =
        state.store.get_federation(td).await?.ok_or_else(|| {
            AdminError::NotFound(format!("no federation relationship with `{td}`"))
        })?;
    let bundle = state.store.get_federated_bundle(td).await?;
    Ok(federation_view(
        &relationship,
        bundle.as_ref().map(|b| &b.bundle),
    ))
}

/// Stores the initial bundle, once its relationship is stored.
async fn store_initial_bundle(
    state: &State,
    bundle: Option<TrustBundle>,
) -> Result<(), AdminError> {
    if let Some(bundle) = bundle {
        state
            .store
            .put_federated_bundle(&bundle, unix_now())
            .await?;
    }
    Ok(())
}

async fn create_federation(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Json(req): Json<FederationRequest>,
) -> AdminResult<FederationView> {
    let relationship = federation::relationship(&req, &state.config.trust_domain, unix_now())?;
    if state
        .store
        .get_federation(&relationship.trust_domain)
        .await?
        .is_some()
    {
        return Err(AdminError::Conflict(format!(
            "a federation relationship with `{}` already exists",
            relationship.trust_domain
        )));
    }
    let bundle = federation::initial_bundle(&relationship, &req)?;
    state.store.create_federation(&relationship).await?;
    store_initial_bundle(&state, bundle).await?;
    tracing::info!(
        trust_domain = %relationship.trust_domain,
        url = %relationship.bundle_endpoint_url,
        profile = relationship.profile.name(),
        "federation relationship created"
    );
    let action = format!("federation create {}", relationship.trust_domain);
    state.audit.admin(caller.0, &action, None, None, None);
    // The refresher fetches the new relationship's bundle within a second.
    Ok(Json(
        stored_federation(&state, &relationship.trust_domain).await?,
    ))
}

async fn update_federation(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
    Json(req): Json<FederationRequest>,
) -> AdminResult<FederationView> {
    let td = trust_domain(&name)?;
    let relationship = federation::relationship(&req, &state.config.trust_domain, unix_now())?;
    if relationship.trust_domain != td {
        return Err(AdminError::BadRequest(format!(
            "`trust_domain` `{}` is not the `{td}` of the path",
            relationship.trust_domain
        )));
    }
    let bundle = federation::initial_bundle(&relationship, &req)?;
    state.store.update_federation(&relationship).await?;
    store_initial_bundle(&state, bundle).await?;
    tracing::info!(trust_domain = %td, "federation relationship updated");
    state.audit.admin(
        caller.0,
        &format!("federation update {td}"),
        None,
        None,
        None,
    );
    // Its refresh outcome is cleared, so the refresher fetches it again within a second.
    Ok(Json(stored_federation(&state, &td).await?))
}

async fn list_federations(AxState(state): AxState<Arc<State>>) -> AdminResult<Vec<FederationView>> {
    let bundles = state.store.list_federated_bundles().await?;
    let relationships = state.store.list_federations().await?;
    Ok(Json(
        relationships
            .iter()
            .map(|r| {
                let bundle = bundles
                    .iter()
                    .find(|b| b.bundle.trust_domain() == &r.trust_domain);
                federation_view(r, bundle.map(|b| &b.bundle))
            })
            .collect(),
    ))
}

async fn show_federation(
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
) -> AdminResult<FederationView> {
    Ok(Json(
        stored_federation(&state, &trust_domain(&name)?).await?,
    ))
}

async fn delete_federation(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
) -> AdminResult<FederationView> {
    let td = trust_domain(&name)?;
    let view = stored_federation(&state, &td).await?;
    state.store.delete_federation(&td).await?;
    tracing::info!(trust_domain = %td, "federation relationship deleted");
    state.audit.admin(
        caller.0,
        &format!("federation delete {td}"),
        None,
        None,
        None,
    );
    Ok(Json(view))
}

/// Fetches the bundle now and answers it, or why the fetch failed (502).
async fn refresh_federation(
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
) -> AdminResult<FederatedBundleView> {
    let td = trust_domain(&name)?;
    let relationship =
        state.store.get_federation(&td).await?.ok_or_else(|| {
            AdminError::NotFound(format!("no federation relationship with `{td}`"))
        })?;
    federation::refresh(&state, &relationship).await?;
    show_stored_bundle(&state, &td).await.map(Json)
}

async fn list_bundles(
    AxState(state): AxState<Arc<State>>,
) -> AdminResult<Vec<FederatedBundleView>> {
    let bundles = state.store.list_federated_bundles().await?;
    Ok(Json(bundles.iter().map(bundle_view).collect()))
}

async fn show_stored_bundle(
    state: &State,
    td: &TrustDomain,
) -> Result<FederatedBundleView, AdminError> {
    state
        .store
        .get_federated_bundle(td)
        .await?
        .map(|b| bundle_view(&b))
        .ok_or_else(|| AdminError::NotFound(format!("no bundle of `{td}` is stored")))
}

async fn show_bundle(
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
) -> AdminResult<FederatedBundleView> {
    Ok(Json(
        show_stored_bundle(&state, &trust_domain(&name)?).await?,
    ))
}

#[derive(Deserialize)]
struct SetBundleQuery {
    format: Option<String>,
}

/// Stores an operator's bundle of a foreign trust domain (SPIFFE JSON, or `format=pem`).
async fn set_bundle(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
    Query(q): Query<SetBundleQuery>,
    body: String,
) -> AdminResult<FederatedBundleView> {
    let td = trust_domain(&name)?;
    if td == state.config.trust_domain {
        return Err(AdminError::BadRequest(format!(
            "`{td}` is this server's own trust domain: its bundle is built from its own keys"
        )));
    }
    let pem = federation::bundle_format_is_pem(q.format.as_deref())?;
    let bundle = federation::operator_bundle(&td, &body, pem)?;
    state
        .store
        .put_federated_bundle(&bundle, unix_now())
        .await?;
    tracing::info!(trust_domain = %td, sequence = bundle.sequence, "federated bundle set");
    let action = format!("bundle set {td} sequence {}", bundle.sequence);
    state.audit.admin(caller.0, &action, None, None, None);
    Ok(Json(show_stored_bundle(&state, &td).await?))
}

async fn delete_bundle(
    ConnectInfo(caller): ConnectInfo<Caller>,
    AxState(state): AxState<Arc<State>>,
    Path(name): Path<String>,
) -> AdminResult<FederatedBundleView> {
    let td = trust_domain(&name)?;
    let view = show_stored_bundle(&state, &td).await?;
    state.store.delete_federated_bundle(&td).await?;
    tracing::info!(trust_domain = %td, "federated bundle deleted");
    state
        .audit
        .admin(caller.0, &format!("bundle delete {td}"), None, None, None);
    Ok(Json(view))
}
