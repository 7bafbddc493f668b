//! The client side of the trust domain's Transaction Token Service (`POST /oauth2/token`
//! on the server): a workload asks for a Txn-Token for an outside access token (starting a
//! transaction, as a gateway does) or for a narrower replacement of one it holds.
//!
//! The request travels over mutual TLS with this workload's X509-SVID (the service's
//! client authentication), and the server must present the X509-SVID of
//! `spiffe://<our trust domain>/wimse/server`: the token goes to no one else.
//!
//! A workload that finishes a transaction later (a queue consumer, a batch worker) has
//! its Txn-Token [delegated](TokenServiceClient::delegate) to it while that is valid, and
//! [resumes](TokenServiceClient::resume) the transaction with the delegation whenever it
//! needs a Txn-Token again, hours later if its `[[token_service.delegation]]` entry allows.
//!
//! [`ChainClient`] carries a transaction into another trust domain (identity chaining):
//! a grant from this domain's token service, redeemed at the other's for an access token.

use crate::authn::PeerAllowList;
use crate::source::CredentialSource;
use crate::tls::{MtlsConnector, ServerNames, TlsError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use serde_json::{Map, Value};
use wimse_core::id::SERVER_PATH;
use wimse_core::token::chain::service_id;
use wimse_core::token::exchange::{
    ExchangeRequest, ExchangeResponse, JwtBearerRequest, MAX_REQUEST_BYTES, Scope, TOKEN_PATH,
    token_type,
};
use wimse_core::token::self_signed::{SelfSignedClaims, issue_self_signed};
use wimse_core::token::unsigned::{UnsignedSubject, encode_unsigned};
use wimse_core::{TrustDomain, WorkloadId};

/// How long a self-signed subject token lives: it is sent at once.
const SELF_SIGNED_TTL: i64 = 60;

/// Why no Txn-Token was obtained.
#[derive(Debug, thiserror::Error)]
pub enum TokenServiceError {
    /// This workload has no identity yet.
    #[error("this workload has no X509-SVID yet")]
    NoIdentity,
    /// The server address or TLS setup is unusable.
    #[error("token service client: {0}")]
    Setup(String),
    /// The request could not be sent or its answer read.
    #[error("token service unreachable: {0}")]
    Transport(String),
    /// The service refused, with its RFC 6749 error.
    #[error("token service refused ({status}): {error}: {description}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The `error` code.
        error: String,
        /// The `error_description`.
        description: String,
    },
    /// The answer is not a Txn-Token response.
    #[error("token service answered with something else: {0}")]
    Malformed(String),
}

impl From<TlsError> for TokenServiceError {
    fn from(e: TlsError) -> Self {
        TokenServiceError::Setup(e.to_string())
    }
}

/// A client of the trust domain's token service (cheap to clone).
#[derive(Clone, Debug)]
pub struct TokenServiceClient {
    client: Client<MtlsConnector, Full<Bytes>>,
    /// The same without keep-alive: a self-signed subject token must be signed with the
    /// key of the certificate its connection presents, so it never rides a connection
    /// opened with an earlier certificate.
    fresh: Client<MtlsConnector, Full<Bytes>>,
    source: CredentialSource,
    endpoint: http::Uri,
    audience: String,
}

