//! The gateway of `wimse dev`, and the stand-in for the outside authorization server
//! whose access tokens it accepts.
//!
//! The stand-in ("dev login") is a signing key kept in `<data_dir>/login/` with its JWK
//! Set beside it; the server's token service and the gateway both trust that JWK Set,
//! as they would a real authorization server's. Each start mints an access token for
//! the subject `dev-user` with scope `orders` (twelve hours) into
//! `<data_dir>/login/access-token`, so that a first call through the gateway is one
//! `curl` away.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wimse_core::WorkloadId;
use wimse_core::jose::{Algorithm, JwkSet, SigningKey};
use wimse_core::token::access::TrustedIssuer;
use wimse_core::token::exchange::Scope;
use wimse_gateway::route::{Route, Routes};
use wimse_gateway::{Gateway, IssuerKeys};
use wimse_workload::ProofMethod;
use wimse_workload::token_service::TokenServiceClient;

use super::dev_error;
use crate::error::CommandError;

/// The gateway's port when it is free.
const GATEWAY_PORT: u16 = 9100;
/// The `kid` of the dev login key.
const LOGIN_KID: &str = "dev-login-1";
/// How long a minted access token lives, seconds.
const ACCESS_TOKEN_TTL: i64 = 12 * 3600;
/// The subject of the minted access token, and its scope.
const DEV_USER: &str = "dev-user";
const DEV_SCOPE: &str = "orders";

/// The dev trust domain's stand-in for an outside authorization server.
pub(super) struct DevLogin {
    key: SigningKey,
    /// Its issuer identifier.
    pub issuer: String,
    /// The audience its tokens name: the gateway.
    pub audience: String,
    jwks: JwkSet,
    /// Its JWK Set, as a file.
    pub jwks_file: PathBuf,
    /// The minted access token's file.
    pub access_token_file: PathBuf,
}

impl DevLogin {
    /// The login of the trust domain under `dir`: its key is made on the first run and
    /// kept (owner-only) for the next ones.
    pub fn open(dir: &Path, trust_domain: &str) -> Result<Self, CommandError> {
        let login_dir = dir.join("login");
        std::fs::create_dir_all(&login_dir).map_err(|e| dev_error("login directory", e))?;
        let key_file = login_dir.join("login.key");
        let key = if key_file.exists() {
            let pem = std::fs::read_to_string(&key_file).map_err(|e| dev_error("login key", e))?;
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| dev_error("login key", e))?
        } else {
            let key =
                SigningKey::generate(Algorithm::Es256).map_err(|e| dev_error("login key", e))?;
            let pem = key.to_pkcs8_pem().map_err(|e| dev_error("login key", e))?;
            wimse_agent::files::write_atomic(&key_file, pem.as_bytes(), 0o600)
                .map_err(|e| dev_error("login key", e))?;
            key
        };
        let mut jwk = key.public_jwk().clone();
        jwk.kid = Some(LOGIN_KID.into());
        let jwks = JwkSet { keys: vec![jwk] };
        let jwks_file = login_dir.join("jwks.json");
        let text = serde_json::to_vec_pretty(&jwks).map_err(|e| dev_error("login JWK Set", e))?;
        wimse_agent::files::write_atomic(&jwks_file, &text, 0o644)
            .map_err(|e| dev_error("login JWK Set", e))?;
        Ok(DevLogin {
            key,
            issuer: format!("https://login.{trust_domain}"),
            audience: format!("https://gateway.{trust_domain}"),
            jwks,
            jwks_file,
            access_token_file: login_dir.join("access-token"),
        })
    }

    /// The server's token service settings: `gateway` may start transactions for this
    /// login's users (`sub` prefixed with `user:`).
    pub fn token_service(&self, gateway: &str) -> wimse_server::config::TokenServiceFile {
        wimse_server::config::TokenServiceFile {
            requesters: vec![gateway.to_owned()],
            issuers: vec![wimse_server::config::IssuerFile {
                issuer: self.issuer.clone(),
                audience: self.audience.clone(),
                jwks_file: Some(self.jwks_file.clone()),
                jwks_uri: None,
                jwks_ca_file: None,
                oidc_discovery: false,
                subject_prefix: "user:".into(),
                max_scope: None,
            }],
            ..wimse_server::config::TokenServiceFile::default()
        }
    }

    /// An access token for `sub` with `scope`, as the login would issue it.
    pub fn access_token(&self, sub: &str, scope: &str) -> Result<String, CommandError> {
        let now = wimse_core::token::unix_now();
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": sub, "aud": self.audience, "iat": now,
            "exp": now + ACCESS_TOKEN_TTL, "scope": scope, "client_id": "wimse-dev",
        });
        wimse_core::jose::jws::sign(&self.key, Some("at+jwt"), Some(LOGIN_KID), &claims)
            .map_err(|e| dev_error("access token", e))
    }

    /// Mints the dev user's access token into its file (owner-only).
    pub fn write_access_token(&self) -> Result<String, CommandError> {
        let token = self.access_token(DEV_USER, DEV_SCOPE)?;
        wimse_agent::files::write_atomic(&self.access_token_file, token.as_bytes(), 0o600)
            .map_err(|e| dev_error("access token file", e))?;
        Ok(token)
    }
}

