//! `wimse server federation|bundle` and `entry --federates-with` as an operator uses them:
//! the real `wimse` binary against a server of `test.example`, federating with a second real
//! server, the authority of `other.test`, whose bundle endpoint is on loopback.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use common::{Server, TRUST_DOMAIN, WIMSE, free_port, wait_for};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use wimse_core::TrustDomain;
use wimse_core::bundle::TrustBundle;

/// The foreign trust domain.
const OTHER: &str = "other.test";

/// The SPIFFE ID of `other.test`'s server, which serves its bundle endpoint.
const OTHER_SERVER_ID: &str = "spiffe://other.test/wimse/server";

/// A bundle endpoint URL nothing listens on.
const UNREACHABLE_URL: &str = "https://127.0.0.1:1/.well-known/spiffe-bundle";

/// A parent ID the server accepts without an attested agent.
const PARENT: &str = "spiffe://test.example/wimse/agent/join_token/federation-test";

/// Starts the server of `other.test` in `dir`, on a free port.
fn start_other(dir: &Path) -> Server {
    Server::start_for(OTHER, dir, free_port(), &[])
}

/// `other`'s bundle as `bundle show --format spiffe` prints it, written to `path`; the bundle.
fn write_other_bundle_json(other: &Server, path: &Path) -> TrustBundle {
    let json = other.admin_ok(&["server", "bundle", "show", "--format", "spiffe"]);
    std::fs::write(path, &json).unwrap();
    TrustBundle::from_spiffe_json(TrustDomain::new(OTHER).unwrap(), json.as_bytes()).unwrap()
}

/// `other`'s X.509 roots as `bundle show --format pem` prints them, written to `path`.
fn write_other_bundle_pem(other: &Server, path: &Path) -> String {
    let pem = other.admin_ok(&["server", "bundle", "show", "--format", "pem"]);
    std::fs::write(path, &pem).unwrap();
    pem
}

/// `federation create` arguments for `other.test` over `https_spiffe` at `url`.
fn create_args<'a>(url: &'a str, trust_bundle: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "server",
        "federation",
        "create",
        "--trust-domain",
        OTHER,
        "--bundle-endpoint-url",
        url,
        "--profile",
        "https_spiffe",
        "--endpoint-spiffe-id",
        OTHER_SERVER_ID,
        "--trust-bundle",
        trust_bundle,
    ];
    args.extend(extra);
    args
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn an_unreachable_endpoint_keeps_the_given_bundle_and_reports_why_it_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let other = start_other(&dir.path().join("other"));
    let bundle_file = dir.path().join("other.json");
    let other_bundle = write_other_bundle_json(&other, &bundle_file);
    other.stop();
    let server = Server::start(&dir.path().join("server"), &[]);

    let created = server.admin_ok(&create_args(UNREACHABLE_URL, path_str(&bundle_file), &[]));
    assert!(
        created.contains("Trust domain      : other.test"),
        "{created}"
    );
    assert!(created.contains(&format!("Bundle endpoint   : {UNREACHABLE_URL}")));
    assert!(created.contains("Profile           : https_spiffe"));
    assert!(created.contains(&format!("Endpoint SPIFFE ID: {OTHER_SERVER_ID}")));
    let sequence = format!("Bundle sequence   : {}", other_bundle.sequence);
    assert!(created.contains(&sequence), "{created}");

    // The first fetch starts at creation and fails at once: nothing listens on port 1.
    let mut shown = String::new();
    wait_for(
        Duration::from_secs(10),
        || {
            shown = server.admin_ok(&["server", "federation", "show", "--trust-domain", OTHER]);
            shown.contains("Last error        : ")
        },
        || format!("no fetch failure recorded: {}", server.log()),
    );
    assert!(shown.contains(&sequence), "the given bundle stays: {shown}");
    assert!(!shown.contains("Last refresh      : never"), "{shown}");
    let last_error = shown
        .lines()
        .find_map(|l| l.strip_prefix("Last error        : "))
        .unwrap();
    assert!(
        last_error.contains(&format!("cannot reach `{UNREACHABLE_URL}`")),
        "{last_error}"
    );

    let refused = server.admin_err(&["server", "federation", "refresh", "--trust-domain", OTHER]);
    assert!(
        refused.starts_with("error: ")
            && refused.contains(&format!("cannot reach `{UNREACHABLE_URL}`")),
        "{refused}"
    );
    server.stop();
}