impl TokenServiceClient {
    /// A client of the server at `server_address` (`host:port`) of this workload's trust
    /// domain, authenticating with `source`'s X509-SVID.
    pub fn new(source: &CredentialSource, server_address: &str) -> Result<Self, TokenServiceError> {
        let current = source.current();
        let own = current.id().ok_or(TokenServiceError::NoIdentity)?;
        let trust_domain = own.trust_domain().clone();
        let allow = PeerAllowList {
            ids: [server_id(&trust_domain)?].into(),
            trust_domains: std::collections::BTreeSet::new(),
        };
        let endpoint = format!("https://{server_address}{TOKEN_PATH}")
            .parse()
            .map_err(|e| TokenServiceError::Setup(format!("server address: {e}")))?;
        // The server is named exactly (SPECS §6, without DNS); its SVID names no host.
        let connector = MtlsConnector::new(source, allow, ServerNames::Unchecked)?;
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector.clone());
        let fresh = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(TokenServiceClient {
            client,
            fresh,
            source: source.clone(),
            endpoint,
            audience: trust_domain.to_string(),
        })
    }

    /// Starts a transaction for the subject of an outside OAuth access token, with
    /// `scope` (within the token's) and the request's environment and details.
    pub async fn start(
        &self,
        access_token: &str,
        scope: &Scope,
        request_context: Option<Map<String, Value>>,
        request_details: Option<Map<String, Value>>,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        self.exchange(self.request(
            access_token,
            token_type::ACCESS_TOKEN,
            scope,
            request_context,
            request_details,
        ))
        .await
    }

    /// Starts a transaction for `subject` (this workload's own ID, or one its
    /// `[[token_service.self_signed]]` entry names) stated in a self-signed subject token
    /// signed with this workload's X509-SVID key; `scope` may not exceed the entry's.
    pub async fn start_self_signed(
        &self,
        subject: &str,
        scope: &Scope,
        request_context: Option<Map<String, Value>>,
        request_details: Option<Map<String, Value>>,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        let mut retried = false;
        loop {
            let current = self.source.current();
            let svid = current.x509.as_ref().ok_or(TokenServiceError::NoIdentity)?;
            let now = wimse_core::token::unix_now();
            let claims = SelfSignedClaims {
                iss: svid.id.to_string(),
                sub: subject.to_owned(),
                aud: service_id(svid.id.trust_domain()),
                iat: now,
                exp: now + SELF_SIGNED_TTL,
                scope: scope.to_string(),
            };
            let token = issue_self_signed(&svid.key, &claims)
                .map_err(|e| TokenServiceError::Setup(e.to_string()))?;
            let request = self.request(
                &token,
                token_type::SELF_SIGNED,
                scope,
                request_context.clone(),
                request_details.clone(),
            );
            let answer = post_form(&self.fresh, &self.endpoint, request.to_form()).await;
            // The certificate rotated between signing and the handshake: sign again.
            if answer.is_err() && !retried && self.source.current().generation != current.generation
            {
                retried = true;
                continue;
            }
            return expect_type(answer?, token_type::TXN_TOKEN, "N_A");
        }
    }

    /// Starts a transaction for `subject` (this workload's own ID, or one its
    /// `[[token_service.self_signed]]` entry names) stated in an unsigned JSON subject
    /// token, `{"sub": subject}`: only if that entry says `unsigned_json = true`, since
    /// the request's mutual TLS is then the only proof. `scope` may not exceed the entry's.
    pub async fn start_unsigned(
        &self,
        subject: &str,
        scope: &Scope,
        request_context: Option<Map<String, Value>>,
        request_details: Option<Map<String, Value>>,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        let token = encode_unsigned(&UnsignedSubject {
            sub: subject.to_owned(),
            scope: None,
        })
        .map_err(|e| TokenServiceError::Setup(e.to_string()))?;
        self.exchange(self.request(
            &token,
            token_type::UNSIGNED_JSON,
            scope,
            request_context,
            request_details,
        ))
        .await
    }

    /// Replaces `txn_token` with one of `scope` (no wider than its own), adding
    /// `request_context` to its context.
    pub async fn replace(
        &self,
        txn_token: &str,
        scope: &Scope,
        request_context: Option<Map<String, Value>>,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        self.exchange(self.request(
            txn_token,
            token_type::TXN_TOKEN,
            scope,
            request_context,
            None,
        ))
        .await
    }

    /// Has the transaction of `txn_token` delegated to this workload, to finish later:
    /// the answer's `access_token` is the delegation, of `scope` or, with `None`, the
    /// Txn-Token's. Only workloads the server names in `[[token_service.delegation]]` may
    /// ask, while the Txn-Token is valid.
    pub async fn delegate(
        &self,
        txn_token: &str,
        scope: Option<&Scope>,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        let request = txn_token_for(
            txn_token,
            self.audience.clone(),
            scope,
            token_type::DELEGATION,
        );
        let answer = post_form(&self.client, &self.endpoint, request.to_form()).await?;
        expect_type(answer, token_type::DELEGATION, "N_A")
    }

    /// A fresh Txn-Token of the transaction `delegation` (from
    /// [`TokenServiceClient::delegate`]) delegated to this workload, of `scope` (no wider
    /// than the delegation's), naming this workload as the actor, with
    /// `request_context` added to its context.
    pub async fn resume(
        &self,
        delegation: &str,
        scope: &Scope,
        request_context: Option<Map<String, Value>>,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        self.exchange(self.request(
            delegation,
            token_type::DELEGATION,
            scope,
            request_context,
            None,
        ))
        .await
    }

    fn request(
        &self,
        subject_token: &str,
        subject_token_type: &str,
        scope: &Scope,
        request_context: Option<Map<String, Value>>,
        request_details: Option<Map<String, Value>>,
    ) -> ExchangeRequest {
        ExchangeRequest {
            audience: vec![self.audience.clone()],
            resource: Vec::new(),
            scope: Some(scope.clone()),
            requested_token_type: Some(token_type::TXN_TOKEN.into()),
            subject_token: subject_token.to_owned(),
            subject_token_type: subject_token_type.to_owned(),
            actor_token: None,
            actor_token_type: None,
            request_context,
            request_details,
        }
    }

    /// Exchanges `txn_token` for a JWT authorization grant for `trust_domain`'s token
    /// service (identity chaining), of `scope` or, with `None`, the Txn-Token's scope.
    /// Only workloads the server names in `[[token_service.chain_to]]` may ask.
    pub async fn grant(
        &self,
        txn_token: &str,
        trust_domain: &TrustDomain,
        scope: Option<&Scope>,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        let request = txn_token_for(txn_token, trust_domain.to_string(), scope, token_type::JWT);
        let answer = post_form(&self.client, &self.endpoint, request.to_form()).await?;
        expect_type(answer, token_type::JWT, "N_A")
    }

    /// Sends any token exchange request and checks that a Txn-Token came back.
    pub async fn exchange(
        &self,
        request: ExchangeRequest,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        let answer = post_form(&self.client, &self.endpoint, request.to_form()).await?;
        expect_type(answer, token_type::TXN_TOKEN, "N_A")
    }
}

