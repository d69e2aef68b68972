//! Sets `SHOUT_GIT_REVISION` for `shout_build_info{revision}`: the short commit when built from
//! a git checkout, unset otherwise (the metric then says "unknown"). An explicit
//! `SHOUT_GIT_REVISION` in the build environment (a container build without `.git`) wins.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SHOUT_GIT_REVISION");
    if std::env::var_os("SHOUT_GIT_REVISION").is_some() {
        return;
    }
    // Rebuild when HEAD moves: the files that hold it, wherever this checkout keeps them (a
    // worktree's `.git` is a file). A path that does not exist would rerun this every build.
    if let Some(branch) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
        for name in ["HEAD", branch.as_str()] {
            if let Some(path) = git(&["rev-parse", "--git-path", name])
                && std::path::Path::new(&path).exists()
            {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let revision = git(&["rev-parse", "--short=12", "HEAD"])
        .filter(|revision| revision.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(revision) = revision {
        println!("cargo:rustc-env=SHOUT_GIT_REVISION={revision}");
    }
}

/// The trimmed output of a successful `git` command.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|out| out.trim().to_string())
        .filter(|out| !out.is_empty())
}
