//! Sets `SHOUT_GIT_REVISION` for `--version` and `shout_build_info`, so that two rollouts of
//! the same version can be told apart: the environment variable of that name when set (Docker
//! builds have no `.git`), else `git rev-parse --short=12 HEAD`, else `unknown`. Only
//! `[A-Za-z0-9._-]`, at most 40 characters, reach the binary: it becomes a metric label.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    output.status.success().then_some(text)
}

/// The revision's allowed characters, or `None` when none is left.
fn sanitized(revision: String) -> Option<String> {
    let kept: String = (revision.chars())
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    (!kept.is_empty()).then_some(kept)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SHOUT_GIT_REVISION");
    // Rebuild when HEAD moves: a commit, a checkout or a reset each appends to HEAD's reflog, which
    // `--git-path` finds in a worktree too, where `.git` is a file. Where reflogs are off, the file is
    // missing and cargo reruns this script on every build: slower, still right.
    if let Some(reflog) = git(&["rev-parse", "--git-path", "logs/HEAD"]) {
        println!("cargo:rerun-if-changed={reflog}");
    }
    let revision = (std::env::var("SHOUT_GIT_REVISION").ok().and_then(sanitized))
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]).and_then(sanitized))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SHOUT_GIT_REVISION={revision}");
}
