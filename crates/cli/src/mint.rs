//! `wimse server x509|jwt|wit mint`: credentials for an identity no agent serves, minted
//! by the server over its admin socket (as `spire-server x509|jwt mint`), for
//! bootstrapping and for tests. The private keys are generated here and never leave this
//! process but into the files written or the terminal.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::error::CommandError;
use crate::server::{AdminSocketArg, client};
use wimse_core::WorkloadId;
use wimse_core::jose::{Algorithm, SigningKey, b64};
use wimse_core::x509::{self, Certificate};
use wimse_server::api::MintRequest;

/// Mode of files holding a private key.
const SECRET: u32 = 0o600;
/// Mode of the other files.
const PUBLIC: u32 = 0o644;

/// `wimse server x509 ...`
#[derive(Debug, Subcommand)]
pub enum X509Command {
    /// Mint an X509-SVID and its key; `--write` creates svid.0.pem, svid.0.key and
    /// bundle.0.pem, as `wimse agent api fetch x509 --write` does
    Mint(X509MintArgs),
}

/// `wimse server jwt ...`
#[derive(Debug, Subcommand)]
pub enum JwtCommand {
    /// Mint a JWT-SVID and print it
    Mint(JwtMintArgs),
}

/// `wimse server wit ...`
#[derive(Debug, Subcommand)]
pub enum WitCommand {
    /// Mint a Workload Identity Token and its key; `--write` creates wit.0.jwt and
    /// wit.0.key
    Mint(WitMintArgs),
}

/// What every mint names.
#[derive(Debug, Args)]
pub struct MintArgs {
    /// The identity: a SPIFFE ID of the server's trust domain
    #[arg(long, value_name = "ID")]
    pub spiffe_id: String,
    /// Lifetime in seconds (default: 3600 for X509-SVIDs, 300 for tokens)
    #[arg(long, value_name = "S")]
    pub ttl: Option<u32>,
    #[command(flatten)]
    pub admin: AdminSocketArg,
}

/// `wimse server x509 mint`
#[derive(Debug, Args)]
pub struct X509MintArgs {
    #[command(flatten)]
    pub mint: MintArgs,
    /// A DNS name for the certificate; repeat for several
    #[arg(long, value_name = "NAME")]
    pub dns: Vec<String>,
    /// Write the files to this directory instead of printing them
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
}

/// `wimse server jwt mint`
#[derive(Debug, Args)]
pub struct JwtMintArgs {
    #[command(flatten)]
    pub mint: MintArgs,
    /// Audience of the JWT-SVID; repeat for several
    #[arg(long, value_name = "AUD", required = true)]
    pub audience: Vec<String>,
}

/// `wimse server wit mint`
#[derive(Debug, Args)]
pub struct WitMintArgs {
    #[command(flatten)]
    pub mint: MintArgs,
    /// Write the files to this directory instead of printing them
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
}

fn failed(e: impl std::fmt::Display) -> CommandError {
    CommandError::Mint(e.to_string())
}

/// A fresh ES256 key (the SPIFFE profiles' default) and its PKCS#8 PEM.
fn new_key() -> Result<(SigningKey, zeroize::Zeroizing<String>), CommandError> {
    let key = SigningKey::generate(Algorithm::Es256).map_err(failed)?;
    let pem = key.to_pkcs8_pem().map_err(failed)?;
    Ok((key, pem))
}

fn request(args: &MintArgs) -> MintRequest {
    MintRequest {
        spiffe_id: args.spiffe_id.clone(),
        ttl: args.ttl,
        ..MintRequest::default()
    }
}

/// Writes `files` (name, contents, mode) into `dir`, or prints them under their labels.
fn deliver(dir: Option<&Path>, files: &[(&str, &str, &str, u32)]) -> Result<(), CommandError> {
    match dir {
        Some(dir) => {
            for (name, _, contents, mode) in files {
                let path = dir.join(name);
                wimse_agent::files::write_atomic(&path, contents.as_bytes(), *mode)
                    .map_err(CommandError::Output)?;
                println!("Wrote {}", path.display());
            }
        }
        None => {
            for (_, label, contents, _) in files {
                println!("{label}:");
                println!("{}", contents.trim_end());
                println!();
            }
        }
    }
    Ok(())
}

impl X509Command {
    /// Mint an X509-SVID.
    pub fn run(self) -> Result<(), CommandError> {
        let Self::Mint(args) = self;
        crate::runtime::block_on(async move {
            let id =
                WorkloadId::parse(&args.mint.spiffe_id).map_err(|e| CommandError::Argument {
                    flag: "spiffe-id",
                    reason: e.to_string(),
                })?;
            let (key, key_pem) = new_key()?;
            let csr = x509::build_csr(&key, &id).map_err(failed)?;
            let client = client(&args.mint.admin);
            let minted = client
                .mint(
                    "x509",
                    &MintRequest {
                        csr: Some(b64::encode(&csr)),
                        dns_names: args.dns.clone(),
                        ..request(&args.mint)
                    },
                )
                .await?;
            let chain = minted
                .svid_chain
                .iter()
                .map(|der| {
                    b64::decode(der)
                        .map_err(failed)
                        .and_then(|der| Certificate::from_der(der).map_err(failed))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let bundle = client.bundle("pem").await?;
            deliver(
                args.write.as_deref(),
                &[
                    (
                        "svid.0.pem",
                        "X509-SVID",
                        &x509::certs_to_pem(&chain),
                        PUBLIC,
                    ),
                    ("svid.0.key", "Private key", &key_pem, SECRET),
                    ("bundle.0.pem", "Root CAs", &bundle, PUBLIC),
                ],
            )
        })
    }
}

impl JwtCommand {
    /// Mint a JWT-SVID.
    pub fn run(self) -> Result<(), CommandError> {
        let Self::Mint(args) = self;
        crate::runtime::block_on(async move {
            let minted = client(&args.mint.admin)
                .mint(
                    "jwt",
                    &MintRequest {
                        audience: args.audience.clone(),
                        ..request(&args.mint)
                    },
                )
                .await?;
            println!("{}", minted.token.unwrap_or_default());
            Ok(())
        })
    }
}

impl WitCommand {
    /// Mint a WIT and its key.
    pub fn run(self) -> Result<(), CommandError> {
        let Self::Mint(args) = self;
        crate::runtime::block_on(async move {
            let (key, key_pem) = new_key()?;
            let mut jwk = key.public_jwk().clone();
            jwk.alg = Some(Algorithm::Es256.name().to_owned());
            let minted = client(&args.mint.admin)
                .mint(
                    "wit",
                    &MintRequest {
                        jwk: Some(jwk),
                        ..request(&args.mint)
                    },
                )
                .await?;
            let token = minted.token.unwrap_or_default();
            deliver(
                args.write.as_deref(),
                &[
                    ("wit.0.jwt", "WIT", &token, PUBLIC),
                    ("wit.0.key", "Private key", &key_pem, SECRET),
                ],
            )
        })
    }
}