#[test]
fn a_reachable_https_spiffe_endpoint_is_fetched_and_its_bundle_listed() {
    let dir = tempfile::tempdir().unwrap();
    let other = start_other(&dir.path().join("other"));
    let pem_file = dir.path().join("other.pem");
    write_other_bundle_pem(&other, &pem_file);
    let other_bundle = other.bundle();
    let server = Server::start(&dir.path().join("server"), &[]);
    let url = format!("https://{}/.well-known/spiffe-bundle", other.addr);

    // The endpoint is first authenticated with the X.509 roots given as PEM.
    let created = server.admin_ok(&create_args(
        &url,
        path_str(&pem_file),
        &["--trust-bundle-format", "pem"],
    ));
    assert!(
        created.contains("Trust domain      : other.test"),
        "{created}"
    );

    let refreshed = server.admin_ok(&["server", "federation", "refresh", "--trust-domain", OTHER]);
    assert_eq!(
        refreshed.trim_end(),
        format!(
            "Bundle of other.test refreshed: sequence {}, 1 x509 / 1 jwt / 1 wit authorities",
            other_bundle.sequence
        )
    );

    let shown = server.admin_ok(&["server", "federation", "show", "--trust-domain", OTHER]);
    assert!(!shown.contains("Last error"), "{shown}");
    assert!(!shown.contains("Last refresh      : never"), "{shown}");
    assert!(shown.contains(&format!("Bundle sequence   : {}", other_bundle.sequence)));

    let listed = server.admin_ok(&["server", "federation", "list"]);
    assert!(
        listed.starts_with("Found 1 federation relationship(s)\n"),
        "{listed}"
    );
    assert!(listed.contains(&format!("Bundle endpoint   : {url}")));

    let bundles = server.admin_ok(&["server", "bundle", "list"]);
    assert!(bundles.starts_with("Found 1 bundle(s)\n"), "{bundles}");
    assert!(
        bundles.contains("Trust domain      : other.test"),
        "{bundles}"
    );
    assert!(bundles.contains(&format!("Sequence          : {}", other_bundle.sequence)));

    let as_json = server.admin_ok(&["server", "bundle", "list", "--format", "spiffe"]);
    let body = as_json.strip_prefix("* other.test\n").unwrap();
    let fetched =
        TrustBundle::from_spiffe_json(TrustDomain::new(OTHER).unwrap(), body.trim().as_bytes())
            .unwrap();
    assert_eq!(fetched, other_bundle);

    let deleted = server.admin_ok(&["server", "federation", "delete", "--trust-domain", OTHER]);
    assert_eq!(
        deleted.trim_end(),
        "Deleted federation relationship with other.test"
    );
    let listed = server.admin_ok(&["server", "federation", "list"]);
    assert!(
        listed.starts_with("Found 0 federation relationship(s)"),
        "{listed}"
    );
    let refused = server.admin_err(&["server", "federation", "show", "--trust-domain", OTHER]);
    assert!(
        refused.contains("no federation relationship with `other.test`"),
        "{refused}"
    );
    server.stop();
    other.stop();
}

/// A server federating with `other.test` (endpoint unreachable, bundle given), and the file
/// holding that bundle.
fn server_federating_with_other(dir: &Path) -> (Server, PathBuf) {
    let other = start_other(&dir.join("other"));
    let bundle_file = dir.join("other.json");
    write_other_bundle_json(&other, &bundle_file);
    other.stop();
    let server = Server::start(&dir.join("server"), &[]);
    server.admin_ok(&create_args(UNREACHABLE_URL, path_str(&bundle_file), &[]));
    (server, bundle_file)
}

