//! Sets `SHOUT_GIT_REVISION` for `--version` and `shout_build_info`, so that two rollouts of
//! the same version can be told apart: the environment variable of that name when set (Docker
//! builds have no `.git`), else `git rev-parse --short=12 HEAD`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SHOUT_GIT_REVISION");
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the ref it points to (a commit).
    // `--git-path` resolves both in a worktree too, where `.git` is a file.
    let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in std::iter::once("HEAD").chain(head_ref.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let revision = std::env::var("SHOUT_GIT_REVISION")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_default();
    let revision: String = (revision.trim().chars())
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    let revision = if revision.is_empty() {
        "unknown".into()
    } else {
        revision
    };
    println!("cargo:rustc-env=SHOUT_GIT_REVISION={revision}");
}