/// A request to exchange `txn_token` for a token of type `requested` for `audience`, of
/// `scope` or, with `None`, the Txn-Token's.
fn txn_token_for(
    txn_token: &str,
    audience: String,
    scope: Option<&Scope>,
    requested: &str,
) -> ExchangeRequest {
    ExchangeRequest {
        audience: vec![audience],
        resource: Vec::new(),
        scope: scope.cloned(),
        requested_token_type: Some(requested.into()),
        subject_token: txn_token.to_owned(),
        subject_token_type: token_type::TXN_TOKEN.into(),
        actor_token: None,
        actor_token_type: None,
        request_context: None,
        request_details: None,
    }
}

/// Refuses an answer that did not issue `issued` with token type `token_type`.
fn expect_type(
    answer: ExchangeResponse,
    issued: &str,
    token_type: &str,
) -> Result<ExchangeResponse, TokenServiceError> {
    if answer.issued_token_type != issued || !answer.token_type.eq_ignore_ascii_case(token_type) {
        return Err(TokenServiceError::Malformed(format!(
            "issued `{}` with token type `{}`",
            answer.issued_token_type, answer.token_type
        )));
    }
    Ok(answer)
}

/// Posts a form to a token endpoint and reads its RFC 6749 answer.
async fn post_form(
    client: &Client<MtlsConnector, Full<Bytes>>,
    endpoint: &http::Uri,
    form: String,
) -> Result<ExchangeResponse, TokenServiceError> {
    let http_request = http::Request::post(endpoint.clone())
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| TokenServiceError::Setup(e.to_string()))?;
    let response = client
        .request(http_request)
        .await
        .map_err(|e| TokenServiceError::Transport(e.to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| TokenServiceError::Transport(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        let error: Map<String, Value> = serde_json::from_slice(&body).unwrap_or_default();
        let text = |name: &str| {
            error
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        return Err(TokenServiceError::Refused {
            status: status.as_u16(),
            error: text("error"),
            description: text("error_description"),
        });
    }
    serde_json::from_slice(&body).map_err(|e| TokenServiceError::Malformed(e.to_string()))
}

/// The ID of `trust_domain`'s server, which alone may answer for its token service.
fn server_id(trust_domain: &TrustDomain) -> Result<WorkloadId, TokenServiceError> {
    WorkloadId::from_parts("spiffe", trust_domain, SERVER_PATH)
        .map_err(|e| TokenServiceError::Setup(e.to_string()))
}

/// Identity chaining from this workload's trust domain into another
/// (draft-ietf-oauth-identity-chaining): a Txn-Token of this domain becomes an access
/// token of the other, for the same subject.
///
/// [`ChainClient::access_token`] asks this domain's token service for a grant, then
/// presents it to the other domain's token service with a JWT-SVID of this workload as
/// the client assertion. That server is reached without a client certificate (it does
/// not take this domain's) and must present the X509-SVID of
/// `spiffe://<other trust domain>/wimse/server`, checked against the other domain's
/// bundle, which this workload holds when its entry federates with that domain.
#[derive(Clone, Debug)]
pub struct ChainClient {
    home: TokenServiceClient,
    source: CredentialSource,
    trust_domain: TrustDomain,
    client: Client<MtlsConnector, Full<Bytes>>,
    endpoint: http::Uri,
}

impl ChainClient {
    /// A client chaining from the trust domain of `source` (its server at
    /// `home_server`) into `trust_domain` (its server at `other_server`), both
    /// `host:port`.
    pub fn new(
        source: &CredentialSource,
        home_server: &str,
        trust_domain: TrustDomain,
        other_server: &str,
    ) -> Result<Self, TokenServiceError> {
        let allow = PeerAllowList {
            ids: [server_id(&trust_domain)?].into(),
            trust_domains: std::collections::BTreeSet::new(),
        };
        let endpoint = format!("https://{other_server}{TOKEN_PATH}")
            .parse()
            .map_err(|e| TokenServiceError::Setup(format!("server address: {e}")))?;
        let config = crate::tls::server_auth_config(source, allow)?;
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(MtlsConnector::with_config(std::sync::Arc::new(config)));
        Ok(ChainClient {
            home: TokenServiceClient::new(source, home_server)?,
            source: source.clone(),
            trust_domain,
            client,
            endpoint,
        })
    }

    /// The trust domain this client chains into.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// An access token of the other trust domain for the subject of `txn_token`, of
    /// `scope` or, with `None`, the scope the grant carries.
    pub async fn access_token(
        &self,
        txn_token: &str,
        scope: Option<&Scope>,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        let grant = self
            .home
            .grant(txn_token, &self.trust_domain, scope)
            .await?;
        self.redeem(&grant.access_token, scope).await
    }

    /// Presents `grant` (from [`TokenServiceClient::grant`]) to the other trust domain's
    /// token service for an access token of `scope` or, with `None`, of the grant's scope.
    pub async fn redeem(
        &self,
        grant: &str,
        scope: Option<&Scope>,
    ) -> Result<ExchangeResponse, TokenServiceError> {
        let me = self
            .source
            .current()
            .id()
            .cloned()
            .ok_or(TokenServiceError::NoIdentity)?;
        let assertion = self
            .source
            .jwt_svid(&service_id(&self.trust_domain))
            .await
            .map_err(|e| TokenServiceError::Setup(e.to_string()))?;
        let request = JwtBearerRequest {
            assertion: grant.to_owned(),
            scope: scope.cloned(),
            client_assertion: Some(assertion),
            client_id: Some(me.to_string()),
        };
        let answer = post_form(&self.client, &self.endpoint, request.to_form()).await?;
        expect_type(answer, token_type::ACCESS_TOKEN, "Bearer")
    }
}
