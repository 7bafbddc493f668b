//! The `wimse` binary as a user meets it: its output, its exit codes, its help.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::{Command, Output};

/// Run `wimse` with `args`, without any `SPIFFE_ENDPOINT_SOCKET` inherited from the test runner.
fn wimse(args: &[&str]) -> Output {
    wimse_with_env(args, None)
}

fn wimse_with_env(args: &[&str], endpoint_socket: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wimse"));
    command.args(args).env_remove("SPIFFE_ENDPOINT_SOCKET");
    if let Some(value) = endpoint_socket {
        command.env("SPIFFE_ENDPOINT_SOCKET", value);
    }
    command.output().expect("the wimse binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8")
}

#[test]
fn version_prints_binary_name_and_crate_version() {
    let output = wimse(&["--version"]);
    assert!(output.status.success());
    assert_eq!(
        stdout(&output),
        format!("wimse {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_every_top_level_command() {
    let output = wimse(&["--help"]);
    assert!(output.status.success());
    let help = stdout(&output);
    for command in ["server", "agent", "proxy", "gateway", "audit", "dev"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "`{command}` missing from:\n{help}"
        );
    }
}

#[test]
fn entry_create_help_lists_every_flag() {
    let output = wimse(&["server", "entry", "create", "--help"]);
    assert!(output.status.success());
    let help = stdout(&output);
    for flag in [
        "--spiffe-id",
        "--parent-id",
        "--selector",
        "--x509-ttl",
        "--jwt-ttl",
        "--dns",
        "--hint",
        "--admin-socket",
    ] {
        assert!(help.contains(flag), "`{flag}` missing from:\n{help}");
    }
}

#[test]
fn a_bad_gateway_configuration_fails_with_one_line_naming_the_setting() {
    let output = wimse(&["gateway", "run", "--config", "/nonexistent/gateway.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: gateway configuration: cannot read `/nonexistent/gateway.toml`: \
         No such file or directory (os error 2)\n"
    );
    assert!(output.stdout.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:8080\"\nserver_address = \"127.0.0.1:8443\"\n\
         [[issuers]]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"/nonexistent/jwks.json\"\n",
    )
    .unwrap();
    let output = wimse(&["gateway", "run", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with("error: gateway configuration: issuers[0]: /nonexistent/jwks.json: "),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
}

#[test]
fn unreachable_agent_fails_with_one_line_naming_the_socket() {
    let output = wimse(&[
        "agent",
        "api",
        "fetch",
        "jwt",
        "--audience",
        "a",
        "--socket",
        "/nonexistent/agent.sock",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.contains("/nonexistent/agent.sock"), "{message}");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let output = wimse(&["server", "run", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--no-such-flag"));
}

#[test]
fn proxy_flags_that_do_not_fit_together_are_refused_before_anything_starts() {
    // A caller certificate policy without TLS: a usage error.
    let output = wimse(&[
        "proxy",
        "inbound",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:1",
        "--tls-client-cert",
        "optional",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--tls"), "{}", stderr(&output));
    // A tunnel idle limit of nothing: a usage error too.
    let output = wimse(&[
        "proxy",
        "outbound",
        "--listen",
        "127.0.0.1:0",
        "--tunnel-idle-timeout",
        "0",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--tunnel-idle-timeout"),
        "{}",
        stderr(&output)
    );
    // `--tls` with `--proof mtls` (always over TLS), and server identities or a server
    // name check without TLS: refused by name, before the agent is asked for anything.
    for (args, named) in [
        (
            &["--proof", "mtls", "--tls"][..],
            "`--tls` is for `--proof wit-wpt`",
        ),
        (
            &["--server-id", "spiffe://td.test/w3"][..],
            "need `--proof mtls` or `--tls`",
        ),
        (
            &["--destination", "w3:8443=spiffe://td.test/w3"][..],
            "needs `--proof mtls` or `--tls`",
        ),
        (
            &["--server-name-check", "off"][..],
            "`--server-name-check` needs `--proof mtls` or `--tls`",
        ),
        (
            &["--upstream", "https://orders:8443"][..],
            "`--upstream https://orders:8443`: must be http://",
        ),
        (
            &["--upstream", "http://orders:8443/v1"][..],
            "must name only a host and port",
        ),
        (
            &["--upstream", "orders:8443"][..],
            "`--upstream orders:8443`: must be http://",
        ),
        (
            &["--upstream", "http://orders", "--destination", "pay:80"][..],
            "`--upstream` goes to `orders:80`, which no `--destination` names",
        ),
    ] {
        let mut all = vec![
            "proxy",
            "outbound",
            "--listen",
            "127.0.0.1:0",
            "--socket",
            "/nonexistent/agent.sock",
        ];
        all.extend_from_slice(args);
        let output = wimse(&all);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = stderr(&output);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(!stderr.contains("nonexistent"), "{args:?}: {stderr}");
    }
}

#[test]
fn fetch_jwt_without_audience_is_a_usage_error_naming_the_flag() {
    let output = wimse(&["agent", "api", "fetch", "jwt"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--audience"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn broken_endpoint_variable_fails_with_one_line_naming_it() {
    let output = wimse_with_env(&["agent", "healthcheck"], Some("unix://host/agent.sock"));
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.starts_with("error: "), "{message}");
    assert!(message.contains("SPIFFE_ENDPOINT_SOCKET"), "{message}");
}

#[test]
fn tcp_endpoint_variable_is_reported_as_unsupported() {
    let output = wimse_with_env(
        &["agent", "api", "fetch", "x509"],
        Some("tcp://127.0.0.1:8081"),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("not supported"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn socket_flag_overrides_a_broken_endpoint_variable() {
    let output = wimse_with_env(
        &[
            "agent",
            "healthcheck",
            "--socket",
            "/nonexistent/agent.sock",
        ],
        Some("tcp://127.0.0.1:8081"),
    );
    // The flag wins: the failure is about that socket, not the variable.
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/agent.sock"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn join_token_and_x509pop_together_are_a_usage_error() {
    let output = wimse(&[
        "agent",
        "run",
        "--server-address",
        "127.0.0.1:8443",
        "--trust-bundle",
        "bundle.pem",
        "--join-token",
        "t",
        "--x509pop-cert",
        "c.pem",
        "--x509pop-key",
        "k.pem",
    ]);
    assert_eq!(output.status.code(), Some(2));
}
