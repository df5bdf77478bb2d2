//! Where passwords come from: `--password-file`, `--password-command`, `CAIRN_PASSWORD`, or a
//! prompt on the terminal (never echoed), in that order.

use std::io::{IsTerminal, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

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
    /// Give up on a password command (and kill it) after this many seconds; 0 waits for ever.
    /// A command that hangs (a secret store that is down, a prompt nobody answers) would
    /// otherwise hang a nightly job without a word.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CAIRN_PASSWORD_COMMAND_TIMEOUT",
        value_name = "SECS",
        default_value_t = DEFAULT_COMMAND_TIMEOUT
    )]
    pub password_command_timeout: u64,
}

/// Seconds a password command may take by default: long enough to answer a prompt.
pub const DEFAULT_COMMAND_TIMEOUT: u64 = 300;

fn first_line(mut s: String) -> String {
    if let Some(i) = s.find('\n') {
        s.truncate(i);
    }
    if s.ends_with('\r') {
        s.pop();
    }
    s
}

/// Run `cmd` through `sh -c` and take the first line of its output; after `timeout_secs`
/// (0: never) the command and everything it started are killed and it is an error.
fn from_command(cmd: &str, timeout_secs: u64) -> Result<String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group, so that a timeout kills what the shell started too.
        .process_group(0)
        .spawn()
        .with_context(|| format!("running password command {cmd:?}"))?;
    let mut stdout = child.stdout.take().context("password command: no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = tx.send(stdout.read_to_end(&mut out).map(|_| out));
    });
    let deadline = (timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(timeout_secs));
    let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let kill = |child: &mut std::process::Child| {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
    };
    let timed_out = || {
        anyhow::anyhow!(
            "password command {cmd:?} did not finish within {timeout_secs} s and was killed \
             (--password-command-timeout)"
        )
    };
    // Its output first (the command may print and then linger), then its exit status.
    let out = match left() {
        None => rx.recv().ok(),
        Some(t) => rx.recv_timeout(t).ok(),
    };
    let Some(out) = out else {
        kill(&mut child);
        return Err(timed_out());
    };
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .context("waiting for the password command")?
        {
            break status;
        }
        if left().is_some_and(|t| t.is_zero()) {
            kill(&mut child);
            return Err(timed_out());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = out.context("reading the password command's output")?;
    if !status.success() {
        bail!("password command {cmd:?} failed with {status}");
    }
    Ok(first_line(
        String::from_utf8(out).context("password command printed non-UTF-8")?,
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
            return from_command(c, self.password_command_timeout);
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
pub fn source_password(
    file: Option<&PathBuf>,
    command: Option<&str>,
    timeout_secs: u64,
) -> Result<String> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("reading password file {}", f.display()))?;
        return Ok(first_line(s));
    }
    if let Some(c) = command {
        return from_command(c, timeout_secs);
    }
    if let Ok(p) = std::env::var("CAIRN_FROM_PASSWORD") {
        return Ok(p);
    }
    ask("enter password for the source repository: ", false)
}