fn entry_args<'a>(spiffe_id: &'a str, federates_with: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "server",
        "entry",
        "create",
        "--spiffe-id",
        spiffe_id,
        "--parent-id",
        PARENT,
        "--selector",
        "unix:uid:1000",
    ];
    for td in federates_with {
        args.extend(["--federates-with", td]);
    }
    args
}

#[test]
fn entries_federate_only_with_trust_domains_the_server_knows() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server_federating_with_other(dir.path());

    let refused = server.admin_err(&entry_args("spiffe://test.example/web", &["nowhere.test"]));
    assert!(
        refused.contains("`nowhere.test`") && refused.contains("no federation relationship"),
        "{refused}"
    );
    let refused = server.admin_err(&entry_args("spiffe://test.example/web", &[TRUST_DOMAIN]));
    assert!(refused.contains("own trust domain"), "{refused}");
    let none = server.admin_ok(&["server", "entry", "show"]);
    assert!(
        none.starts_with("Found 0 entries"),
        "nothing stored: {none}"
    );

    let created = server.admin_ok(&entry_args("spiffe://test.example/web", &[OTHER]));
    assert!(
        created.contains("FederatesWith    : other.test\n"),
        "{created}"
    );
    let id = created
        .lines()
        .find_map(|l| l.strip_prefix("Entry ID         : "))
        .unwrap()
        .to_owned();
    let shown = server.admin_ok(&["server", "entry", "show", "--entry-id", &id]);
    assert!(shown.contains("FederatesWith    : other.test\n"), "{shown}");

    // An update without `--federates-with` keeps the list.
    let updated = server.admin_ok(&[
        "server",
        "entry",
        "update",
        "--entry-id",
        &id,
        "--hint",
        "web",
    ]);
    assert!(
        updated.contains("FederatesWith    : other.test\n"),
        "{updated}"
    );
    assert!(updated.contains("Hint             : web"), "{updated}");

    // With it, the given list replaces the current one.
    server.admin_ok(&[
        "server",
        "bundle",
        "set",
        "--trust-domain",
        "third.test",
        "--path",
        path_str(&dir.path().join("other.json")),
    ]);
    let updated = server.admin_ok(&[
        "server",
        "entry",
        "update",
        "--entry-id",
        &id,
        "--federates-with",
        "third.test",
    ]);
    assert!(
        updated.contains("FederatesWith    : third.test\n"),
        "{updated}"
    );
    assert!(
        !updated.contains("FederatesWith    : other.test"),
        "{updated}"
    );
    server.stop();
}

#[test]
fn a_bundle_that_entries_federate_with_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server_federating_with_other(dir.path());
    let created = server.admin_ok(&entry_args("spiffe://test.example/web", &[OTHER]));
    let id = created
        .lines()
        .find_map(|l| l.strip_prefix("Entry ID         : "))
        .unwrap()
        .to_owned();

    let refused = server.admin_err(&["server", "bundle", "delete", "--trust-domain", OTHER]);
    assert!(refused.contains("federate with `other.test`"), "{refused}");
    let kept = server.admin_ok(&["server", "bundle", "show", "--trust-domain", OTHER]);
    assert!(kept.starts_with("-----BEGIN CERTIFICATE-----"), "{kept}");

    server.admin_ok(&["server", "entry", "delete", "--entry-id", &id]);
    let deleted = server.admin_ok(&["server", "bundle", "delete", "--trust-domain", OTHER]);
    assert_eq!(deleted.trim_end(), "Deleted bundle of other.test");
    let gone = server.admin_err(&["server", "bundle", "show", "--trust-domain", OTHER]);
    assert!(gone.contains("no bundle of `other.test`"), "{gone}");
    let bundles = server.admin_ok(&["server", "bundle", "list"]);
    assert!(bundles.starts_with("Found 0 bundle(s)"), "{bundles}");
    server.stop();
}

