//! Sets `SHOUT_GIT_REVISION` for `--version` and `shout_build_info`, so that two rollouts of
//! the same version can be told apart: the environment variable of that name when set (Docker
//! builds have no `.git`), else `git rev-parse --short=12 HEAD`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SHOUT_GIT_REVISION");
    let from_env = std::env::var("SHOUT_GIT_REVISION")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let revision = from_env.or_else(|| {
        // Rebuild when HEAD moves: HEAD itself (a checkout) and the ref it points to (a commit).
        // `--git-path` resolves both in a worktree too, where `.git` is a file.
        if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
            println!("cargo:rerun-if-changed={head}");
        }
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(path) = git(&["rev-parse", "--git-path", &reference])
        {
            println!("cargo:rerun-if-changed={path}");
        }
        git(&["rev-parse", "--short=12", "HEAD"])
    });
    let revision: String = revision
        .unwrap_or_else(|| "unknown".to_string())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    let revision = if revision.is_empty() {
        "unknown".to_string()
    } else {
        revision
    };
    println!("cargo:rustc-env=SHOUT_GIT_REVISION={revision}");
}
