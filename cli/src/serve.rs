//! `cairn serve` and `cairn serve-credential`: the repository server's command line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use cairn_serve::{Access, Credentials, ServeConfig, TlsFiles};

use crate::Cli;

/// `serve` options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The directory holding the served repositories: `rest:https://host:8000/NAME` is the
    /// repository in DIR/NAME (and `rest:https://host:8000/` DIR itself).
    #[arg(value_name = "DIR")]
    pub root: PathBuf,
    /// Address to listen on (`0.0.0.0:8000`, `[::]:8000`, `127.0.0.1:0` for any free port).
    #[arg(long, default_value = "0.0.0.0:8000", value_name = "ADDR")]
    pub listen: String,
    /// Credentials file: lines `name:hash[:full|append-only[:repo,repo]]` with Argon2 or
    /// bcrypt hashes (`cairn serve-credential` prints such lines; htpasswd -B files work).
    #[arg(long, env = "CAIRN_SERVE_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,
    /// Serve without authentication (only for a loopback address, e.g. behind a proxy that
    /// authenticates).
    #[arg(long, conflicts_with = "credentials")]
    pub no_auth: bool,
    /// Every credential is append-only, whatever the file says: clients add and read, but
    /// never delete or overwrite (forget and prune then run on this host). Needs
    /// credentials: a client releases only the locks its own credential wrote.
    #[arg(long, conflicts_with = "no_auth")]
    pub append_only: bool,
    /// TLS certificate chain (PEM); with --tls-key the server speaks HTTPS.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (passwords and data then cross
    /// the network unencrypted).
    #[arg(long)]
    pub insecure_http: bool,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_connections: usize,
    /// Largest pack accepted (a pack holds at most the repository's pack size plus one
    /// blob).
    #[arg(long, default_value = "2112M", value_name = "SIZE")]
    pub max_pack_size: String,
}

/// `serve-credential` options.
#[derive(Debug, clap::Args)]
pub struct ServeCredentialArgs {
    /// The credential's user name (what the client puts in its rest: URL).
    pub name: String,
    /// `append-only` (add and read, never delete: for nodes) or `full`.
    #[arg(long, default_value = "append-only", value_parser = ["append-only", "full"])]
    pub access: String,
    /// Repositories (paths under the server's DIR) this credential may use; all if none.
    #[arg(long, value_delimiter = ',', value_name = "NAME,…")]
    pub repositories: Vec<String>,
    /// Read the credential's password from this file (default: CAIRN_NEW_PASSWORD, or ask
    /// twice).
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

fn is_loopback(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    listen
        .to_socket_addrs()
        .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
        .unwrap_or(false)
}

/// `cairn serve DIR`.
pub fn serve(cli: &Cli, a: &ServeArgs) -> Result<u8> {
    let loopback = is_loopback(&a.listen);
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => None,
    };
    if tls.is_none() && !loopback && !a.insecure_http {
        bail!(
            "{} is not a loopback address: give --tls-cert and --tls-key (or --insecure-http to send passwords and data unencrypted)",
            a.listen
        );
    }
    let credentials = match (&a.credentials, a.no_auth) {
        (Some(f), _) => Some(Credentials::load(f, a.append_only)?),
        (None, true) => {
            if !loopback {
                bail!("--no-auth is only allowed on a loopback address");
            }
            None
        }
        (None, false) => {
            bail!("give --credentials FILE (lines from `cairn serve-credential`), or --no-auth on a loopback address")
        }
    };
    let max_pack_size = crate::maint::parse_size(&a.max_pack_size)?;
    if max_pack_size < 1 << 20 {
        bail!("--max-pack-size {}: at least 1M", a.max_pack_size);
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let summary = match &credentials {
        Some(c) => format!("{} credential(s)", c.len()),
        None => "no authentication".into(),
    };
    let open_access = if a.append_only {
        Access::AppendOnly
    } else {
        Access::Full
    };
    let json = cli.json;
    let root = a.root.clone();
    cairn_serve::serve(
        ServeConfig {
            root: a.root.clone(),
            listen: a.listen.clone(),
            tls,
            credentials,
            open_access,
            max_connections: a.max_connections,
            max_pack_size,
        },
        |addr| {
            let url = format!("{scheme}://{addr}/");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"message_type": "listening", "url": url, "root": root})
                );
            } else {
                println!(
                    "listening on {url} (repositories under {}, {summary})",
                    root.display()
                );
            }
            let _ = std::io::stdout().flush();
        },
    )?;
    Ok(0)
}

/// `cairn serve-credential NAME`: a credentials-file line on stdout.
pub fn credential(a: &ServeCredentialArgs) -> Result<u8> {
    let password = crate::password::new_password(a.new_password_file.as_ref())?;
    if password.is_empty() {
        bail!("empty password refused");
    }
    let access = match a.access.as_str() {
        "full" => Access::Full,
        _ => Access::AppendOnly,
    };
    let repos: Vec<String> = a
        .repositories
        .iter()
        .map(|r| r.trim_matches('/').to_owned())
        .collect();
    for r in &repos {
        if r.is_empty() {
            bail!("--repositories: an empty name (leave the option out for all repositories)");
        }
        cairn_serve::check_repo_path(r)
            .map_err(|why| anyhow::anyhow!("repository {r:?}: {why}"))?;
    }
    let line = cairn_serve::credential_line(&a.name, password.as_bytes(), access, &repos)
        .context("making the credential")?;
    println!("{line}");
    Ok(0)
}