#[test]
fn federating_with_the_own_trust_domain_or_naming_an_https_web_endpoints_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    // `federation create` of `td` with `profile` and `extra`, refused; its one error line.
    let refused = |td: &str, profile: &str, extra: &[&str]| {
        let mut args = vec![
            "server",
            "federation",
            "create",
            "--trust-domain",
            td,
            "--bundle-endpoint-url",
            UNREACHABLE_URL,
            "--profile",
            profile,
        ];
        args.extend(extra);
        server.admin_err(&args)
    };

    let refused_own = refused(TRUST_DOMAIN, "https_web", &[]);
    assert!(refused_own.contains("own trust domain"), "{refused_own}");

    let refused_id = refused(
        OTHER,
        "https_web",
        &["--endpoint-spiffe-id", OTHER_SERVER_ID],
    );
    assert!(
        refused_id.contains("`endpoint_spiffe_id` is for `https_spiffe` only"),
        "{refused_id}"
    );

    let refused_no_id = refused(OTHER, "https_spiffe", &[]);
    assert!(
        refused_no_id.contains("needs `endpoint_spiffe_id`"),
        "{refused_no_id}"
    );

    let listed = server.admin_ok(&["server", "federation", "list"]);
    assert!(
        listed.starts_with("Found 0 federation relationship(s)"),
        "nothing stored: {listed}"
    );
    server.stop();
}

#[test]
fn a_trust_domain_name_that_would_change_the_admin_path_is_refused_before_any_request() {
    // No server: the name is refused before the socket is opened.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("server.sock");
    for name in ["../entries", "other.test?format=pem", "a%2Fb"] {
        let out = Command::new(WIMSE)
            .args(["server", "federation", "show", "--trust-domain", name])
            .arg("--admin-socket")
            .arg(&socket)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("is not a trust domain name"), "{stderr}");
    }
}

#[test]
fn a_pem_bundle_set_for_a_trust_domain_is_shown_back_as_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let other = start_other(&dir.path().join("other"));
    let pem_file = dir.path().join("other.pem");
    let pem = write_other_bundle_pem(&other, &pem_file);
    other.stop();
    let server = Server::start(&dir.path().join("server"), &[]);
    let own_pem = server.admin_ok(&["server", "bundle", "show"]);

    let set = server.admin_ok(&[
        "server",
        "bundle",
        "set",
        "--trust-domain",
        "third.test",
        "--path",
        path_str(&pem_file),
        "--format",
        "pem",
    ]);
    assert_eq!(
        set.trim_end(),
        "Bundle of third.test set: sequence 0, 1 x509 / 0 jwt / 0 wit authorities"
    );

    let shown = server.admin_ok(&[
        "server",
        "bundle",
        "show",
        "--trust-domain",
        "third.test",
        "--format",
        "pem",
    ]);
    assert!(shown.starts_with("-----BEGIN CERTIFICATE-----"), "{shown}");
    assert_eq!(shown.trim_end(), pem.trim_end());

    let json = server.admin_ok(&[
        "server",
        "bundle",
        "show",
        "--trust-domain",
        "third.test",
        "--format",
        "spiffe",
    ]);
    let stored = TrustBundle::from_spiffe_json(
        TrustDomain::new("third.test").unwrap(),
        json.trim().as_bytes(),
    )
    .unwrap();
    assert_eq!(stored.x509_authorities.len(), 1);

    // Without `--trust-domain`, `bundle show` is still the server's own bundle.
    assert_eq!(server.admin_ok(&["server", "bundle", "show"]), own_pem);
    assert_ne!(own_pem, pem);

    let refused = server.admin_err(&[
        "server",
        "bundle",
        "set",
        "--trust-domain",
        "third.test",
        "--path",
        path_str(&pem_file),
    ]);
    assert!(
        refused.contains("bundle of `third.test` is invalid"),
        "{refused}"
    );
    let refused = server.admin_err(&[
        "server",
        "bundle",
        "set",
        "--trust-domain",
        "third.test",
        "--path",
        path_str(&dir.path().join("missing.pem")),
    ]);
    assert!(refused.contains("`--path`: cannot read"), "{refused}");
    server.stop();
}
