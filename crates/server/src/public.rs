//! The public endpoints on the TLS listener: bundle publication (SPIFFE bundle endpoint,
//! JWKS, OIDC discovery) and operations (health, readiness, Prometheus metrics).

use crate::datastore::Datastore;
use crate::state::State;
use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::Arc;
use wimse_core::bundle::KeyUse;

/// The public router.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/.well-known/spiffe-bundle", get(spiffe_bundle))
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The SPIFFE bundle endpoint (`https_web` / `https_spiffe` profiles serve the same body).
async fn spiffe_bundle(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    (
        [("content-type", "application/json")],
        state.bundle().to_spiffe_json(),
    )
}

/// The JWT-SVID keys as a plain JWK Set, for OIDC-style verifiers.
async fn jwks(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    (
        [("content-type", "application/json")],
        state.bundle().jwks_json(KeyUse::JwtSvid),
    )
}

/// OIDC discovery, enough for verifiers to find the JWT-SVID keys.
async fn openid_configuration(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    let issuer = format!("https://{}", state.config.bind);
    let body = serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}{}", wimse_core::token::exchange::TOKEN_PATH),
        "grant_types_supported": [
            wimse_core::token::exchange::GRANT_TYPE,
            wimse_core::token::chain::JWT_BEARER,
        ],
        "identity_chaining_requested_token_types_supported": [
            wimse_core::token::exchange::token_type::JWT,
        ],
        "token_endpoint_auth_methods_supported": ["tls_client_auth"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    ([("content-type", "application/json")], body.to_string())
}

/// Ready when the datastore answers and the bundle has keys.
async fn readyz(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    let store_ok = state.store.current_revision().await.is_ok();
    let bundle = state.bundle();
    if store_ok && !bundle.x509_authorities.is_empty() && !bundle.jwt_authorities.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> impl IntoResponse {
    if let Ok(entries) = state.store.count_entries().await {
        state.metrics.entries.set(entries);
    }
    if let Ok(agents) = state.store.count_agents().await {
        state.metrics.agents.set(agents);
    }
    if let Ok(records) = state
        .store
        .list_authorities(wimse_core::token::unix_now())
        .await
    {
        state.metrics.set_authorities(&records);
    }
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