/// The running gateway.
pub(super) struct RunningGateway {
    pub id: WorkloadId,
    pub address: SocketAddr,
    pub audit_log: PathBuf,
    pub audit: Arc<wimse_audit::AuditLog>,
}

impl RunningGateway {
    /// Its part of `dev.json`.
    pub fn describe(&self, login: &DevLogin) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.as_str(),
            "address": format!("http://{}", self.address),
            "audit_log": self.audit_log,
            "issuer": login.issuer,
            "audience": login.audience,
            "jwks_path": login.jwks_file,
            "access_token_path": login.access_token_file,
        })
    }
}

/// Starts the gateway as `id`: `/api/orders` goes to `orders` in transactions of scope
/// `orders`, for access tokens of `login`.
pub(super) async fn start(
    id: &str,
    agent_socket: &Path,
    dir: &Path,
    server_address: SocketAddr,
    orders: &super::Service,
    login: &DevLogin,
) -> Result<RunningGateway, CommandError> {
    let (id, source) = super::connect_as(id, agent_socket).await?;
    let token_service = TokenServiceClient::new(&source, &server_address.to_string())
        .map_err(|e| dev_error("gateway", e))?;
    let scope = Scope::parse(DEV_SCOPE).map_err(|e| dev_error("gateway route", e))?;
    let route = Route::new(
        "/api/orders",
        &format!("http://{}", orders.address),
        scope,
        false,
    )
    .map_err(|e| dev_error("gateway route", e))?;
    let routes = Routes::new(vec![route]).map_err(|e| dev_error("gateway route", e))?;
    let issuer = TrustedIssuer::new(
        login.issuer.clone(),
        login.audience.clone(),
        String::new(),
        &login.jwks,
    )
    .map_err(|e| dev_error("gateway issuer", e))?;
    let audit_log = dir.join("audit").join("gateway.jsonl");
    let audit = crate::proxy::audit_log(&audit_log, &source)?;
    let gateway = Gateway::new(
        routes,
        Arc::new(IssuerKeys::fixed(vec![issuer])),
        token_service,
        source,
        ProofMethod::WitWpt,
    )
    .with_audit(Arc::clone(&audit));
    let (listener, address) = super::listen_on_loopback(GATEWAY_PORT).await?;
    tokio::spawn(async move {
        let service = gateway
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            tracing::error!(error = %e, "dev gateway stopped");
        }
    });
    Ok(RunningGateway {
        id,
        address,
        audit_log,
        audit,
    })
}
