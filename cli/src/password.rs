//! Where passwords come from: `--password-file`, `--password-command`, `CAIRN_PASSWORD`, or a
//! prompt on the terminal (never echoed), in that order.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Password options shared by all commands.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PasswordArgs {
    /// Read the repository password from the first line of this file.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CAIRN_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// Run this shell command and use the first line of its output as the password.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CAIRN_PASSWORD_COMMAND",
        value_name = "CMD"
    )]
    pub password_command: Option<String>,
}

fn first_line(mut s: String) -> String {
    if let Some(i) = s.find('\n') {
        s.truncate(i);
    }
    if s.ends_with('\r') {
        s.pop();
    }
    s
}

fn from_command(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running password command {cmd:?}"))?;
    if !out.status.success() {
        bail!("password command {cmd:?} failed with {}", out.status);
    }
    Ok(first_line(
        String::from_utf8(out.stdout).context("password command printed non-UTF-8")?,
    ))
}

impl PasswordArgs {
    /// The repository password.
    pub fn get(&self, prompt: &str, confirm: bool) -> Result<String> {
        if let Some(f) = &self.password_file {
            let s = std::fs::read_to_string(f)
                .with_context(|| format!("reading password file {}", f.display()))?;
            return Ok(first_line(s));
        }
        if let Some(c) = &self.password_command {
            return from_command(c);
        }
        if let Ok(p) = std::env::var("CAIRN_PASSWORD") {
            return Ok(p);
        }
        ask(prompt, confirm)
    }
}

/// Ask on the terminal; refuse when there is none (cron, CI) instead of hanging.
pub fn ask(prompt: &str, confirm: bool) -> Result<String> {
    if !std::io::stdin().is_terminal() && std::fs::File::open("/dev/tty").is_err() {
        bail!("no password given: use --password-file, --password-command or CAIRN_PASSWORD (no terminal to ask on)");
    }
    let p = rpassword::prompt_password(prompt).context("reading password")?;
    if confirm {
        let again =
            rpassword::prompt_password("enter the password again: ").context("reading password")?;
        if again != p {
            bail!("passwords do not match");
        }
    }
    if p.is_empty() {
        bail!("empty password refused");
    }
    Ok(p)
}

/// A new password (key add / passwd): `--new-password-file`, `CAIRN_NEW_PASSWORD`, or ask twice.
pub fn new_password(file: Option<&PathBuf>) -> Result<String> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(first_line(s));
    }
    if let Ok(p) = std::env::var("CAIRN_NEW_PASSWORD") {
        return Ok(p);
    }
    ask("enter new password: ", true)
}

/// The password of `copy`'s source repository: `--from-password-file`,
/// `--from-password-command`, `CAIRN_FROM_PASSWORD`, or a prompt.
pub fn source_password(file: Option<&PathBuf>, command: Option<&str>) -> Result<String> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("reading password file {}", f.display()))?;
        return Ok(first_line(s));
    }
    if let Some(c) = command {
        return from_command(c);
    }
    if let Ok(p) = std::env::var("CAIRN_FROM_PASSWORD") {
        return Ok(p);
    }
    ask("enter password for the source repository: ", false)
}
