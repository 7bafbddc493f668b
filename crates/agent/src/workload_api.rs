//! The SPIFFE Workload API, served on the agent's unix socket.
//!
//! Each call starts by checking the security header (an interceptor, before anything else
//! runs) and attesting the caller from its socket's peer credentials. The answers follow
//! the SPIFFE Workload API and Workload Endpoint specs and SPIRE's behaviour where the
//! specs leave room (SPECS.md §A): no matching entry → `PermissionDenied` "no identity
//! issued"; attestation failure → `Unavailable`; a missing header → `InvalidArgument`; the
//! WIT profile switched off → `Unimplemented`. Streams send the complete state first and
//! again only when it changed, and end with `PermissionDenied` when the caller's last
//! identity is removed.

use crate::agent::Agent;
use crate::attestor::{Attestor, PeerCredentials, Selectors};
use crate::cache::{Entry, Snapshot};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use wimse_core::bundle::{BundleSet, KeyUse, TrustBundle};
use wimse_core::token::Validation;
use wimse_core::token::jwt_svid::verify_jwt_svid;
use wimse_core::{IdError, WorkloadId};
use wimse_proto::server::SpiffeWorkloadApi;
use wimse_proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse,
    Witsvid, WitsvidRequest, WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid,
    X509svidRequest, X509svidResponse,
};

/// A stream of answers.
type AnswerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Rejects requests without exactly one `workload.spiffe.io: true` (Workload Endpoint §3).
pub fn check_security_header(request: Request<()>) -> Result<Request<()>, Status> {
    let mut values = request
        .metadata()
        .get_all(wimse_proto::SECURITY_HEADER)
        .iter();
    match (values.next(), values.next()) {
        (Some(value), None)
            if value.as_bytes() == wimse_proto::SECURITY_HEADER_VALUE.as_bytes() =>
        {
            Ok(request)
        }
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// The Workload API service.
pub struct WorkloadApi {
    agent: Arc<Agent>,
    attestor: Arc<Attestor>,
}

impl WorkloadApi {
    /// A service answering from `agent`'s state.
    pub fn new(agent: Arc<Agent>, attestor: Arc<Attestor>) -> Self {
        Self { agent, attestor }
    }

    /// Attests the caller of `request`. Attestation reads a few `/proc` files inline; the
    /// first sight of an executable, which hashes the whole file, runs on a blocking
    /// thread so that it never stalls the answers to other workloads.
    async fn attest<T>(&self, request: &Request<T>) -> Result<Selectors, Status> {
        let unavailable = |why: &dyn std::fmt::Display| {
            tracing::debug!(reason = %why, "workload attestation failed");
            Status::unavailable("workload attestation failed")
        };
        let info = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| unavailable(&"no peer credentials"))?;
        let pid = info.pid().ok_or_else(|| unavailable(&"no peer pid"))?;
        let peer = PeerCredentials {
            pid,
            uid: info.uid(),
            gid: info.gid(),
        };
        let attested = if self.attestor.would_hash(pid) {
            let attestor = Arc::clone(&self.attestor);
            tokio::task::spawn_blocking(move || attestor.attest(peer))
                .await
                .map_err(|e| unavailable(&e))?
        } else {
            self.attestor.attest(peer)
        };
        attested.map_err(|e| unavailable(&e))
    }

    fn snapshot(&self) -> Snapshot {
        self.agent.snapshot.borrow().clone()
    }

    fn record<T>(&self, method: &'static str, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.agent.metrics.call(method, code);
    }

    /// Streams `build(snapshot)` now and on every change, sending only changed answers.
    fn watch<T, F>(&self, method: &'static str, build: F) -> AnswerStream<T>
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(&Snapshot) -> Answer<T> + Send + 'static,
    {
        let mut changes = self.agent.snapshot.subscribe();
        let (tx, rx) = mpsc::channel(2);
        let agent = Arc::clone(&self.agent);
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            let started = Instant::now();
            loop {
                let answer = build(&changes.borrow_and_update());
                match answer {
                    Answer::Ready(message) => {
                        if last.as_ref() != Some(&message) {
                            if last.is_none() {
                                agent
                                    .metrics
                                    .call_seconds
                                    .get_or_create(&crate::metrics::KindLabel { kind: method })
                                    .observe(started.elapsed().as_secs_f64());
                            }
                            last = Some(message.clone());
                            if tx.send(Ok(message)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Answer::Refused(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Answer::Pending => {}
                }
                tokio::select! {
                    // New state to answer from.
                    update = changes.changed() => if update.is_err() { return },
                    // The caller went away: stop watching for it.
                    () = tx.closed() => return,
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// What a stream sends for one snapshot.
enum Answer<T> {
    /// This message.
    Ready(T),
    /// Nothing yet (entries not synced, or credentials not minted yet).
    Pending,
    /// This error, ending the stream.
    Refused(Status),
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// The caller's identities, or why there are none (yet).
fn identities<'a>(
    snapshot: &'a Snapshot,
    selectors: &Selectors,
) -> Result<Vec<&'a Entry>, Answer<()>> {
    let found = snapshot.identities(selectors);
    if found.is_empty() {
        return Err(if snapshot.synced {
            Answer::Refused(no_identity())
        } else {
            Answer::Pending
        });
    }
    Ok(found)
}

fn concat_der<'a>(certs: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    certs.flat_map(<[u8]>::to_vec).collect()
}

/// A bundle's X.509 authorities as the Workload API sends them: DER, concatenated.
fn x509_der(bundle: &TrustBundle) -> Vec<u8> {
    concat_der(bundle.x509_authorities.iter().map(Vec::as_slice))
}

/// The bundle map a caller with `selectors` receives: its own trust domain's bundle and the
/// foreign ones its entries federate with, keyed by trust domain ID, each encoded by
/// `encode`; or why there is none (yet). Bundles are for callers with an identity (SPIRE's
/// default).
fn bundle_map<T>(
    snapshot: &Snapshot,
    selectors: &Selectors,
    encode: impl Fn(&TrustBundle) -> T,
) -> Result<std::collections::HashMap<String, T>, Answer<()>> {
    let entries = identities(snapshot, selectors)?;
    Ok(std::iter::once(&*snapshot.bundle)
        .chain(snapshot.federated_bundles(&entries))
        .map(|b| (b.trust_domain().spiffe_id_string(), encode(b)))
        .collect())
}

/// What a bundle stream answers when [`bundle_map`] has no map.
fn no_bundles<T>(why: Answer<()>) -> Answer<T> {
    match why {
        Answer::Refused(status) => Answer::Refused(status),
        _ => Answer::Pending,
    }
}

fn x509_answer(snapshot: &Snapshot, selectors: &Selectors) -> Answer<X509svidResponse> {
    let entries = match identities(snapshot, selectors) {
        Ok(entries) => entries,
        Err(Answer::Refused(status)) => return Answer::Refused(status),
        Err(_) => return Answer::Pending,
    };
    let now = wimse_core::token::unix_now();
    let bundle = x509_der(&snapshot.bundle);
    let mut seen_hints = std::collections::HashSet::new();
    let svids: Vec<X509svid> = entries
        .iter()
        // Workload API §5.2: hints are unique in a response.
        .filter(|e| e.hint.is_empty() || seen_hints.insert(e.hint.as_str()))
        .filter_map(|entry| {
            let credential = snapshot.x509.get(&entry.id)?;
            (credential.expires_at() > now).then(|| X509svid {
                spiffe_id: entry.spiffe_id.to_string(),
                x509_svid: credential.chain_der.clone(),
                x509_svid_key: credential.key_pkcs8.to_vec(),
                bundle: bundle.clone(),
                hint: entry.hint.clone(),
            })
        })
        .collect();
    if svids.is_empty() {
        return Answer::Pending;
    }
    // Workload API §4.6: the foreign bundles to validate peers of other trust domains with.
    let federated_bundles = snapshot
        .federated_bundles(&entries)
        .into_iter()
        .map(|b| (b.trust_domain().spiffe_id_string(), x509_der(b)))
        .collect();
    Answer::Ready(X509svidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles,
    })
}

fn wit_answer(
    snapshot: &Snapshot,
    selectors: &Selectors,
    wanted: Option<&WorkloadId>,
) -> Answer<WitsvidResponse> {
    let entries = match identities(snapshot, selectors) {
        Ok(entries) => entries,
        Err(Answer::Refused(status)) => return Answer::Refused(status),
        Err(_) => return Answer::Pending,
    };
    let entries: Vec<&Entry> = entries
        .into_iter()
        .filter(|e| wanted.is_none_or(|id| &e.spiffe_id == id))
        .collect();
    if entries.is_empty() {
        return Answer::Refused(no_identity());
    }
    let now = wimse_core::token::unix_now();
    let mut seen_hints = std::collections::HashSet::new();
    let svids: Vec<Witsvid> = entries
        .iter()
        .filter(|e| e.hint.is_empty() || seen_hints.insert(e.hint.as_str()))
        .filter_map(|entry| {
            let credential = snapshot.wit.get(&entry.id)?;
            (credential.expires_at > now).then(|| Witsvid {
                spiffe_id: entry.spiffe_id.to_string(),
                wit_svid: credential.token.clone(),
                wit_svid_key: credential.key_jwk.to_string(),
                hint: entry.hint.clone(),
            })
        })
        .collect();
    if svids.is_empty() {
        return Answer::Pending;
    }
    Answer::Ready(WitsvidResponse { svids })
}

fn parse_wanted(id: &str) -> Result<Option<WorkloadId>, Status> {
    if id.is_empty() {
        return Ok(None);
    }
    WorkloadId::parse(id)
        .map(Some)
        .map_err(|e: IdError| Status::invalid_argument(format!("invalid spiffe_id `{id}`: {e}")))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = AnswerStream<X509svidResponse>;
    type FetchX509BundlesStream = AnswerStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = AnswerStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = AnswerStream<WitsvidResponse>;
    type FetchWITBundlesStream = AnswerStream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let result = self.attest(&request).await.map(|selectors| {
            Response::new(self.watch("FetchX509SVID", move |s| x509_answer(s, &selectors)))
        });
        self.record("FetchX509SVID", &result);
        result
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let result = self.attest(&request).await.map(|selectors| {
            Response::new(self.watch("FetchX509Bundles", move |s| {
                match bundle_map(s, &selectors, x509_der) {
                    Ok(bundles) => Answer::Ready(X509BundlesResponse {
                        crl: Vec::new(),
                        bundles,
                    }),
                    Err(why) => no_bundles(why),
                }
            }))
        });
        self.record("FetchX509Bundles", &result);
        result
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let started = Instant::now();
        let result = self.fetch_jwt_svids(request).await;
        self.agent
            .metrics
            .call_seconds
            .get_or_create(&crate::metrics::KindLabel {
                kind: "FetchJWTSVID",
            })
            .observe(started.elapsed().as_secs_f64());
        self.record("FetchJWTSVID", &result);
        result
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let result = self.attest(&request).await.map(|selectors| {
            Response::new(self.watch("FetchJWTBundles", move |s| {
                // Workload API §6.2.2: only jwt-svid keys, as a plain JWK Set.
                match bundle_map(s, &selectors, |b| b.jwks_json(KeyUse::JwtSvid).into_bytes()) {
                    Ok(bundles) => Answer::Ready(JwtBundlesResponse { bundles }),
                    Err(why) => no_bundles(why),
                }
            }))
        });
        self.record("FetchJWTBundles", &result);
        result
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let result = self.validate(request).await;
        self.record("ValidateJWTSVID", &result);
        result
    }

    async fn fetch_witsvid(
        &self,
        request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        let result = async {
            self.wit_profile()?;
            let selectors = self.attest(&request).await?;
            let wanted = parse_wanted(&request.get_ref().spiffe_id)?;
            Ok(Response::new(self.watch("FetchWITSVID", move |s| {
                wit_answer(s, &selectors, wanted.as_ref())
            })))
        }
        .await;
        self.record("FetchWITSVID", &result);
        result
    }

    async fn fetch_wit_bundles(
        &self,
        request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        let result = async {
            self.wit_profile()?;
            let selectors = self.attest(&request).await?;
            Ok(Response::new(self.watch("FetchWITBundles", move |s| {
                // WIT-SVID.md: every key with `use` `wit-svid` and its `kid`.
                match bundle_map(s, &selectors, |b| b.jwks_json_with_use(KeyUse::WitSvid)) {
                    Ok(bundles) => Answer::Ready(WitBundlesResponse { bundles }),
                    Err(why) => no_bundles(why),
                }
            })))
        }
        .await;
        self.record("FetchWITBundles", &result);
        result
    }
}

impl WorkloadApi {
    fn wit_profile(&self) -> Result<(), Status> {
        if self.agent.config.wit_profile {
            Ok(())
        } else {
            Err(Status::unimplemented(
                "fetching WIT-SVIDs is not enabled on this agent",
            ))
        }
    }

    async fn fetch_jwt_svids(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let selectors = self.attest(&request).await?;
        let request = request.into_inner();
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let wanted = parse_wanted(&request.spiffe_id)?;
        let snapshot = self.snapshot();
        let entries: Vec<Entry> = snapshot
            .identities(&selectors)
            .into_iter()
            .filter(|e| wanted.as_ref().is_none_or(|id| &e.spiffe_id == id))
            .cloned()
            .collect();
        if entries.is_empty() {
            return Err(if snapshot.synced {
                no_identity()
            } else {
                Status::unavailable("the agent has not synced its entries yet")
            });
        }
        let mut svids = Vec::with_capacity(entries.len());
        for entry in &entries {
            let token = self
                .agent
                .jwt_svid(entry, &request.audience)
                .await
                .map_err(|e| {
                    tracing::warn!(entry = %entry.id, error = %e, "JWT-SVID mint failed");
                    Status::unavailable("could not mint a JWT-SVID")
                })?;
            svids.push(Jwtsvid {
                spiffe_id: entry.spiffe_id.to_string(),
                svid: token,
                hint: entry.hint.clone(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn validate(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let selectors = self.attest(&request).await?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snapshot = self.snapshot();
        // The caller's own trust domain, and the foreign ones its entries federate with.
        let mut bundles = BundleSet::new();
        bundles.insert((*snapshot.bundle).clone());
        let entries = snapshot.identities(&selectors);
        for foreign in snapshot.federated_bundles(&entries) {
            bundles.insert(foreign.clone());
        }
        let verified = verify_jwt_svid(
            &request.svid,
            &bundles,
            &request.audience,
            &Validation::at(wimse_core::token::unix_now()),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut claims = verified.all_claims;
        // SPIRE returns `aud` as a list, even for one audience.
        if let Some(aud) = claims.get_mut("aud")
            && let serde_json::Value::String(one) = aud
        {
            *aud = serde_json::Value::Array(vec![serde_json::Value::String(one.clone())]);
        }
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: verified.claims.sub.to_string(),
            claims: Some(to_struct(claims)),
        }))
    }
}

/// JSON claims as a `google.protobuf.Struct`.
fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(values: &[&str]) -> Request<()> {
        let mut request = Request::new(());
        for v in values {
            request
                .metadata_mut()
                .append(wimse_proto::SECURITY_HEADER, v.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_exactly_one_true_header_passes() {
        assert!(check_security_header(with_header(&["true"])).is_ok());
        for bad in [&[][..], &["false"], &["TRUE"], &["true", "true"]] {
            let status = check_security_header(with_header(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn claims_become_a_protobuf_struct() {
        let claims = serde_json::json!({"sub": "spiffe://td/a", "aud": ["x"], "exp": 5, "n": null});
        let serde_json::Value::Object(map) = claims else {
            unreachable!()
        };
        let s = to_struct(map);
        assert_eq!(s.fields.len(), 4);
        assert!(matches!(
            s.fields["exp"].kind,
            Some(prost_types::value::Kind::NumberValue(n)) if (n - 5.0).abs() < f64::EPSILON
        ));
    }

    #[test]
    fn a_malformed_spiffe_id_filter_is_an_invalid_argument() {
        assert_eq!(
            parse_wanted("not an id").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(parse_wanted("").unwrap().is_none());
    }
}
